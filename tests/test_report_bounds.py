"""``pack`` and ``report`` agree on the L1 bound (issue 23, item 6): with ``--oversize split`` the
report bounded the cut lengths (387 rows on the quickstart corpus) while pack bounded the split
pieces it packs (389)."""

from __future__ import annotations

import numpy as np
import pytest

from packwise.packing import pack, waste_report


@pytest.mark.parametrize("oversize", ["split", "truncate", "drop"])
def test_report_bounds_are_the_packers_bounds(real_lengths, oversize):
    lengths = real_lengths["c4"]
    assert int((lengths > 1024).sum()) > 0  # some documents are longer than a row
    report = waste_report(lengths, capacity=1024, batch_size=8, oversize=oversize)
    packed = pack(lengths, 1024, algorithm="bfd", oversize=oversize)
    assert (report.lower_bound_l1, report.lower_bound_l2) == (packed.lower_bound, packed.lower_bound_l2)
    assert report["bfd"].rows == packed.num_bins


def test_split_bound_counts_every_token():
    lengths = np.array([3000, 100, 500])
    report = waste_report(lengths, capacity=1024, oversize="split")
    assert (report.lower_bound_l1, report.lower_bound_l2) == (4, 4)  # 3,600 tokens: 4 rows, not the 2 of cut lengths
    assert report["bfd"].rows == 4 and report["bfd"].vs_lower_bound == 1.0
