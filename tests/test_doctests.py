"""The examples in the package's docstrings are run: a docstring example that no longer holds fails here."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


#: the modules with docstring examples, chosen by reading the source for ``>>>`` (importing all of them at
#: collection would cost seconds); a module without examples has nothing to run here
MODULES = sorted(_module_name(p) for p in (ROOT / "lightning_post").rglob("*.py")
                 if ">>>" in p.read_text(encoding="utf-8"))
#: how many modules had examples when this was written: raise it when examples are added
MIN_MODULES = 37


def test_the_docstring_examples_are_found():
    """The source scan finds the examples: losing them (a moved package, a broken scan) fails here, not silently."""
    assert len(MODULES) >= MIN_MODULES, f"only {len(MODULES)} modules with docstring examples: {MODULES}"
    assert {"lightning_post.stats", "lightning_post.quality.stats", "lightning_post.records.instruction"} <= set(
        MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name}: '>>>' in its source, but no docstring example was found to run"
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} docstring examples failed"
