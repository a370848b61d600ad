"""Helpers of ``packwise pack``: load a ``--template`` function, CSV header options, the end-of-run summary."""

from __future__ import annotations

import importlib
from pathlib import Path


def load_template(spec: str | None):
    """``--template`` -> the function it names (it renders one whole row, a dict, to text), or ``None``.

    ``FILE.py:function`` or ``FILE.py`` (its function ``template``) loads that file; ``module:function``
    imports an installed module.
    """
    if spec is None:
        return None
    target, _, name = spec.rpartition(":") if ":" in spec else (spec, "", "template")
    if target.endswith(".py") or Path(target).is_file():
        module = _load_file(target, spec)
    else:
        if not target or not name:
            raise ValueError(f"--template must look like FILE.py:function, FILE.py or module:function, got {spec!r}")
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise ValueError(f"--template {spec}: cannot import {target} ({err}); pass FILE.py:function for a file") from None
    fn = getattr(module, name or "template", None)
    if fn is None:
        raise ValueError(f"--template {spec}: {target} has no function {name or 'template'!r}; name it as FILE.py:function")
    if not callable(fn):
        raise ValueError(f"--template {spec}: {name} is not a function")
    return fn


def _load_file(path: str, spec: str):
    import importlib.util

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--template {spec}: no file at {file}; pass FILE.py:function with an existing file")
    module_spec = importlib.util.spec_from_file_location(f"packwise_template_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        raise ValueError(f"--template {spec}: {file} fails to load ({type(err).__name__}: {err}); fix the file") from None
    return module


def announce_layout(source, options: dict, format, header, tokenizer, dialect=None, prefix: str = "") -> None:
    """Print, as the first line (after ``prefix``), the layout detected when ``options`` name no column option."""
    from ..pipeline.layouts import default_chat_template, input_layout, needs_detection

    if needs_detection(*options.values()):
        layout = input_layout(source, format=format, csv_header=header, csv_dialect=dialect)
        print(prefix + layout.line(default_chat_template(tokenizer) if layout.chat else None), flush=True)


def csv_header(csv_columns: str | None, no_header: bool):
    """``--csv-columns a,b,c`` / ``--no-header`` -> the readers' ``csv_header``."""
    if csv_columns is not None:
        return [c.strip() for c in csv_columns.split(",")]
    return not no_header


def csv_dialect(delimiter: str, quote: str, escape: str | None):
    """``--csv-delimiter`` / ``--csv-quote`` / ``--csv-escape`` -> the readers' ``CsvDialect``; a tab
    is hard to type, so ``\\t`` and ``tab`` name it."""
    from ..pipeline.readers import CsvDialect

    def char(value: str | None) -> str | None:
        return "\t" if value in ("\\t", "tab") else value

    return CsvDialect(char(delimiter), char(quote), char(escape))


def render_summary(result) -> None:
    """The summary table of a pack run: rows in/out, padding before/after, distance to the bound."""
    from rich.table import Table

    from ..pipeline.readers import QUOTED_LINE_BREAKS

    m = result.manifest
    s, cap = m["stats"], m["settings"]["max_tokens"]
    layout = f", layout {m['settings']['layout']}" if m["settings"].get("layout") else ""
    table = Table(title=f"packwise pack -> {result.output} ({m['settings']['algorithm']}, {cap} tokens per row{layout})")
    table.add_column("", justify="left")
    table.add_column("value", justify="right")
    lines = [
        ("input rows", f"{s['rows_in']:,}"),
        ("empty rows skipped", f"{s['empty_rows']:,}"),
        *([("sequences with no label (--allow-unlabeled)", f"{s['unlabeled_sequences']:,}")] if "unlabeled_sequences" in s else []),
        ("sequences", f"{s['sequences']:,}"),
        *([("preference pairs (one sequence each)", f"{s['pairs']:,}")] if "pairs" in s else []),
        ("tokens in", f"{s['tokens_in']:,}"),
        ("tokens out", f"{s['tokens_out']:,}"),
        ("documents marked with", _boundaries(m["settings"])),
        (f"over {cap} tokens (--oversize {m['settings']['oversize']})", _oversize(s, m["settings"])),
        ("truncated tokens", f"{s['truncated_tokens']:,}"),
        ("dropped sequences (tokens)", f"{s['dropped_sequences']:,} ({s['dropped_tokens']:,})"),
        ("packed rows", f"{s['rows_out']:,}"),
        ("padding before (pad to max)", f"{100 * s['padding_before']:.2f}%"),
        ("padding after (packed)", f"{100 * s['padding_after']:.2f}%"),
        ("lower bound L1 (rows)", f"{s['lower_bound_l1']:,}"),
        ("rows over L1", f"{100 * s['rows_over_bound']:.3f}%"),
        ("shards", f"{len(m['shards']):,}"),
    ]
    if QUOTED_LINE_BREAKS in s:  # a CSV: a record spanning lines is legal, and also what an unclosed quote does
        lines.insert(1, ("CSV rows with quoted line breaks", f"{s[QUOTED_LINE_BREAKS]:,}"))
    for name, value in lines:
        table.add_row(name, value)
    _console().print(table)


def _boundaries(settings: dict) -> str:
    marks = [name for name, key in (("BOS", "add_bos"), ("EOS", "add_eos")) if settings.get(key)]
    if not marks:
        return "nothing (--add-eos / --add-bos to mark them)"
    default = " (default for concat)" if settings["algorithm"] == "concat" and marks == ["EOS"] else ""
    return " + ".join(marks) + default


def _oversize(stats: dict, settings: dict) -> str:
    n = stats.get("oversize_sequences", 0)
    if n == 0:
        return "0"
    if settings["algorithm"] == "concat":
        return f"{n:,}: cut across rows (concat)"
    fate = {"truncate": "truncated", "split": "split into pieces", "drop": "dropped"}[settings["oversize"]]
    return f"{n:,}: {fate}"


def _console():
    """Stdout console; wide enough for the tables when the output is a file or a pipe."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=140)


def pack_mix(inputs: list[str], output: Path, mix: dict, options: dict, refused: dict) -> None:
    """``packwise pack A B ... OUT [--mix ...]``: set the mixture up (``mixture_setup``), pack it and
    print the summary with its per-source table."""
    from ..pipeline.mix_run import pack_mixture
    from ._interrupt import complete_shards, stop_on_signals
    from ._progress import progress_bar

    sources, spec, text = mixture_setup(inputs, {**mix, "seed": options["seed"] or 0}, refused, options)
    resume = "rerun the same command to resume after them"
    with stop_on_signals(lambda: complete_shards(output), resume), progress_bar("staging", None) as update:
        result = pack_mixture(sources, output, mix=spec, **{**options, **text}, progress=update)
    if result.state == "complete":
        print(f"{output} is up to date (manifest.json with the same settings, inputs and mix); nothing to do")
    elif result.state == "resume":
        print(f"resumed after {result.resumed_shards} complete shards")
    render_summary(result)
    render_sources(result.manifest)


def mixture_setup(inputs: list[str], mix: dict, refused: dict, options: dict):
    """``(sources, MixSpec, text options)`` of a mixture command (``pack``/``report`` with several
    inputs), after refusing the options a mixture cannot take, and each source's layout printed."""
    from ..pipeline.mix import MixSpec, parse_mix, parse_sources

    engine = refused.get("engine", "local")
    if engine != "local":
        raise ValueError(f"--engine {engine}: several inputs and --mix run on the local engine; drop --engine {engine}")
    if refused["train_tokenizer"]:
        raise ValueError("--train-tokenizer trains on one input; with several inputs pass --tokenizer PATH (e.g. one trained by packing a single input)")
    if refused["share_prompt"]:
        raise ValueError("--share-prompt applies to preference pairs, which a mixture does not pack; drop it")
    sources = parse_sources(inputs)
    weights = None if mix["mix"] is None else parse_mix(mix["mix"])
    repetition = {} if mix["max_repetition"] is None else {"max_repetition": mix["max_repetition"]}
    spec = MixSpec(weights, mix["temperature"], mix["by"], mix["tokens"], seed=mix["seed"], **repetition)
    spec.check_names([s.name for s in sources])
    text = dict(csv_header=csv_header(refused["csv_columns"], refused["no_header"]), csv_dialect=csv_dialect(*refused["csv"]),
                template=load_template(options["template"]))  # fmt: skip
    columns = dict(t=options["text_column"], k=options["tokens_column"], f=text["template"], c=options["chat_template"])
    for s in sources:
        announce_layout(s.path, columns, options["format"], text["csv_header"], options["tokenizer"], text["csv_dialect"], prefix=f"source {s.name}: ")
    return sources, spec, text


def render_sources(manifest: dict) -> None:
    """The per-source table of a mixed pack: tokens in and out, target and realised proportion, repetition."""
    from rich.table import Table

    table = Table(title="sources (proportions of tokens out)")
    for name in ("source", "layout", "tokens in", "tokens out", "sequences", "target", "realised", "repetition"):
        table.add_column(name, justify="left" if name in ("source", "layout") else "right", no_wrap=True)
    for s in manifest["sources"]:
        table.add_row(s["name"], str(s["layout"]), f"{s['tokens_in']:,}", f"{s['tokens']:,}", f"{s['sequences']:,}",
                      f"{100 * s['target']:.2f}%", f"{100 * s['realised']:.2f}%", f"{s['repetition']:.3f}x")  # fmt: skip
    _console().print(table)
