"""Every docstring example in the public modules runs and prints what it says."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import packwise


def _modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(packwise.__path__, prefix="packwise."):
        if ".tests" in info.name or ".benchmarks" in info.name or info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as err:  # an optional extra that is not installed
        pytest.skip(f"{name} needs an optional dependency: {err}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
