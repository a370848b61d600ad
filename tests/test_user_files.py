"""Issue 22, "never destroy what the user owns": no command writes over, deletes or writes into
what it reads, ``--overwrite`` removes only what a previous packwise run wrote, and the lock never
follows a symlink.  Every case runs the real CLI on real files, expects exit 2 with a message naming
the paths, and checks the user's files are byte-identical afterwards."""

from __future__ import annotations

import json
import os
import re
import sysconfig

import pyarrow.parquet as pq
import pytest
from test_cli_failures import _fails, token_parquet  # noqa: F401  (token_parquet is a fixture)
from test_cli_pack import invoke

from packwise.pipeline.lock import LOCK

PACK = ("--max-tokens", 1024, "--tokens-column", "input_ids", "--oversize", "split", "--shard-rows", 64)
SELECT = ("--method", "score", "--score-column", "score", "--keep", 0.5)
NEVER = "packwise never writes over what it reads"


def _tree(root) -> dict:
    """Every entry under ``root`` (itself included): a symlink's target, a file's bytes, or a folder."""
    out = {}
    for here, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            p = os.path.join(here, name)
            rel = os.path.relpath(p, root)
            out[rel] = ("link", os.readlink(p)) if os.path.islink(p) else ("dir",) if os.path.isdir(p) else open(p, "rb").read()
    return out


def _folder_with(folder, src, name: str = "c4.parquet"):
    """A new folder holding a copy of the input ``src``."""
    folder.mkdir()
    (folder / name).write_bytes(src.read_bytes())
    return folder


def _linked_input(tmp_path, src):
    """An input folder and an output path that is a symlink to it."""
    data = _folder_with(tmp_path / "in", src)
    out = tmp_path / "out"
    out.symlink_to(data)
    return data, out


# --- item 2: an output that is, holds or lies inside an input -----------------------------------
def test_report_json_onto_its_input_exits_2_and_leaves_the_input_byte_identical(tmp_path, token_parquet):
    src, ids = token_parquet
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"input_ids": list(map(int, r))}) + "\n" for r in ids))  # ~0.5 MB of real token ids
    before = data.read_bytes()
    _fails(invoke("report", data, "--max-tokens", 1024, "--tokens-column", "input_ids", "--json", data),
           f"--json {data}: is the input {data}; {NEVER}: choose a --json path outside the inputs")  # fmt: skip
    link = tmp_path / "report.json"
    link.symlink_to(data)  # a symlink to the input is the input
    _fails(invoke("report", data, "--max-tokens", 1024, "--tokens-column", "input_ids", "--json", link),
           f"--json {link}: is the input {data} (both resolve to {data});")  # fmt: skip
    assert data.read_bytes() == before and os.readlink(link) == str(data)


def test_report_outputs_onto_the_tokenizer_or_into_the_input_folder_exit_2(tmp_path, token_parquet, tok_file):  # noqa: F811
    src, _ = token_parquet
    folder = _folder_with(tmp_path / "data", src)
    tok = tmp_path / "tok.json"
    tok.write_bytes(tok_file.read_bytes())
    before = (_tree(folder), tok.read_bytes())
    _fails(invoke("report", folder, "--max-tokens", 1024, "--tokens-column", "input_ids", "--plot", folder / "waste.png"),
           f"--plot {folder / 'waste.png'}: lies inside the input {folder}; {NEVER}")  # fmt: skip
    glob = str(folder / "**" / "*.parquet")  # a report beside the files a glob reads, matched by none of them, is fine
    ok = invoke("report", glob, "--max-tokens", 1024, "--tokens-column", "input_ids", "--json", folder / "waste.json")
    assert ok.exit_code == 0, ok.output
    (folder / "waste.json").unlink()
    _fails(invoke("report", glob, "--max-tokens", 1024, "--tokens-column", "input_ids", "--json", folder / "waste.parquet"),
           f"--json {folder / 'waste.parquet'}: lies inside the input {glob} (the glob matches what this run writes there)")  # fmt: skip
    _fails(invoke("report", src, "--max-tokens", 1024, "--tokenizer", tok, "--text-column", "text", "--json", tok),
           f"--json {tok}: is the --tokenizer {tok}; {NEVER}")  # fmt: skip
    assert (_tree(folder), tok.read_bytes()) == before


def test_pack_and_select_outputs_holding_what_they_read_exit_2(tmp_path, token_parquet):  # noqa: F811
    src, _ = token_parquet
    out = _folder_with(tmp_path / "out", src, "in.parquet")
    (out / "tmpl.py").write_text("def template(row):\n    return row['text']\n")
    before = _tree(out)
    _fails(invoke("pack", src, out, *PACK[:2], "--oversize", "split", "--train-tokenizer", "--template", f"{out / 'tmpl.py'}:template"),
           f"output: {out} holds the --template {out / 'tmpl.py'}; {NEVER}: choose an output folder outside the input")  # fmt: skip
    _fails(invoke("select", out / "in.parquet", out, *SELECT), f"output: {out} holds the input {out / 'in.parquet'}; {NEVER}")
    _fails(invoke("select", src, out, "--method", "decontaminate", "--embeddings-column", "e", "--eval", out / "in.parquet"),
           f"output: {out} holds the --eval input {out / 'in.parquet'}; {NEVER}")  # fmt: skip
    assert _tree(out) == before


def test_demo_data_onto_the_standard_library_it_reads_exits_2():
    stdlib = sysconfig.get_paths()["stdlib"]  # the folder itself: the original code failed late there, harmlessly
    before = sorted(os.listdir(stdlib))
    _fails(invoke("demo-data", stdlib), f"output: {stdlib} is the standard library {stdlib}", NEVER)
    assert sorted(os.listdir(stdlib)) == before


# --- item 3: --overwrite deletes only what a previous run wrote --------------------------------
def test_pack_overwrite_never_deletes_the_runs_own_input_or_tokenizer(tmp_path, token_parquet, tok_file):  # noqa: F811
    src, _ = token_parquet
    out = tmp_path / "out"
    assert invoke("pack", src, out, *PACK).exit_code == 0
    shard = out / "shard-00001.parquet"
    before = _tree(out)
    _fails(invoke("pack", shard, out, *PACK, "--overwrite"), f"output: {out} holds the input {shard}; {NEVER}")
    (out / "tokenizer.json").write_bytes(tok_file.read_bytes())
    before = _tree(out)
    _fails(invoke("pack", src, out, "--max-tokens", 512, "--tokenizer", out / "tokenizer.json", "--text-column", "text", "--overwrite"),
           f"output: {out} holds the --tokenizer {out / 'tokenizer.json'}; {NEVER}")  # fmt: skip
    assert _tree(out) == before


def test_pack_overwrite_keeps_files_packwise_did_not_write_and_names_those_in_the_way(tmp_path, token_parquet, tok_file):  # noqa: F811
    src, _ = token_parquet
    out = tmp_path / "out"
    assert invoke("pack", src, out, *PACK).exit_code == 0
    old = [s["file"] for s in json.loads((out / "manifest.json").read_text())["shards"]]
    mine = {"notes.txt": b"my notes", "tokenizer.json": tok_file.read_bytes(), ".draft.tmp": b"mine too"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    done = invoke("pack", src, out, *PACK[:-1], 128, "--overwrite")  # other settings: the old shards go, mine stay
    assert done.exit_code == 0, done.output
    assert {n: (out / n).read_bytes() for n in mine} == mine
    new = json.loads((out / "manifest.json").read_text())
    assert (len(old), len(new["shards"]), new["shard_rows"]) == (4, 2, 128)  # shards 2 and 3 of the old run are gone
    assert sorted(p.name for p in out.glob("shard-*.parquet")) == [s["file"] for s in new["shards"]] == old[:2]
    stray = out / "shard-00042.parquet"
    stray.write_bytes(src.read_bytes())  # a Parquet file of the user's under a shard's name: no manifest lists it
    before = _tree(out)
    in_the_way = f"output: {stray} is in the way: no packwise manifest in {out} lists it, so packwise did not write it and leaves it alone"
    _fails(invoke("pack", src, out, *PACK, "--overwrite"), in_the_way)
    assert _tree(out) == before
    stray.unlink()
    before = _tree(out)  # --train-tokenizer would save over the user's tokenizer.json
    _fails(invoke("pack", src, out, *PACK[:2], "--train-tokenizer", "--text-column", "text", "--overwrite"),
           f"output: {out / 'tokenizer.json'} is in the way: no packwise manifest in {out} lists it")  # fmt: skip
    assert _tree(out) == before


@pytest.mark.parametrize("command", ["pack", "select"])
def test_overwrite_leaves_a_manifest_json_packwise_did_not_write(tmp_path, token_parquet, command):  # noqa: F811
    src, _ = token_parquet
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"name": "my project", "files": 3}')
    before = _tree(out)
    options = PACK if command == "pack" else SELECT
    kind = "packwise manifest" if command == "pack" else "packwise selection manifest"
    _fails(invoke(command, src, out, *options, "--overwrite"),
           f"output: {out / 'manifest.json'} is in the way: it is not a {kind}, so packwise")  # fmt: skip
    assert _tree(out) == before


def test_select_overwrite_keeps_files_packwise_did_not_write(tmp_path, token_parquet):  # noqa: F811
    src, _ = token_parquet
    out = tmp_path / "sel"
    assert invoke("select", src, out, *SELECT).exit_code == 0
    (out / ".draft.tmp").write_bytes(b"the user's")
    again = invoke("select", src, out, *SELECT[:-1], 0.25, "--overwrite")
    assert again.exit_code == 0, again.output
    assert (out / ".draft.tmp").read_bytes() == b"the user's"
    assert sum(pq.read_metadata(p).num_rows for p in out.glob("shard-*.parquet")) == json.loads((out / "manifest.json").read_text())["rows_out"]
    stray = out / "shard-00007.parquet"
    stray.write_bytes(src.read_bytes())
    before = _tree(out)
    _fails(invoke("select", src, out, *SELECT, "--overwrite"), f"output: {stray} is in the way: no packwise manifest in {out} lists it")
    assert _tree(out) == before


def test_a_select_killed_before_its_manifest_reruns_without_overwrite(tmp_path, token_parquet):  # noqa: F811
    """The shards a killed select run published carry packwise's footer tag: the rerun replaces
    them (no --overwrite needed) and ends byte-identical; an untagged shard stays in the way."""
    src, _ = token_parquet
    clean, out = tmp_path / "clean", tmp_path / "sel"
    assert invoke("select", src, clean, *SELECT).exit_code == 0
    assert invoke("select", src, out, *SELECT).exit_code == 0
    (out / "manifest.json").unlink()  # as a kill after the shards and before the manifest leaves it
    (out / "timings.json").unlink()
    again = invoke("select", src, out, *SELECT)
    assert again.exit_code == 0, again.output
    mine, want = _tree(out), _tree(clean)
    mine.pop("timings.json"), want.pop("timings.json")
    assert mine == want
    (out / "manifest.json").unlink()
    (out / "timings.json").unlink()
    stray = out / "shard-00000.parquet"
    pq.write_table(pq.read_table(stray).replace_schema_metadata(None), stray)  # a shard packwise did not tag
    before = _tree(out)
    _fails(invoke("select", src, out, *SELECT), f"output: {stray} is in the way: no packwise manifest in {out} lists it")
    assert _tree(out) == before


# --- item 4: a symlinked output resolving to the input -----------------------------------------
@pytest.mark.parametrize("command", ["pack", "select"])
def test_an_output_symlinked_to_the_input_folder_exits_2_naming_both(tmp_path, token_parquet, command):  # noqa: F811
    src, _ = token_parquet
    data, out = _linked_input(tmp_path, src)
    before = _tree(data)
    options = PACK if command == "pack" else SELECT
    _fails(invoke(command, data, out, *options), f"output: {out} is the input {data} (both resolve to {data}); {NEVER}")
    assert _tree(data) == before and os.readlink(out) == str(data)


# --- item 6: the lock never follows a symlink ---------------------------------------------------
@pytest.mark.parametrize("kind", ["symlink", "hard link", "fifo"])
def test_a_lock_that_is_not_a_plain_file_of_ours_exits_2_and_the_victim_is_untouched(tmp_path, token_parquet, kind):  # noqa: F811
    src, _ = token_parquet
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    out = tmp_path / "out"
    out.mkdir()
    lock = out / LOCK
    if kind == "symlink":
        lock.symlink_to(victim)
        says = "a symlink"
    elif kind == "hard link":
        os.link(victim, lock)
        says = "a hard link to another file"
    else:
        os.mkfifo(lock)
        says = "not a regular file"
    for command, options in (("pack", PACK), ("select", SELECT)):
        _fails(invoke(command, src, out, *options), f"output: the lock {lock} is {says}; packwise writes its pid only into a plain file of its own: remove {lock}")
        assert victim.read_bytes() == b"precious\n" and {p.name for p in out.iterdir()} == {LOCK}


def test_the_python_api_refuses_the_same_outputs(tmp_path, token_parquet, tok_file):  # noqa: F811
    from packwise.pipeline import pack_to_parquet
    from packwise.pipeline.select_run import run_select

    src, _ = token_parquet
    data, out = _linked_input(tmp_path, src)
    before = _tree(data)
    with pytest.raises(ValueError, match="^" + re.escape(f"output: {out} is the input {data} (both resolve to {data}); {NEVER}")):
        pack_to_parquet(str(data), out, max_tokens=1024, tokens_column="input_ids")
    assert _tree(data) == before
    tok = data / "tok.json"
    tok.write_bytes(tok_file.read_bytes())
    before = _tree(data)
    with pytest.raises(ValueError, match="^" + re.escape(f"output: {data} holds the --tokenizer {tok}; {NEVER}")):
        pack_to_parquet(str(src), data, max_tokens=1024, tokenizer=tok)
    with pytest.raises(ValueError, match="^" + re.escape(f"output: {data} holds the --eval input {tok}; {NEVER}")):
        run_select(str(src), data, method="decontaminate", embeddings_column="e", eval_input=str(tok))
    assert _tree(data) == before
