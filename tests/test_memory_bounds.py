"""Memory follows the data, not the flags: peak RSS of a child process under an address-space cap
(so a regression fails the test instead of taking the machine down)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from conftest import run_capped

RSS_BOUND_KB = 600 * 1024


def test_a_huge_window_on_300_rows_takes_memory_for_300_rows(tmp_path):
    lengths = np.random.default_rng(0).integers(5, 500, 300)
    pq.write_table(pa.table({"input_ids": [list(range(1, int(n) + 1)) for n in lengths]}), tmp_path / "in.parquet")
    args = [str(tmp_path / "in.parquet"), str(tmp_path / "out"), "--tokens-column", "input_ids", "--max-tokens", "1024",
            "--window", "100000000"]  # fmt: skip
    code = f"import sys; sys.argv = ['packwise', 'pack', *{args!r}]\nfrom packwise.cli.app import app\ntry:\n    app()\nexcept SystemExit as e:\n    assert not e.code, e.code"
    _, rss = run_capped(code)
    assert rss < RSS_BOUND_KB
    shards = sorted((tmp_path / "out").glob("*.parquet"))
    rows = pa.concat_tables([pq.read_table(p) for p in shards]).column("input_ids").to_pylist()
    assert sum(len(r) for r in rows) == int(lengths.sum()) and max(len(r) for r in rows) <= 1024


def test_a_split_into_a_billion_pieces_is_refused_before_allocating():
    code = (
        "import numpy as np\nfrom packwise.packing import pack\n"
        "try:\n    pack(np.array([10**12]), 1024, oversize='split')\nexcept ValueError as e:\n    print('error', e)"
    )
    out, rss = run_capped(code)
    assert rss < RSS_BOUND_KB
    assert (
        "error lengths[0] = 1000000000000 tokens would split into 976562500 pieces of capacity=1024 "
        "(976562500 pieces in all, over the limit of 67108864); check the length column, "
        "or pass oversize='truncate' or 'drop' for such items"
    ) in out.stdout
