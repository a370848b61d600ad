"""The README's commands run as pasted: after ``scripts/quickstart.sh`` the README's one activation
line puts the ``packwise`` entry point on ``PATH`` (issue 23 item 6: it was not, and the README
did not say how). The line is read from the README itself and run, verbatim, by a real bash in a
folder whose ``.venv`` is the environment these tests run in."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
ACTIVATE = re.compile(r"`((?:source|\.) [^`]*activate)`")
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"  # a fresh shell's PATH: no virtual environment on it


def activation_line(readme: str) -> str:
    """The command the README gives to activate the environment before its ``packwise`` commands."""
    lines = ACTIVATE.findall(readme)
    assert lines, "README.md gives no activation line (e.g. `source .venv/bin/activate`) for its packwise commands"
    assert len(set(lines)) == 1, f"README.md gives different activation lines: {sorted(set(lines))}"
    return lines[0]


def run_pasted(line: str, command: str, root: Path) -> subprocess.CompletedProcess:
    """``line`` then ``command`` in a fresh bash at ``root``, the way a user pastes them."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PATH")}
    env["PATH"] = SYSTEM_PATH
    script = f"set -e\n{line}\n{command}\n"
    return subprocess.run(["bash", "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A folder laid out as after ``scripts/quickstart.sh``: its ``.venv`` is this test run's venv."""
    if sys.prefix == sys.base_prefix or not (Path(sys.prefix) / "bin" / "activate").is_file():
        pytest.skip(f"the tests run outside a virtual environment ({sys.prefix}); scripts/quickstart.sh makes one")
    root = tmp_path_factory.mktemp("checkout")
    (root / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    return root


def test_readme_activation_line_puts_packwise_on_path(checkout):
    line = activation_line(README.read_text(encoding="utf-8"))
    assert line == "source .venv/bin/activate"
    before = run_pasted("true", "command -v packwise", checkout)
    if shutil.which("packwise", path=SYSTEM_PATH) is None:
        assert before.returncode != 0, "packwise is on a fresh shell's PATH already: the test would prove nothing"
    after = run_pasted(line, "command -v packwise\npackwise --help", checkout)
    assert after.returncode == 0, after.stderr
    found = Path(after.stdout.splitlines()[0])
    assert found == checkout / ".venv" / "bin" / "packwise" or found.resolve() == (Path(sys.prefix) / "bin" / "packwise").resolve()
    for name in ("pack", "select", "report"):
        assert re.search(rf"\b{name}\b", after.stdout), f"`packwise --help` does not list {name}"


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda t: t.replace("`source .venv/bin/activate`", "`.venv`"), "no activation line"),
        (lambda t: t.replace("`source .venv/bin/activate`", "`source venv/bin/activate`"), "fails"),
    ],
    ids=["missing", "wrong-path"],
)
def test_a_missing_or_wrong_activation_line_is_caught(checkout, edit, problem):
    """The check above fails on a README without the line or with a line that does not activate."""
    text = edit(README.read_text(encoding="utf-8"))
    if problem == "no activation line":
        with pytest.raises(AssertionError, match="README.md gives no activation line"):
            activation_line(text)
        return
    result = run_pasted(activation_line(text), "packwise --help", checkout)
    assert result.returncode != 0 and "venv/bin/activate: No such file or directory" in result.stderr
