"""The report plot (issue 23, item 6): near-zero padding bars are visible and the padding axis
never runs past 100%."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the plot needs the plot extra")

from packwise.cli.report_cmd import _figure  # noqa: E402
from packwise.packing import waste_report  # noqa: E402


def test_padding_bars_are_visible_and_the_axis_stops_at_100_percent(real_lengths):
    lengths = real_lengths["ag_news"]
    report = waste_report(lengths, capacity=1024, batch_size=8)
    padding = [100 * s.padding_fraction for s in report.strategies]
    assert max(padding) * 1.35 > 100 and min(padding) < 0.5  # pad_to_max near 95%, packers near 0%
    fig, plt = _figure(report, lengths, {"edges": np.linspace(1, lengths.max() + 1, 30)}, "ag_news")
    right = fig.axes[1]
    assert right.get_xlim() == (0.0, 100.0)
    widths = [bar.get_width() for bar in right.patches]
    assert len(widths) == len(padding) and min(widths) >= 0.5  # a sliver of half a percent at least
    assert [w for w, p in zip(widths, padding) if p >= 0.5] == [p for p in padding if p >= 0.5]
    texts = sorted(t.get_text() for t in right.texts if t.get_text())
    assert texts == sorted(f"{p:.1f}% · {s.rows:,} rows" for p, s in zip(padding, report.strategies))
    plt.close(fig)
