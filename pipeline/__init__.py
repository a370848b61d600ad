"""Streaming preprocessing: read Arrow record batches, tokenize, pack in windows, write Parquet shards.

``read`` streams any supported input; ``pack_to_parquet`` runs the whole pipeline into an atomic,
resumable shard folder (``pack_mixture``: several sources as one weighted mixture), in this process or on Ray Data (``engine="ray"``, see ``ray_engine``); ``PackedDataset`` reads it back for training (torch is imported only
when ``PackedDataset`` / ``PackedIterableDataset`` are first used).

Example:
    >>> import tempfile, pyarrow as pa, pyarrow.parquet as pq
    >>> from packwise.pipeline import read
    >>> path = tempfile.mkdtemp() + "/t.parquet"
    >>> pq.write_table(pa.table({"text": ["a", "b"]}), path)
    >>> sum(b.num_rows for b in read(path))
    2
"""

from .pack_stage import ALGORITHMS, PackedRows, PackStats, StreamPacker
from .ray_engine import ENGINES
from .readers import FORMATS, CsvDialect, open_input, read
from .run import PackResult, dataset_lengths, pack_to_parquet
from .mix import MixSpec, Source, parse_sources
from .mix_run import pack_mixture
from .chat import CHAT_TEMPLATES, TRAIN_ON
from .tokens import TEXT_SEPARATOR, TextRows, TextSpec, TokenBatch, resolve_tokenizer, token_batches
from .tokenizer_backend import BACKENDS as TOKENIZER_BACKENDS
from .tokenizer_backend import TextEncoder
from .writer import ShardWriter

__all__ = [
    "ALGORITHMS",
    "CHAT_TEMPLATES",
    "CsvDialect",
    "ENGINES",
    "FORMATS",
    "MixSpec",
    "PackResult",
    "PackStats",
    "PackedDataset",
    "PackedIterableDataset",
    "PackedRows",
    "ShardWriter",
    "Source",
    "StreamPacker",
    "TEXT_SEPARATOR",
    "TRAIN_ON",
    "TextRows",
    "TextSpec",
    "TOKENIZER_BACKENDS",
    "TextEncoder",
    "TokenBatch",
    "dataset_lengths",
    "open_input",
    "pack_mixture",
    "pack_to_parquet",
    "parse_sources",
    "read",
    "resolve_tokenizer",
    "token_batches",
]


def __getattr__(name: str):
    if name in ("PackedDataset", "PackedIterableDataset"):
        from . import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'packwise.pipeline' has no attribute {name!r}")
