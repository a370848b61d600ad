"""The CLI's process set-up and fast exit (cli/_process.py): each choice, in a fresh process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest


def _python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("user_code", [False, True])
def test_batch_job_picks_the_pool_and_turns_the_collector_off_for_kernel_jobs(user_code):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "ARROW_DEFAULT_MEMORY_POOL")}
    out = _python(f"""
        import gc, json, os
        from packwise.cli._process import batch_job
        batch_job(kernels_only=True, user_code={user_code})
        import pyarrow as pa
        print(json.dumps([pa.default_memory_pool().backend_name, gc.isenabled(), os.environ["OPENBLAS_NUM_THREADS"]]))
    """, env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    pool, collecting, blas_threads = json.loads(out.stdout)
    assert pool in ("jemalloc", "system") and collecting is user_code and blas_threads == "1"


def test_batch_job_keeps_the_users_pool_and_the_collector_for_other_jobs():
    env = {**{k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}, "ARROW_DEFAULT_MEMORY_POOL": "mimalloc"}
    out = _python("""
        import gc, json, os
        from packwise.cli._process import batch_job
        batch_job()
        import pyarrow as pa
        print(json.dumps([pa.default_memory_pool().backend_name, gc.isenabled(), "OPENBLAS_NUM_THREADS" in os.environ]))
    """, env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ["mimalloc", True, False]


@pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="scipy is not installed: numba never imports it")
def test_numba_without_blas_leaves_scipy_importable():
    out = _python("""
        import json, sys
        from packwise.cli._process import import_numba_without_blas
        import_numba_without_blas()
        import numba.np.arraymath as am
        before = ["scipy.linalg" in sys.modules, am._HAVE_BLAS]
        import scipy.linalg.cython_blas, scipy.linalg
        print(json.dumps(before + [scipy.linalg.cython_blas.__name__]))
    """)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [False, False, "scipy.linalg.cython_blas"]
    # the packing kernels load and run without BLAS
    out = _python("""
        import numpy as np
        from packwise.cli._process import import_numba_without_blas
        import_numba_without_blas()
        from packwise.packing import pack
        print(pack(np.array([3, 2, 2, 1]), 4, algorithm="bfd").offsets.tolist())
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 2, 4]"


def test_numba_without_blas_does_nothing_once_numba_is_imported():
    out = _python("""
        import numba, numba.np.arraymath as am
        from packwise.cli._process import import_numba_without_blas
        import_numba_without_blas()
        print(am._HAVE_BLAS == (__import__("importlib").util.find_spec("scipy") is not None))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize(
    "code, status, stderr",
    [("None", 0, ""), ("0", 0, ""), ("3", 3, ""), ("'stopped: disk full'", 1, "stopped: disk full\n")],
)
def test_exit_now_keeps_sys_exit_meaning_and_runs_atexit_and_flushes(tmp_path, code, status, stderr):
    marker = tmp_path / "atexit.txt"
    out = _python(f"""
        import atexit, sys
        from packwise.cli._process import exit_now
        atexit.register(lambda: open({str(marker)!r}, "w").write("ran"))
        sys.stdout.write("no newline, still buffered")
        exit_now({code})
    """)
    assert (out.returncode, out.stdout, out.stderr) == (status, "no newline, still buffered", stderr)
    assert marker.read_text() == "ran"


def test_exit_now_waits_for_a_running_thread(tmp_path):
    marker = tmp_path / "thread.txt"
    out = _python(f"""
        import threading, time
        from packwise.cli._process import exit_now
        def late():
            time.sleep(0.5)
            open({str(marker)!r}, "w").write("done")
        threading.Thread(target=late).start()
        exit_now(0)
    """)
    assert out.returncode == 0, out.stderr
    assert marker.read_text() == "done"


def test_console_script_exit_codes_and_template_atexit(tmp_path):
    """Through ``python -m packwise.cli.app``: 0 with a template's atexit handler run, 2 with the message."""
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"a": f"row {i} " * (i + 1)}) + "\n" for i in range(40)))
    marker = tmp_path / "template-atexit.txt"
    template = tmp_path / "tpl.py"
    template.write_text(f"import atexit\natexit.register(lambda: open({str(marker)!r}, 'w').write('ran'))\ndef template(row):\n    return row['a']\n")
    cmd = [sys.executable, "-m", "packwise.cli.app", "pack", str(src), str(tmp_path / "out"), "--max-tokens", "256"]
    ok = subprocess.run(cmd + ["--train-tokenizer", "--template", f"{template}:template"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "packed rows" in ok.stdout and marker.read_text() == "ran"
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["stats"]["rows_in"] == 40
    bad = subprocess.run(cmd + ["--train-tokenizer", "--seed", "-1"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--seed -1: must be an integer >= 0" in bad.stderr, bad.stderr
