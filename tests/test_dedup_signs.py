"""``semantic_dedup`` on similarities that are exactly zero, tied or negative: the kernel's search
on float order keys keeps the float rules (earliest of equal similarities wins, a negative best is
still the best), for the nearest row and for the nearest kept row at every threshold."""

from __future__ import annotations

import numpy as np

from packwise.selection import semantic_dedup


def _vectors() -> np.ndarray:
    e = np.eye(4, dtype=np.float32)
    return np.stack([e[0], e[1], e[2], -e[0], e[3], (e[0] + e[1]) / np.sqrt(2), -(e[0] + e[1] + e[2] + e[3]) / 2]).astype(np.float32)


def test_zero_tied_and_negative_similarities_follow_the_float_rules():
    x = _vectors()
    r = semantic_dedup(x, labels=np.zeros(len(x), np.int64), eps=(0.05, 1.9), order="index", block=3)
    # nearest earlier row: ties at exactly 0 (rows 3, 4) and at 1/sqrt(2) (row 5) go to the earliest
    assert r.nearest.tolist() == [-1, 0, 0, 1, 0, 0, 3]
    assert r.similarity[1:].tolist() == [0.0, 0.0, 0.0, 0.0, np.float32(1 / np.sqrt(2)), 0.5]
    # eps 0.05 keeps everything; eps 1.9 (threshold -0.9) drops a row whose best kept similarity is
    # above -0.9: row 3 (similarity -1 to row 0, the only kept one) survives it
    assert r.kept[:, 0].all()
    assert r.kept[:, 1].tolist() == [True, False, False, True, False, False, False]
    assert r.duplicate_of[:, 1].tolist() == [-1, 0, 0, 0, 0, 0, 3]
    assert r.duplicate_similarity[1:, 1].tolist() == [0.0, 0.0, -1.0, 0.0, np.float32(1 / np.sqrt(2)), 0.5]
    assert r.to_arrow(1.9).column("reason").to_pylist() == ["kept", "near", "near", "kept", "near", "near", "near"]
