"""The manual stays true to the code.

- README.md is at most 12 KiB and links every page of docs/;
- every relative link of README.md and docs/*.md points to a file that exists (anchors are not checked);
- docs/config_reference.md is what scripts/config_reference.py generates from the code now, so a changed default,
  type or description fails here until the page is regenerated;
- every default a page states in prose (`name` (default `value`), `name`, default `value`, `name: value`, the
  default, `name` defaults to `value`) or in a table with a "default" column is the code's default. The README
  states none: it has no table of defaults and links the generated reference instead, so its defaults cannot drift.

Nothing here loads a model; the generator imports the package's classes and reads their signatures.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
GENERATED = DOCS / "config_reference.md"


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


@pytest.fixture(scope="module")
def generator():
    """scripts/config_reference.py as a module (it is a script, not part of the package)."""
    name = "config_reference_script"
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\]\n]|\n(?!\n))*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)


def prose(text: str) -> str:
    """The text without fenced blocks, line count kept (links inside code are examples, not links)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def relative_links(page: Path) -> list[tuple[int, str]]:
    """``(line, target)`` of every link of ``page`` that names a file of this repository."""
    text = INLINE_CODE.sub(lambda m: " " * len(m.group(0)), prose(page.read_text(encoding="utf-8")))
    found = []
    for pattern in (LINK, REFERENCE_LINK):
        for m in pattern.finditer(text):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):  # http:, mailto:, anchors
                continue
            found.append((text[: m.start()].count("\n") + 1, target))
    return found


def link_problems(page: Path) -> list[str]:
    where = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page.name
    problems = []
    for line, target in relative_links(page):
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not (page.parent / path).exists():
            problems.append(f"{where}:{line}: {target} does not exist")
    return problems


# ---- (a) size and index --------------------------------------------------------------------------------------------

def test_the_readme_is_at_most_12_kib():
    size = len(README.read_bytes())
    assert size <= 12 * 1024, f"README.md is {size} bytes; move detail to docs/ (limit 12288)"


def test_the_readme_links_every_page_of_the_manual():
    linked = {(README.parent / t.split("#", 1)[0]).resolve() for _, t in relative_links(README)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


# ---- (b) links -----------------------------------------------------------------------------------------------------

def test_every_relative_link_points_to_a_file():
    checked = {str(page.relative_to(ROOT)): len(relative_links(page)) for page in pages()}
    assert checked["README.md"] >= len(list(DOCS.glob("*.md"))), checked  # the README links at least every page
    problems = [p for page in pages() for p in link_problems(page)]
    assert not problems, "\n".join(problems)


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("x")
    page.write_text("[ok](there.md#part) [web](https://example.org) [anchor](#top)\n"
                    "```\n[in code](nowhere.md)\n```\n`[inline](nowhere.md)`\n\n[broken](missing.md)\n"
                    "[ref]: also_missing.py\n")
    assert [t for _, t in relative_links(page)] == ["there.md#part", "missing.md", "also_missing.py"]
    assert link_problems(page) == ["page.md:7: missing.md does not exist", "page.md:8: also_missing.py does not exist"]


# ---- (c) the generated config reference ----------------------------------------------------------------------------

def test_the_config_reference_is_generated_from_the_code_as_it_is(generator):
    page, code = GENERATED.read_text(encoding="utf-8"), generator.render()
    diff = difflib.unified_diff(page.splitlines(), code.splitlines(), "docs/config_reference.md", "the code now",
                                lineterm="", n=0)
    assert page == code, ("docs/config_reference.md is stale: run .venv/bin/python scripts/config_reference.py\n"
                          + "\n".join(list(diff)[:40]))


def test_a_changed_default_makes_the_reference_stale(generator, monkeypatch):
    """The planted bug: DPOModule's beta default changed (in its signature only) -> the page no longer matches."""
    from lightning_post import DPOModule

    signature = inspect.signature(DPOModule.__init__)
    assert signature.parameters["beta"].default == 0.1
    changed = signature.replace(parameters=[p.replace(default=0.25) if p.name == "beta" else p
                                            for p in signature.parameters.values()])
    monkeypatch.setattr(DPOModule.__init__, "__signature__", changed, raising=False)
    text = generator.render()
    assert text != GENERATED.read_text(encoding="utf-8")
    assert "| `beta` | `float` | `0.25` |" in text


def test_the_reference_documents_every_argument(generator):
    """Every argument of every documented class has a description, except those of the classes listed here, whose
    text stands above their table instead."""
    undocumented = {"MLflowLogger", "CurriculumStage"}
    missing = []
    for cls in generator.reference().classes():
        docs = generator.descriptions(cls)
        missing += [f"{cls.__name__}.{p.name}" for p in generator.parameters(cls)
                    if not docs.get(p.name) and cls.__name__ not in undocumented]
    assert not missing, f"arguments without an Args: line: {missing}"


def test_the_args_section_parser(generator):
    doc = """Summary.

    Args:
        alpha: first line
            continued.
        beta (int): other.

    Returns:
        nothing: not an argument.
    """
    assert generator.args_section(doc) == {"alpha": "first line continued.", "beta": "other."}
    assert generator.plain(":data:`~lightning_post.x.JAILBREAK` and ``y``") == "`JAILBREAK` and `y`"


# ---- (d) defaults stated in prose ----------------------------------------------------------------------------------

NAME = r"(?:--)?(?P<name>[A-Za-z_][\w.]*)"
VALUE = r"(?P<value>[^`\n]*)"
STATEMENTS = [
    re.compile(rf"`{NAME}`\s*[(,]\s*default\s+`{VALUE}`"),  # `name` (default `value`...  /  `name`, default `value`
    re.compile(rf"`{NAME}:\s*{VALUE}`\s*(?:,\s*the default\b|\(\s*(?:the\s+)?default\b)"),  # `name: value`, the default
    re.compile(rf"`{NAME}`\s+defaults\s+to\s+`{VALUE}`"),  # `name` defaults to `value`
]
TABLE_ROW = re.compile(r"^\|.*\|\s*$")


def stated_defaults(text: str) -> list[tuple[int, str, str]]:
    """``(line, name, value)`` of every default ``text`` states, in prose or in a table with a "default" column."""
    text = prose(text)
    flat = text.replace("\n", " ")
    out = []
    for pattern in STATEMENTS:
        for m in pattern.finditer(flat):
            out.append((text[: m.start()].count("\n") + 1, m.group("name"), m.group("value").strip()))
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if TABLE_ROW.match(line) and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|\s*$", lines[i + 1]):
            header = [c.strip().lower() for c in line.strip().strip("|").split("|")]
            if "default" not in header:
                continue
            column = header.index("default")
            for j in range(i + 2, len(lines)):
                if not TABLE_ROW.match(lines[j]):
                    break
                cells = [c.strip() for c in re.split(r"(?<!\\)\|", lines[j].strip().strip("|"))]
                names = re.findall(r"`([^`]+)`", cells[0])
                cell = cells[column] if column < len(cells) else ""
                values = re.findall(r"`([^`]*)`", cell)
                if not names or not cell:  # no setting named, or no default stated
                    continue
                if len(values) == len(names):  # `a`, `b` | `1`, `2`
                    out += [(j + 1, n, v) for n, v in zip(names, values)]
                elif len(values) == 1:  # `a` / `b` | `null`
                    out += [(j + 1, n, values[0]) for n in names]
                else:  # checked as written
                    out += [(j + 1, n, cell) for n in names]
    return sorted(out)


def matches(stated: str, value: Any) -> bool:
    """Whether ``stated`` (as written on a page: YAML or Python) is ``value``."""
    if value is inspect.Parameter.empty:
        return stated == "required"
    if stated in {repr(value), str(value)}:
        return True
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return stated == f"{type(value).__name__}()" and value == type(value)()
    try:
        parsed = yaml.safe_load(stated)
    except yaml.YAMLError:
        return False
    if isinstance(parsed, str):
        try:
            parsed = float(parsed)  # YAML 1.1 reads 2e-4 as a string
        except ValueError:
            return parsed == value
    if isinstance(parsed, bool) or isinstance(value, bool):
        return parsed is value
    return parsed == value


def default_problems(text: str, known: dict[str, list[tuple[str, Any]]], where: str) -> list[str]:
    problems = []
    for line, name, stated in stated_defaults(text):
        key = name.rsplit(".", 1)[-1]
        if key not in known:
            problems.append(f"{where}:{line}: `{name}` has a stated default `{stated}`, but no documented class has "
                            f"an argument {key!r}")
        elif not any(matches(stated, value) for _, value in known[key]):
            actual = sorted({f"{cls}: {value!r}" for cls, value in known[key]})
            problems.append(f"{where}:{line}: `{name}` default `{stated}` is not the code's ({'; '.join(actual)})")
    return problems


def test_the_readme_has_no_table_of_defaults():
    """The README links the generated reference instead: a default copied into it would drift (the old table said
    attn_implementation defaults to sdpa; the code says sdpa_varlen)."""
    text = prose(README.read_text(encoding="utf-8"))
    headers = [line for line in text.splitlines() if TABLE_ROW.match(line) and "default" in line.lower()]
    assert not headers, f"README.md has a table with defaults: {headers}; link docs/config_reference.md instead"


def test_every_stated_default_is_the_codes(generator):
    known = generator.defaults()
    statements, problems = 0, []
    for page in pages():
        if page == GENERATED:  # generated from the code
            continue
        text = page.read_text(encoding="utf-8")
        statements += len(stated_defaults(text))
        problems += default_problems(text, known, str(page.relative_to(ROOT)))
    assert statements >= 5, f"only {statements} stated defaults found: the extraction patterns have stopped matching"
    assert not problems, "\n".join(problems)


def test_a_wrong_stated_default_is_caught(generator):
    """The old README's drift, in each form a page may use, is refused; the true defaults pass."""
    known = generator.defaults()
    wrong = ("`attn_implementation` (default `sdpa`)\n"
             "`attn_implementation: sdpa`, the default\n"
             "`model.init_args.attn_implementation` defaults to `sdpa`\n"
             "| key | default | meaning |\n|---|---|---|\n| `attn_implementation` | `sdpa` | attention |\n"
             "`no_such_setting` (default `1`)\n")
    found = default_problems(wrong, known, "page")
    assert [p.split(":", 2)[1] for p in found] == ["1", "2", "3", "6", "7"], found
    right = ("`attn_implementation` (default `sdpa_varlen`), `lr` (default `2e-4`), `peft` (default `null`),\n"
             "`shuffle`, default `true`; `optim` (default `OptimSettings()`); `rules` (default `[pii]`)\n"
             "| key | default |\n|---|---|\n| `batch_size`, `eval_batch_size` | `8`, `8` |\n"
             "| `val_files` / `test_files` | `null` |\n| `optim` | |\n")
    assert default_problems(right, known, "page") == []
    assert len(stated_defaults(right)) == 10
