"""``packwise score``: every input row with a model's loss, as resumable Parquet shards.

Registered in ``app.py``; the option help strings of the text options are those of ``pack``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._errors import exit_on_bad_input
from ._process import batch_job

_ATTENTION_HELP = (
    "auto (per-document attention for eager/sdpa models, else the model's own packed attention), documents, "
    "or model (the model's attention reads position_ids / cu_seq_lens)."
)


@exit_on_bad_input
def score(
    input: str = typer.Argument(..., help="Parquet/JSONL/JSON-array/CSV/TXT/Arrow file, folder, glob, or save_to_disk folder."),
    output: Path = typer.Argument(..., help="Folder for the Parquet shards (every input row + loss, logprob_sum, tokens) and manifest.json."),
    model: Path = typer.Option(..., "--model", help="Local Hugging Face causal LM folder (config.json, *.safetensors, tokenizer)."),
    max_tokens: int = typer.Option(..., "--max-tokens", help="Tokens per packed forward row (at least the longest sequence)."),
    tokens_column: Optional[str] = typer.Option(None, "--tokens-column", help="Read token ids from this list<int> column instead of tokenizing."),
    labels_column: Optional[str] = typer.Option(None, "--labels-column", help="With --tokens-column: parallel labels, -100 where a token is not scored."),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="Column(s) holding the text (default text), as in pack."),
    template: Optional[str] = typer.Option(None, "--template", help="FILE.py:function rendering a whole row to text, as in pack."),
    chat_template: Optional[str] = typer.Option(None, "--chat-template", help="chatml or tokenizer, as in pack."),
    train_on: Optional[str] = typer.Option(None, "--train-on", help="With --chat-template: assistant (default: score only the assistant turns) or all."),
    add_bos: bool = typer.Option(False, "--add-bos/--no-add-bos", help="Prepend the tokenizer's BOS token to every row."),
    add_eos: bool = typer.Option(False, "--add-eos/--no-add-eos", help="Append the tokenizer's EOS token to every row."),
    input_format: Optional[str] = typer.Option(None, "--format", help="parquet, json, csv, text or arrow, when the file names do not say."),
    csv_columns: Optional[str] = typer.Option(None, "--csv-columns", help="The CSV has no header: these comma-separated column names."),
    no_header: bool = typer.Option(False, "--no-header", help="The CSV has no header row: its columns are f0, f1, ..."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16: the dtype the model is loaded in."),
    attention: str = typer.Option("auto", "--attention", help=_ATTENTION_HELP),
    shard_rows: int = typer.Option(8192, "--shard-rows", help="Rows per Parquet shard."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an output made with other settings."),
) -> None:
    """Score every row with a local causal LM (packed forwards): loss, logprob_sum, tokens (resumable)."""
    batch_job(user_code=template is not None)
    from ..pipeline import open_input
    from ..pipeline._paths import refuse_overlap, run_reads
    from ..pipeline.score_run import check_model_folder, score_to_parquet
    from ._progress import progress_bar
    from .pack_cmd import csv_header, load_template

    refuse_overlap([("output", output)], run_reads(input, template=template, model=model), folders=True)
    check_model_folder(model, dtype)  # before the progress bar: a bad folder is one line
    fn = load_template(template)
    header = csv_header(csv_columns, no_header)
    total = open_input(input, None, format=input_format, csv_header=header).num_rows
    with progress_bar("scoring", total) as update:
        result = score_to_parquet(
            input, output, model=model, max_tokens=max_tokens, tokens_column=tokens_column, labels_column=labels_column,
            text_column=text_column, template=fn, chat_template=chat_template, train_on=train_on, add_bos=add_bos,
            add_eos=add_eos, csv_header=header, format=input_format, dtype=dtype, attention=attention,
            shard_rows=shard_rows, overwrite=overwrite, progress=update,
        )  # fmt: skip
    s = result.manifest["stats"]
    if result.state == "complete":
        typer.echo(f"{output} is up to date (manifest.json with the same settings and inputs); nothing to do")
    elif result.state == "resume":
        typer.echo(f"resumed after {result.resumed_shards} complete shards")
    typer.echo(f"scored {s['scored_rows']:,} of {s['rows_in']:,} rows ({s['scored_tokens']:,} tokens) -> {output}")
