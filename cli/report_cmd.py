"""Helpers of ``packwise report``: render the waste table and length histogram, write JSON and a plot."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from ..packing import WasteReport


def length_histogram(lengths: np.ndarray, capacity: int, bins: int = 16) -> dict:
    """Equal-width histogram of the lengths over ``[1, max]``; ``over_capacity`` counts the long ones."""
    top = int(max(lengths.max(), 1))
    edges = np.unique(np.linspace(1, top + 1, bins + 1).round().astype(np.int64))
    counts, _ = np.histogram(lengths, bins=edges)
    return {
        "edges": edges.tolist(),
        "counts": counts.tolist(),
        "over_capacity": int((lengths > capacity).sum()),
    }


def report_dict(report: WasteReport, histogram: dict, source: str) -> dict:
    return {"input": source, **report.to_dict(), "length_histogram": histogram}


def render_report(report: WasteReport, title: str, histogram: dict | None = None, oversize: str = "truncate",
                  noticed: dict | None = None) -> None:  # fmt: skip
    """The waste table, the length summary and histogram, and what the reader ``noticed``."""
    from rich.table import Table

    from ..pipeline.readers import QUOTED_LINE_BREAKS

    table = Table(title=f"padding waste at {report.capacity} tokens per row — {title}")
    for name in ("strategy", "rows", "steps", "padding", "truncated", "seqs/row", "vs L1", "attn dense/masked"):
        table.add_column(name, justify="left" if name == "strategy" else "right", no_wrap=True)
    for s in report.strategies:
        table.add_row(
            s.name,
            f"{s.rows:,}",
            f"{s.steps:,}",
            f"{100 * s.padding_fraction:.2f}%",
            f"{100 * s.truncation_fraction:.2f}%",
            f"{s.sequences_per_row:.2f}",
            f"{s.vs_lower_bound:.4f}",
            f"{s.attention_dense / s.attention_masked:.1f}x" if s.attention_masked else "-",
        )
    console = _console()
    console.print(table)
    console.print(
        f"{report.num_sequences:,} sequences, {report.total_tokens:,} tokens; length mean {report.mean_length:.1f}, "
        f"median {report.median_length:.0f}, p99 {report.p99_length:.0f}, max {report.max_length}; "
        f"lower bounds L1={report.lower_bound_l1:,} L2={report.lower_bound_l2:,} rows"
    )
    if noticed and QUOTED_LINE_BREAKS in noticed:
        console.print(f"CSV rows with quoted line breaks: {noticed[QUOTED_LINE_BREAKS]:,}")
    if histogram is not None:
        hist = Table(title="sequence lengths (tokens)")
        for name in ("length", "sequences", ""):
            hist.add_column(name, justify="right" if name != "" else "left", no_wrap=True)
        counts, edges = histogram["counts"], histogram["edges"]
        peak = max(max(counts), 1)
        for i, c in enumerate(counts):
            hist.add_row(f"{edges[i]}–{edges[i + 1] - 1}", f"{c:,}", "█" * int(round(40 * c / peak)))
        console.print(hist)
        if histogram["over_capacity"]:
            fate = {"truncate": "the packers truncate them", "split": "the packers split them into pieces",
                    "drop": "the packers drop them", "error": "packwise pack --oversize error refuses them"}[oversize]  # fmt: skip
            console.print(
                f"{histogram['over_capacity']:,} sequences are longer than {report.capacity} tokens: {fate} "
                f"(--oversize {oversize}); the padded strategies cut them at {report.capacity}"
            )


def write_json(data: dict, path: Path) -> None:
    from ..pipeline.atomic import atomic_path, os_error_message

    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=2))
    except OSError as err:
        raise ValueError(f"--json {os_error_message(err, path)}") from None


def _padding_axis(padding: list[float]) -> float:
    """Right end of the padding axis in %: room for the labels, never past 100%."""
    return min(100.0, max(padding + [1.0]) * 1.35)


def _figure(report: WasteReport, lengths: np.ndarray, histogram: dict, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    left.hist(lengths, bins=np.asarray(histogram["edges"]), color="#4C72B0", edgecolor="white")
    left.axvline(report.capacity, color="#C44E52", linestyle="--", label=f"row capacity {report.capacity}")
    left.set_xlabel("sequence length (tokens)")
    left.set_ylabel("sequences (log scale)")
    left.set_yscale("log")
    left.set_title(f"length distribution: {report.num_sequences:,} sequences")
    left.legend()
    names = [s.name for s in report.strategies]
    padding = [100 * s.padding_fraction for s in report.strategies]
    colors = ["#C44E52" if n in ("pad_to_max", "random_batches", "bucketed_batches") else "#55A868" for n in names]
    span = _padding_axis(padding)
    bars = right.barh(names, [max(p, span / 200) for p in padding], color=colors)  # a near-zero bar stays a visible sliver
    labels = [f"{p:.1f}% · {s.rows:,} rows" for p, s in zip(padding, report.strategies)]
    inside = [p > 0.7 * span for p in padding]  # long bars carry their label inside: the axis ends at 100%
    right.bar_label(bars, labels=[lab if not i else "" for lab, i in zip(labels, inside)], padding=3)
    right.bar_label(bars, labels=[lab if i else "" for lab, i in zip(labels, inside)], label_type="center", color="white")
    right.invert_yaxis()
    right.set_xlim(0, span)
    right.set_xlabel("padding (% of computed token slots)")
    right.set_title("padding waste per strategy (red: padded, green: packed)")
    fig.suptitle(title)
    return fig, plt


def write_plot(report: WasteReport, lengths: np.ndarray, histogram: dict, path: Path, title: str) -> None:
    """A PNG (matplotlib) or a self-contained HTML page (the PNG inline plus the numbers as a table)."""
    from ..pipeline.atomic import atomic_path

    suffix = path.suffix.lower()
    if suffix not in (".png", ".html"):
        raise ValueError(f"--plot {path}: the file must end in .png or .html")
    try:
        fig, plt = _figure(report, lengths, histogram, title)
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'packwise[plot]'") from None
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    png = buf.getvalue()
    with atomic_path(path) as tmp:
        if suffix == ".png":
            tmp.write_bytes(png)
        else:
            rows = "".join(
                f"<tr><td>{html.escape(s.name)}</td><td>{s.rows:,}</td><td>{100 * s.padding_fraction:.2f}%</td>"
                f"<td>{100 * s.truncation_fraction:.2f}%</td><td>{s.vs_lower_bound:.4f}</td></tr>"
                for s in report.strategies
            )
            tmp.write_text(
                f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
                f"<h1>{html.escape(title)}</h1><img alt='padding report' src='data:image/png;base64,"
                f"{base64.b64encode(png).decode()}'><table border='1'><tr><th>strategy</th><th>rows</th>"
                f"<th>padding</th><th>truncated</th><th>vs L1</th></tr>{rows}</table></body></html>",
                encoding="utf-8",
            )


def _console():
    """Stdout console; wide enough for the tables when the output is a file or a pipe."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=140)


def report_output(output: str, json_path: Path | None, plot: Path | None = None) -> None:
    """``packwise report OUT`` on a pack output: the per-source table (and ``--json``)."""
    from ..pipeline._paths import refuse_overlap
    from ..pipeline.atomic import check_writable
    from ..pipeline.source_report import source_report

    if plot is not None:
        raise ValueError(f"--plot draws the report of an input; {output} is a pack output, whose report is its table and --json")
    if json_path is not None:
        refuse_overlap([("--json", json_path)], [("the pack output", output)])
        check_writable(json_path, "--json")
    report = source_report(output)
    render_sources_report(report)
    if json_path is not None:
        write_json(report, json_path)


def render_sources_report(report: dict) -> None:
    """Tokens, sequences, padding share and realised against target proportion, per source."""
    from rich.table import Table

    table = Table(title=f"{report['output']}: {report['rows']:,} rows of {report['max_tokens']} tokens, "
                        f"{report['tokens']:,} tokens, padding {100 * report['padding']:.2f}%")  # fmt: skip
    for name in ("source", "tokens", "sequences", "padding", "target", "realised", "realised - target"):
        table.add_column(name, justify="left" if name == "source" else "right", no_wrap=True)
    for s in report["sources"]:
        table.add_row(s["name"], f"{s['tokens']:,}", f"{s['sequences']:,}", f"{100 * s['padding']:.2f}%", f"{100 * s['target']:.2f}%",
                      f"{100 * s['realised']:.2f}%", f"{100 * (s['realised'] - s['target']):+.3f} pts")  # fmt: skip
    _console().print(table)


def report_mix(inputs: list[str], mix: dict, options: dict, rest: dict) -> None:
    """``packwise report A B ... --mix``: the per-source table of the mixture pack would make (``report_mixture``)."""
    from ..pipeline._paths import refuse_overlap, run_reads
    from ..pipeline.atomic import check_writable
    from ..pipeline.mix_run import report_mixture
    from ._progress import progress_bar
    from .pack_cmd import mixture_setup

    if options["max_tokens"] is None:
        raise ValueError("--max-tokens is required to report on inputs")
    if rest["plot"] is not None:
        raise ValueError("--plot draws one input's report; a mixture's report is its table and --json")
    sources, spec, text = mixture_setup(inputs, mix, rest, options)
    json_path = rest["json"]
    if json_path is not None:
        for s in sources:
            refuse_overlap([("--json", json_path)], run_reads(s.path, tokenizer=options["tokenizer"]))
        check_writable(json_path, "--json")
    with progress_bar("reading", None) as update:
        report = report_mixture(sources, mix=spec, **{**options, **text}, progress=update)
    render_sources_report(report)
    if json_path is not None:
        write_json(report, json_path)
