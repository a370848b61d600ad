"""Peak memory of packing at a huge row capacity: O(items), not O(capacity).

Each case runs in a fresh process on 1M lengths bootstrapped from the real c4 distribution
(benchmarks/_lengths.py, drawn once and handed over as a .npy file) and reports the process's
peak RSS and its rise over the floor of the same imports (``packwise.packing``; the sampler
also imports torch).  Lengths over a capacity are truncated (``oversize="truncate"``).  Before the free-space index followed the items, ``max_tokens=1e9``
needed ~18 GB (a MemoryError); the target is < 200 MiB.

Run: ``python benchmarks/bench_packing_memory.py [--items 1M] [--max-tokens 1000000000]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = ("pack bfd", "pack fill", "pack ffd", "pack first_fit", "pack next_fit", "pack window_bfd",
         "WindowPacker (the CLI's streaming packer)", "PackedBatchSampler bfd (one epoch)")  # fmt: skip
_CHILD = r"""
import json, resource
import numpy as np
from packwise.packing import WindowPacker, pack
case, cap, floor = {case!r}, {cap}, {floor!r}
if case.startswith("PackedBatchSampler"):
    from packwise.samplers import PackedBatchSampler
x = np.load({lengths!r})
x = np.minimum(x, cap)
bins = None
if floor == "numba":
    pack(x[:3], cap)  # numba's start-up (LLVM, the runtime, one cached kernel): paid once per process
elif floor:
    pass
elif case.startswith("pack "):
    bins = pack(x, cap, case.split()[1]).num_bins
elif case.startswith("WindowPacker"):
    p, bins = WindowPacker(cap, window=10_000), 0
    for i in range(0, x.shape[0], 10_000):
        bins += p.add(x[i : i + 10_000]).num_bins
    bins += p.flush().num_bins
elif case.startswith("PackedBatchSampler"):
    bins = sum(1 for _ in PackedBatchSampler(x, max_tokens=cap, algorithm="bfd", seed=0))
print(json.dumps({{"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "bins": bins}}))
"""


def measure(case: str, lengths: Path, cap: int, floor: bool | str = False) -> dict:
    code = _CHILD.format(lengths=str(lengths), case=case, cap=cap, floor=floor)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        return {"rss_mib": float("nan"), "bins": f"failed: {done.stderr.strip().splitlines()[-1]}"}
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--max-tokens", type=int, nargs="+", default=[4096, 1_000_000_000])
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    import numpy as np
    from _lengths import bootstrap

    print(f"peak RSS, {args.items:,} bootstrapped c4 lengths, one fresh process per case\n")
    print("| case | max_tokens | bins | peak RSS (MiB) | over its imports (MiB) |\n|---|---:|---:|---:|---:|")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        lengths = Path(tmp) / "lengths.npy"
        np.save(lengths, bootstrap("c4", args.items, seed=0))
        floors = {sampler: measure(CASES[-1] if sampler else CASES[0], lengths, 1, floor=True)["rss_mib"] for sampler in (False, True)}
        print(f"| imports + lengths only | | | {floors[False]:.0f} | 0 |")
        print(f"| imports (with torch) + lengths only | | | {floors[True]:.0f} | 0 |")
        warm = measure(CASES[0], lengths, 10, floor="numba")["rss_mib"]
        print(f"| imports + lengths + numba start-up (a 3-item pack) | | | {warm:.0f} | {warm - floors[False]:.0f} |")
        for cap in args.max_tokens:
            for case in CASES:
                r = measure(case, lengths, cap)
                if cap >= 10**9 and not case.startswith("PackedBatchSampler"):
                    worst = max(worst, r["rss_mib"])
                bins = "" if r["bins"] is None else f"{r['bins']:,}" if isinstance(r["bins"], int) else r["bins"]
                rise = r["rss_mib"] - floors[case.startswith("PackedBatchSampler")]
                print(f"| {case} | {cap:,} | {bins} | {r['rss_mib']:.0f} | {rise:.0f} |")
    if max(args.max_tokens) >= 10**9:
        print(f"\ntarget: peak RSS of pack()/WindowPacker at max_tokens >= 1e9 < 200 MiB: {'OK' if worst < 200 else 'MISSED'} (worst {worst:.0f} MiB)")


if __name__ == "__main__":
    main()
