"""The ``packwise`` command.  Heavy modules are imported inside commands so ``--help`` is instant."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import __version__
from ._errors import exit_on_bad_input
from ._interrupt import complete_shards, stop_on_signals
from ._process import batch_job, run_and_exit

app = typer.Typer(
    name="packwise",
    help="Dense, well-chosen training batches: pack, bucket, select and report padding waste.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"packwise {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """packwise: sequence packing, length bucketing and data selection for PyTorch training."""


@app.command("demo-data")
@exit_on_bad_input
def demo_data(
    output: Path = typer.Argument(..., help="JSON Lines file to write (columns: text, source)."),
    min_chars: int = typer.Option(20, help="Skip docstrings shorter than this many characters."),
) -> None:
    """Write a real offline corpus: every docstring of the Python standard library."""
    import sysconfig

    from ..pipeline._paths import refuse_overlap
    from ..pipeline.demo_data import write_demo_corpus

    refuse_overlap([("output", output)], [("the standard library", sysconfig.get_paths()["stdlib"])])
    rows = write_demo_corpus(output, min_chars=min_chars)
    typer.echo(f"wrote {rows} docstrings to {output}")


_TOKENIZER_HELP = "A tokenizers JSON file, or a transformers tokenizer folder (local)."
_TRAIN_HELP = "Train a byte-level BPE on the input itself (offline, seconds)."
_TOKENS_HELP = "Read token ids from this list<int> column instead of tokenizing."
_TEXT_HELP = (
    "Column holding the text (default text). Several, comma-separated (instruction,input,output), are joined with "
    "a blank line (\\n\\n), empty values left out. With --chat-template: the messages column (default messages or conversations)."
)
_TEMPLATE_HELP = "FILE.py:function (or FILE.py, function template) or module:function: renders the whole row (a dict of every column) to text."
_CHAT_HELP = (
    "Render a chat column (messages with role/content, or ShareGPT conversations with from/value; system and tools "
    "columns are used when present): chatml (built in) or tokenizer (the --tokenizer folder's own chat template)."
)
_TRAIN_ON_HELP = "With --chat-template: assistant (default; labels -100 outside the assistant turns) or all."
_EOS_HELP = "Append the tokenizer's EOS token to every document (default: on for --algorithm concat, off otherwise)."
_BOS_HELP = "Prepend the tokenizer's BOS token to every document."
_CSV_COLUMNS_HELP = "The file is a CSV without a header: these comma-separated column names (e.g. label,title,description)."
_NO_HEADER_HELP = "The CSV has no header row: its columns are f0, f1, ..."
_CSV_DELIMITER_HELP = "The character between CSV fields (default ,); \\t or tab for a tab."
_CSV_QUOTE_HELP = "The character that quotes CSV fields (default \")."
_CSV_ESCAPE_HELP = "A character that escapes the next one inside CSV fields (default: none; a doubled quote is a quote)."
_FORMAT_HELP = (
    "Input format when the file names do not say: parquet, json (JSON Lines or one JSON array), csv, text (one row per line) or arrow."
)
_BACKEND_HELP = ("auto (fastokens, Rust, when installed and it gives HF's ids on a sample of the input; else HF), "
                 "hf (Hugging Face tokenizers) or fastokens (the extra packwise\\[fast]).")
_ENGINE_HELP = "local (in this process, no services) or ray (Ray Data, the extra packwise\\[ray]; see docs/ray.md)."
_ADDRESS_HELP = "With --engine ray: the cluster to join (host:port or 'auto'); default $RAY_ADDRESS, else a local Ray."
_SHARE_HELP = "Preference pairs: store the prompt once per pair ([prompt | chosen | rejected], PairCollator(share_prompt=True)), not twice."
_INPUT_HELP = "Parquet/JSONL/JSON-array/CSV/TXT/Arrow file, folder, glob, or save_to_disk folder."
_OVERSIZE_HELP = "Sequences longer than --max-tokens: error, truncate, split or drop."


_PATHS_HELP = (
    "INPUT... OUTPUT: one input or several (each a Parquet/JSONL/JSON-array/CSV/TXT/Arrow file, folder, glob, or save_to_disk "
    "folder, named by its file stem or as NAME=PATH), then the folder for the Parquet shards and manifest.json. Several inputs "
    "are packed as one mixture (--mix)."
)
_MIX_HELP = "Several inputs: target proportions per source, NAME=WEIGHT comma-separated (normalised), e.g. c4_demo=0.7,wiki_demo=0.3. Default: natural proportions."
_TEMPERATURE_HELP = "Several inputs: weights proportional to size**T (0.3 up-samples small sources; 0: uniform). Not with --mix."
_MIX_BY_HELP = "tokens (proportions of tokens, default) or examples (of sequences; the pieces of a split sequence count apart)."
_MIX_TOKENS_HELP = "Tokens in the mixed output (default: the inputs' total); sources are repeated or subsampled (seeded) to their share."
_MAX_REPETITION_HELP = "The most passes over one source a mixture may take (default 4); a source needing more is an error."


@app.command("pack")
@exit_on_bad_input
def pack(
    paths: list[str] = typer.Argument(..., metavar="PATHS", help=_PATHS_HELP, show_default=False),
    max_tokens: int = typer.Option(..., "--max-tokens", help="Row capacity in tokens."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help=_TOKENIZER_HELP),
    tokenizer_backend: str = typer.Option("auto", "--tokenizer-backend", help=_BACKEND_HELP),
    train_tokenizer: bool = typer.Option(False, "--train-tokenizer", help=_TRAIN_HELP + " Saved as OUTPUT/tokenizer.json."),
    tokens_column: Optional[str] = typer.Option(None, "--tokens-column", help=_TOKENS_HELP),
    labels_column: Optional[str] = typer.Option(None, "--labels-column", help="With --tokens-column: a parallel labels column."),
    text_column: Optional[str] = typer.Option(None, "--text-column", help=_TEXT_HELP),
    template: Optional[str] = typer.Option(None, "--template", help=_TEMPLATE_HELP),
    chat_template: Optional[str] = typer.Option(None, "--chat-template", help=_CHAT_HELP),
    train_on: Optional[str] = typer.Option(None, "--train-on", help=_TRAIN_ON_HELP),
    add_eos: Optional[bool] = typer.Option(None, "--add-eos/--no-add-eos", help=_EOS_HELP),
    add_bos: bool = typer.Option(False, "--add-bos/--no-add-bos", help=_BOS_HELP),
    input_format: Optional[str] = typer.Option(None, "--format", help=_FORMAT_HELP),
    csv_columns: Optional[str] = typer.Option(None, "--csv-columns", help=_CSV_COLUMNS_HELP),
    no_header: bool = typer.Option(False, "--no-header", help=_NO_HEADER_HELP),
    csv_delimiter: str = typer.Option(",", "--csv-delimiter", help=_CSV_DELIMITER_HELP),
    csv_quote: str = typer.Option('"', "--csv-quote", help=_CSV_QUOTE_HELP),
    csv_escape: Optional[str] = typer.Option(None, "--csv-escape", help=_CSV_ESCAPE_HELP),
    algorithm: str = typer.Option(
        "window_bfd", "--algorithm", help="window_bfd (streaming best fit, open rows carried across windows), concat, or a packer of "
        "packwise.packing (bfd, ffd, first_fit, next_fit, ...) applied to each window on its own."
    ),
    window: int = typer.Option(10_000, "--window", help="Sequences per packing window (memory grows with it)."),
    oversize: str = typer.Option("error", "--oversize", help=_OVERSIZE_HELP),
    shard_rows: int = typer.Option(8192, "--shard-rows", help="Packed rows per Parquet shard."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Shuffle the rows of each window with this seed (default: packer order)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an output made with other settings."),
    engine: str = typer.Option("local", "--engine", help=_ENGINE_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=_ADDRESS_HELP),
    block_rows: int = typer.Option(
        100_000, "--block-rows", help="With --engine ray: input rows per pack block (blocks are packed in parallel, each on its own)."
    ),
    tail_pass: bool = typer.Option(
        False, "--tail-pass", help="With --engine ray: repack the open rows left at every block's end together (padding as local)."
    ),
    allow_unlabeled: bool = typer.Option(
        False, "--allow-unlabeled", help="Keep sequences whose labels are all -100 (they train on nothing; counted in the summary)."
    ),
    share_prompt: bool = typer.Option(False, "--share-prompt", help=_SHARE_HELP),
    mix: Optional[str] = typer.Option(None, "--mix", help=_MIX_HELP),
    temperature: Optional[float] = typer.Option(None, "--temperature", help=_TEMPERATURE_HELP),
    mix_by: str = typer.Option("tokens", "--mix-by", help=_MIX_BY_HELP),
    mix_tokens: Optional[int] = typer.Option(None, "--mix-tokens", help=_MIX_TOKENS_HELP),
    max_repetition: Optional[float] = typer.Option(None, "--max-repetition", help=_MAX_REPETITION_HELP),
) -> None:
    """Pack a dataset, or a mixture of several, into Parquet shards of rows of at most --max-tokens tokens (resumable)."""
    batch_job(kernels_only=True, user_code=template is not None)
    if len(paths) < 2:
        raise ValueError("pass INPUT... OUTPUT: at least one input, then the output folder")
    inputs, output = paths[:-1], Path(paths[-1])
    if len(inputs) > 1 or mix is not None or temperature is not None or mix_tokens is not None or max_repetition is not None or mix_by != "tokens":
        from .pack_cmd import pack_mix

        return pack_mix(inputs, output, dict(mix=mix, temperature=temperature, by=mix_by, tokens=mix_tokens, max_repetition=max_repetition),
                        dict(max_tokens=max_tokens, tokenizer=tokenizer, tokens_column=tokens_column, labels_column=labels_column,
                             text_column=text_column, template=template, chat_template=chat_template, train_on=train_on,
                             add_eos=add_eos, add_bos=add_bos, algorithm=algorithm, window=window, oversize=oversize,
                             shard_rows=shard_rows, seed=seed, overwrite=overwrite, format=input_format,
                             tokenizer_backend=tokenizer_backend, allow_unlabeled=allow_unlabeled),
                        dict(train_tokenizer=train_tokenizer, engine=engine, share_prompt=share_prompt, csv_columns=csv_columns,
                             no_header=no_header, csv=(csv_delimiter, csv_quote, csv_escape)))  # fmt: skip
    input = inputs[0]
    from ..pipeline import open_input, pack_to_parquet
    from ..pipeline._paths import refuse_overlap, run_reads
    from ._progress import progress_bar
    from ..pipeline.pack_stage import check_pack_settings
    from .pack_cmd import announce_layout, csv_dialect, csv_header, load_template, render_summary

    refuse_overlap([("output", output)], run_reads(input, tokenizer=tokenizer, template=template), folders=True)
    check_pack_settings(max_tokens, algorithm, oversize, window, seed)  # the cheap checks before any reading
    fn = load_template(template)
    header = csv_header(csv_columns, no_header)
    dialect = csv_dialect(csv_delimiter, csv_quote, csv_escape)
    announce_layout(input, dict(t=text_column, k=tokens_column, f=fn, c=chat_template), input_format, header, tokenizer, dialect)
    total = open_input(input, None, format=input_format, csv_header=header, csv_dialect=dialect).num_rows
    resume = "rerun the same command to resume after them"
    with stop_on_signals(lambda: complete_shards(output), resume), progress_bar("packing", total) as update:
        result = pack_to_parquet(
            input,
            output,
            max_tokens=max_tokens,
            tokenizer=tokenizer,
            train_tokenizer=train_tokenizer,
            text_column=text_column,
            tokens_column=tokens_column,
            labels_column=labels_column,
            template=fn,
            chat_template=chat_template,
            train_on=train_on,
            add_eos=add_eos,
            add_bos=add_bos,
            csv_header=header,
            csv_dialect=dialect,
            algorithm=algorithm,
            window=window,
            oversize=oversize,
            shard_rows=shard_rows,
            seed=seed,
            overwrite=overwrite,
            format=input_format,
            progress=update,
            engine=engine,
            ray_address=ray_address,
            block_rows=block_rows,
            tail_pass=tail_pass,
            tokenizer_backend=tokenizer_backend,
            allow_unlabeled=allow_unlabeled,
            share_prompt=share_prompt,
        )
    if result.state == "complete":
        typer.echo(f"{output} is up to date (manifest.json with the same settings and inputs); nothing to do")
    elif result.state == "resume":
        typer.echo(f"resumed after {result.resumed_shards} complete shards")
    render_summary(result)


_REPORT_HELP = """Padding-waste report: pad-to-max, random and bucketed batches, and every packer.

Columns: rows and steps (rows / --batch-size); padding (share of the computed token slots that are
padding); truncated (share of tokens cut or dropped); seqs/row; vs L1 = computed token slots / (L1 x
--max-tokens), where L1 = ceil(tokens / --max-tokens) rows is the fewest any layout can use: 1.0000 is
as dense as possible, 1.0100 means 1% more slots than that bound; attn dense/masked = sum of squared row
widths / sum of squared sequence lengths: how much more attention compute a row costs with one dense
causal mask than with a mask per sequence (position_ids / cu_seq_lens / block-diagonal masks).
Packers follow --oversize as packwise pack does (the same rows for the same --max-tokens, --oversize
and --window); padded strategies always cut at --max-tokens."""


@app.command("report", help=_REPORT_HELP)
@exit_on_bad_input
def report(
    inputs: list[str] = typer.Argument(..., metavar="INPUT", show_default=False, help=_INPUT_HELP + (
        " Or a packwise pack output folder: its per-source table (tokens, padding, realised against target proportion)."
        " Several inputs (or --mix / --temperature): that table for the mixture packwise pack would make.")),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Row capacity in tokens (required for an input)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Rows per step for the padded strategies."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help=_TOKENIZER_HELP),
    tokenizer_backend: str = typer.Option("auto", "--tokenizer-backend", help=_BACKEND_HELP),
    train_tokenizer: bool = typer.Option(False, "--train-tokenizer", help=_TRAIN_HELP),
    tokens_column: Optional[str] = typer.Option(None, "--tokens-column", help=_TOKENS_HELP),
    text_column: Optional[str] = typer.Option(None, "--text-column", help=_TEXT_HELP),
    template: Optional[str] = typer.Option(None, "--template", help=_TEMPLATE_HELP),
    chat_template: Optional[str] = typer.Option(None, "--chat-template", help=_CHAT_HELP),
    add_eos: bool = typer.Option(False, "--add-eos/--no-add-eos", help="Count an EOS token per document (pack adds one by default with --algorithm concat)."),
    add_bos: bool = typer.Option(False, "--add-bos/--no-add-bos", help="Count a BOS token per document."),
    input_format: Optional[str] = typer.Option(None, "--format", help=_FORMAT_HELP),
    csv_columns: Optional[str] = typer.Option(None, "--csv-columns", help=_CSV_COLUMNS_HELP),
    no_header: bool = typer.Option(False, "--no-header", help=_NO_HEADER_HELP),
    csv_delimiter: str = typer.Option(",", "--csv-delimiter", help=_CSV_DELIMITER_HELP),
    csv_quote: str = typer.Option('"', "--csv-quote", help=_CSV_QUOTE_HELP),
    csv_escape: Optional[str] = typer.Option(None, "--csv-escape", help=_CSV_ESCAPE_HELP),
    oversize: str = typer.Option("truncate", "--oversize", help=_OVERSIZE_HELP + " Default truncate."),
    window: int = typer.Option(10_000, "--window", help="Sequences per packing window (as packwise pack --window)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON here."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the report: PATH.png or PATH.html."),
    seed: int = typer.Option(0, help="Seed of the random-batches baseline (a mixture: of its draws, as packwise pack --seed)."),
    share_prompt: bool = typer.Option(False, "--share-prompt", help=_SHARE_HELP),
    mix: Optional[str] = typer.Option(None, "--mix", help=_MIX_HELP),
    temperature: Optional[float] = typer.Option(None, "--temperature", help=_TEMPERATURE_HELP),
    mix_by: str = typer.Option("tokens", "--mix-by", help=_MIX_BY_HELP),
    mix_tokens: Optional[int] = typer.Option(None, "--mix-tokens", help=_MIX_TOKENS_HELP),
    max_repetition: Optional[float] = typer.Option(None, "--max-repetition", help=_MAX_REPETITION_HELP),
) -> None:
    batch_job(kernels_only=True, user_code=template is not None)
    mixing = dict(mix=mix, temperature=temperature, tokens=mix_tokens, max_repetition=max_repetition)
    if len(inputs) > 1 or any(v is not None for v in mixing.values()) or mix_by != "tokens":
        from .report_cmd import report_mix

        return report_mix(inputs, {**mixing, "by": mix_by, "seed": seed},
                          dict(max_tokens=max_tokens, oversize=oversize, window=window, tokenizer=tokenizer, tokens_column=tokens_column,
                               text_column=text_column, template=template, chat_template=chat_template, add_eos=add_eos,
                               add_bos=add_bos, format=input_format, tokenizer_backend=tokenizer_backend),
                          dict(json=json_path, plot=plot, train_tokenizer=train_tokenizer, share_prompt=share_prompt,
                               csv_columns=csv_columns, no_header=no_header, csv=(csv_delimiter, csv_quote, csv_escape)))  # fmt: skip
    input = inputs[0]
    from ..packing import waste_report
    from ..packing.core import OVERSIZE_POLICIES, validate_capacity
    from ..pipeline import dataset_lengths, open_input
    from ..pipeline._paths import refuse_overlap, run_reads
    from ._progress import progress_bar
    from .pack_cmd import announce_layout, csv_dialect, csv_header, load_template
    from .report_cmd import length_histogram, render_report, report_dict, write_json, write_plot

    from ..pipeline.atomic import check_writable

    if (Path(input) / "manifest.json").is_file():  # a pack output: what each source became
        from .report_cmd import report_output

        return report_output(input, json_path, plot)
    if max_tokens is None:
        raise ValueError("--max-tokens is required to report on an input (a packwise pack output folder needs none: its manifest has it)")
    validate_capacity(max_tokens, "--max-tokens")
    validate_capacity(batch_size, "--batch-size")
    if seed < 0:
        raise ValueError(f"--seed {seed}: must be an integer >= 0")
    if oversize not in OVERSIZE_POLICIES:
        raise ValueError(f"--oversize must be one of {OVERSIZE_POLICIES}, got {oversize!r}")
    if plot is not None and plot.suffix.lower() not in (".png", ".html"):
        raise ValueError(f"--plot {plot}: the file must end in .png or .html")
    writes = (("--json", json_path), ("--plot", plot))
    refuse_overlap(writes, run_reads(input, tokenizer=tokenizer, template=template))
    for option, path in writes:
        if path is not None:
            check_writable(path, option)  # before the whole report runs
    fn = load_template(template)
    header = csv_header(csv_columns, no_header)
    dialect = csv_dialect(csv_delimiter, csv_quote, csv_escape)
    announce_layout(input, dict(t=text_column, k=tokens_column, f=fn, c=chat_template), input_format, header, tokenizer, dialect)
    total = open_input(input, None, format=input_format, csv_header=header, csv_dialect=dialect).num_rows
    noticed: dict = {}
    with progress_bar("reading", total) as update:
        lengths = dataset_lengths(
            input,
            tokenizer=tokenizer,
            train_tokenizer=train_tokenizer,
            text_column=text_column,
            tokens_column=tokens_column,
            template=fn,
            chat_template=chat_template,
            add_eos=add_eos,
            add_bos=add_bos,
            csv_header=header,
            csv_dialect=dialect,
            format=input_format,
            progress=update,
            tokenizer_backend=tokenizer_backend,
            share_prompt=share_prompt,
            notes=noticed,
        )
    result = waste_report(lengths, max_tokens, batch_size=batch_size, seed=seed, window=window, oversize=oversize)
    histogram = length_histogram(lengths, max_tokens)
    title = f"{input} ({len(lengths):,} sequences)"
    render_report(result, title=title, histogram=histogram, oversize=oversize, noticed=noticed)
    if json_path is not None:
        write_json({**report_dict(result, histogram, str(input)), **noticed}, json_path)
    if plot is not None:
        write_plot(result, lengths, histogram, plot, title)


@app.command("select")
@exit_on_bad_input
def select(
    input: str = typer.Argument(..., help="Parquet/JSONL/CSV/Arrow file, folder, glob, or save_to_disk folder."),
    output: Path = typer.Argument(..., help="Folder for the kept rows (Parquet shards), decisions.parquet and manifest.json."),
    method: str = typer.Option(..., "--method", help="dedup, prototypes, balance, decontaminate or score."),
    embeddings_column: Optional[str] = typer.Option(None, "--embeddings-column", help="Vector column (list<float>) to cluster."),
    model: Optional[Path] = typer.Option(None, "--model", help="Local sentence-transformers folder to embed --text-column, or all-MiniLM-L6-v2 (the copy the embed extra installs)."),
    text_column: Optional[str] = typer.Option(
        None, "--text-column", help="Column holding the text (with --model); default: the text of the detected layout (text, chat, Alpaca, ...)."
    ),
    k: int = typer.Option(100, "--k", help="k-means clusters."),
    eps: float = typer.Option(0.05, "--eps", help="dedup: drop a row whose cosine to an earlier kept row in its cluster is > 1 - eps."),
    order: str = typer.Option("hard", "--order", help="dedup: hard (far from centroid kept first), easy, random or index."),
    target: Optional[int] = typer.Option(None, "--target", help="balance/score: rows to keep."),
    keep: Optional[float] = typer.Option(None, "--keep", help="balance/score/prototypes: fraction of rows to keep."),
    mode: str = typer.Option("hard", "--mode", help="prototypes: keep hard (far) or easy (prototypical) rows."),
    group_column: Optional[str] = typer.Option(None, "--group-column", help="balance: balance this column's groups instead of clusters."),
    alpha: float = typer.Option(0.5, "--alpha", help="balance with --group-column: group share ~ size**alpha."),
    exact_column: Optional[str] = typer.Option(None, "--exact-column", help="dedup: also drop exact duplicates of this column (text or token ids)."),
    eval_input: Optional[str] = typer.Option(None, "--eval", help="decontaminate: the evaluation set (same column or model)."),
    threshold: float = typer.Option(0.9, "--threshold", help="decontaminate: cosine above which a row is flagged; score: threshold policy."),
    score_column: Optional[str] = typer.Option(None, "--score-column", help="score: numeric column, higher = keep (lower with --lowest)."),
    policy: str = typer.Option("topk", "--policy", help="score: topk, threshold, softmax, power or softrank."),
    beta: float = typer.Option(1.0, "--beta", help="score: temperature of the stochastic policies."),
    lowest: bool = typer.Option(False, "--lowest", help="score: smaller is better (keep the lowest, e.g. --score-column loss for perplexity filtering; --threshold keeps scores <= it)."),
    seed: int = typer.Option(0, "--seed", help="Seed of k-means, sampling and tie-breaks."),
    max_points_per_centroid: int = typer.Option(256, "--max-points-per-centroid", help="k-means trains on at most k * this many sampled rows."),
    shard_rows: int = typer.Option(100_000, "--shard-rows", help="Rows per output shard."),
    input_format: Optional[str] = typer.Option(None, "--format", help=_FORMAT_HELP),
    csv_delimiter: str = typer.Option(",", "--csv-delimiter", help=_CSV_DELIMITER_HELP),
    csv_quote: str = typer.Option('"', "--csv-quote", help=_CSV_QUOTE_HELP),
    csv_escape: Optional[str] = typer.Option(None, "--csv-escape", help=_CSV_ESCAPE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing selection in OUTPUT."),
    engine: str = typer.Option("local", "--engine", help=_ENGINE_HELP + " Ray: dedup, prototypes, balance on --embeddings-column."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=_ADDRESS_HELP),
) -> None:
    """Select rows offline: semantic dedup, prototype pruning, cluster balance, decontamination or score policies."""
    batch_job()
    from ._progress import progress_bar
    from ..pipeline._paths import refuse_overlap, run_reads
    from ..pipeline.select_run import run_select
    from .pack_cmd import csv_dialect
    from .select_cmd import render_select_summary
    from .pack_cmd import announce_layout

    dialect = csv_dialect(csv_delimiter, csv_quote, csv_escape)
    if model is not None:
        announce_layout(input, dict(t=text_column), input_format, True, None, dialect)

    refuse_overlap([("output", output)], run_reads(input, model=model, eval_input=eval_input), folders=True)
    again = "no manifest.json, so no usable selection: rerun the same command to select again (a selection starts over)"
    with stop_on_signals(lambda: complete_shards(output), again), progress_bar("embeddings", None) as update:
        result = run_select(
            input, output, method=method, embeddings_column=embeddings_column, model=model, text_column=text_column,
            k=k, eps=eps, order=order, target=target, keep=keep, mode=mode, group_column=group_column, alpha=alpha,
            exact_column=exact_column, eval_input=eval_input, threshold=threshold, score_column=score_column,
            policy=policy, beta=beta, lowest=lowest, seed=seed, max_points_per_centroid=max_points_per_centroid,
            shard_rows=shard_rows, input_format=input_format, csv_dialect=dialect, overwrite=overwrite, progress=lambda rows: update(rows, 0),
            engine=engine, ray_address=ray_address,
        )
    render_select_summary(result)


@app.command("check-model")
@exit_on_bad_input
def check_model(
    path: Path = typer.Argument(..., help="A local model folder (config.json + weights, as save_pretrained writes)."),
    attn: Optional[str] = typer.Option(None, "--attn", help="attn_implementation: eager, sdpa, flex_attention, flash_attention_2."),
    layout: str = typer.Option("flash,seq_idx", "--layout", help="Collator layout(s), comma-separated."),
    shape: str = typer.Option("padding_free", "--shape", help="padding_free or rows."),
    capacity: Optional[int] = typer.Option(None, "--capacity", help="Row length (needed for --shape rows)."),
) -> None:
    """Check that a model keeps packed sequences apart (exit 1 if it mixes them)."""
    from .check_cmd import run_check_model

    if not run_check_model(path, attn, layout, shape, capacity):
        raise typer.Exit(code=1)


@app.command("verify")
@exit_on_bad_input
def verify(
    output: Path = typer.Argument(..., help="A folder packwise pack wrote (with manifest.json)."),
) -> None:
    """Recompute every shard's sha256 against manifest.json (exit 1 listing each bad or missing shard)."""
    from .verify_cmd import run_verify

    if not run_verify(output):
        raise typer.Exit(code=1)


from .score_cmd import score  # noqa: E402 - its own module, registered here

app.command("score")(score)


def main() -> None:
    """The ``packwise`` console script: the app, then a fast exit (``cli._process.exit_now``)."""
    run_and_exit(app)


if __name__ == "__main__":
    main()
