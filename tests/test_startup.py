"""`packwise --help` must stay instant: the CLI module imports no heavy library at import time."""

from __future__ import annotations

import json
import subprocess
import sys

import packwise

HEAVY = ("torch", "numba", "pyarrow", "datasets", "faiss", "tokenizers", "transformers", "matplotlib")


def _imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_cli_import_is_light():
    loaded = _imported_after("import packwise.cli.app")
    assert not loaded.intersection(HEAVY), sorted(loaded.intersection(HEAVY))


def test_packing_does_not_import_torch():
    assert "torch" not in _imported_after("import packwise.packing")


def test_help_and_version_through_the_console_script():
    out = subprocess.run([sys.executable, "-m", "packwise.cli.app", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"packwise {packwise.__version__}"
    out = subprocess.run([sys.executable, "-m", "packwise.cli.app", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("demo-data", "report"):
        assert command in out.stdout
