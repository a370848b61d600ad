"""A ``--template`` for tests that holds a run until the file named by $PACKWISE_TEST_GATE exists,
so a test can act while the run is in progress (and holds its output lock)."""

import os
import time
from pathlib import Path


def gated(row: dict) -> str:
    gate = Path(os.environ["PACKWISE_TEST_GATE"])
    (gate.parent / "started").touch()
    while not gate.exists():
        time.sleep(0.02)
    return row["text"]
