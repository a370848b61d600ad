"""``packwise verify OUT``: check every shard of a pack output against its recorded sha256."""

from __future__ import annotations

from pathlib import Path


def run_verify(output: Path) -> bool:
    """Print one line per bad or missing shard (or that all are good); return whether all are good."""
    from ..pipeline.writer import read_manifest, verify_shards

    bad = verify_shards(output)
    for line in bad:
        print(f"bad shard: {line}")
    if bad:
        print(f"{len(bad)} bad shard(s): delete them and rerun packwise pack with the same arguments (it rewrites them)")
    else:
        print(f"{output}: all {len(read_manifest(output)['shards'])} shards match manifest.json")
    return not bad
