"""The ``packwise`` command.  Heavy modules are imported inside commands so ``--help`` is instant."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import __version__
from ._errors import exit_on_bad_input

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
    from ..pipeline.demo_data import write_demo_corpus

    rows = write_demo_corpus(output, min_chars=min_chars)
    typer.echo(f"wrote {rows} docstrings to {output}")


@app.command("report")
@exit_on_bad_input
def report(
    input: Path = typer.Argument(..., help="JSON Lines file with a text column."),
    max_tokens: int = typer.Option(..., "--max-tokens", help="Row capacity in tokens."),
    batch_size: int = typer.Option(8, "--batch-size", help="Rows per step for the padded strategies."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="A tokenizers JSON file."),
    train_tokenizer: bool = typer.Option(
        False, "--train-tokenizer", help="Train a byte-level BPE on the input itself (offline, seconds)."
    ),
    text_column: str = typer.Option("text", "--text-column", help="Column holding the text."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON here."),
    seed: int = typer.Option(0, help="Seed of the random-batches baseline."),
) -> None:
    """Padding-waste report: pad-to-max, random and bucketed batches, and every packer."""
    from ..packing import waste_report
    from .report_cmd import read_lengths, render_report, write_json

    lengths = read_lengths(input, text_column, tokenizer, train_tokenizer)
    result = waste_report(lengths, max_tokens, batch_size=batch_size, seed=seed)
    render_report(result, title=f"{input} ({len(lengths)} sequences)")
    if json_path is not None:
        write_json(result, json_path)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
