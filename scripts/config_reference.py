"""Generate docs/config_reference.md from the code: every setting of every method, data module, settings block,
training callback and command, with its type, its default and its description.

    python scripts/config_reference.py           # rewrite docs/config_reference.md
    python scripts/config_reference.py --check   # exit 1 if the file is not what the code gives now

The tables are read from the ``__init__`` signatures (``inspect.signature``: name, annotation, default) and the
descriptions from the ``Args:``/``Attributes:`` section of the docstrings (``__init__``'s, else the class's) or from
the attribute docstrings of a dataclass. The classes come from the code's own registries: ``lightning_post.__all__``
(methods and data modules), the blocks ``PostCLI.add_arguments_to_parser`` adds to the training commands,
the command registry ``lightning_post.commands``. Settings dataclasses named in an annotation (``peft``,
``optim``, ``safety_filter``, ...) get a table of their own. The output depends on nothing but the code.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import re
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "config_reference.md"

if str(ROOT) not in sys.path:  # run as a script from anywhere: import the checkout's package
    sys.path.insert(0, str(ROOT))

SECTION_HEADINGS = re.compile(r"^(Args|Arguments|Attributes|Parameters):\s*$")
OTHER_HEADINGS = re.compile(r"^(Returns|Raises|Yields|Examples?|Notes?|See Also|Warnings?):\s*$")
ENTRY = re.compile(r"^(\*{0,2}\w+)(?:\s*\([^)]*\))?:\s*(.*)$")


# ---- docstrings --------------------------------------------------------------------------------------------------

def plain(text: str) -> str:
    """Docstring markup as Markdown on one line: ``x`` -> `x`, :role:`~a.b.C` -> `C`, whitespace collapsed."""
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: f"``{m.group(1).rsplit('.', 1)[-1]}``", text)
    text = text.replace("``", "`")
    return " ".join(text.split())


def args_section(doc: Optional[str]) -> dict[str, str]:
    """``name -> description`` from a Google-style ``Args:`` (or ``Attributes:``) section; continuation lines are
    joined to their entry."""
    if not doc:
        return {}
    lines = textwrap.dedent(doc.expandtabs()).splitlines()
    # the first line of a docstring is not indented like the rest: dedent the rest alone
    lines = [lines[0].strip(), *textwrap.dedent("\n".join(lines[1:])).splitlines()]
    out: dict[str, str] = {}
    inside, indent, current = False, None, None
    for line in lines:
        stripped = line.strip()
        if SECTION_HEADINGS.match(stripped):
            inside, indent, current = True, None, None
            continue
        if not inside:
            continue
        if OTHER_HEADINGS.match(stripped):
            inside = False
            continue
        if not stripped:
            continue
        level = len(line) - len(line.lstrip())
        if indent is None:
            indent = level
        if level < indent:  # dedented below the entries: the section is over
            inside = False
            continue
        match = ENTRY.match(stripped) if level == indent else None
        if match:
            current = match.group(1).lstrip("*")
            out[current] = match.group(2)
        elif current is not None:
            out[current] += " " + stripped
    return {name: plain(text) for name, text in out.items()}


def attribute_docs(cls: type) -> dict[str, str]:
    """``field -> docstring`` of a class whose fields are followed by a string literal (dataclass style)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body
    out = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            out[node.target.id] = plain(after.value.value)
    return out


def descriptions(cls: type, owner: Optional[type] = None) -> dict[str, str]:
    """Every documented argument of ``cls``: ``__init__``'s ``Args:``, the class's ``Args:``/``Attributes:``, the
    attribute docstrings; the first source that documents a name wins. Arguments that ``__init__`` forwards to a
    parent (``**kwargs``) are documented by the parent's ``__init__`` (``owner``: the class of ``cls``'s MRO whose
    docstrings are read, ``cls`` itself by default)."""
    found: dict[str, str] = {}
    owner = owner or cls
    init = owner.__dict__.get("__init__")
    for source in (args_section(getattr(init, "__doc__", None)), args_section(owner.__doc__), attribute_docs(owner)):
        for name, text in source.items():
            found.setdefault(name, text)
    parent = forwarded_to(cls, init_owner(owner))
    if parent is not None:
        for name, text in descriptions(cls, parent).items():
            found.setdefault(name, text)
    return found


def summary(cls: type) -> str:
    """The first paragraph of the class docstring on one line; all of it where no argument has a description of
    its own (the class's text is then the only description there is)."""
    doc = inspect.getdoc(cls) or ""
    if any(descriptions(cls).get(p.name) for p in parameters(cls)):
        doc = doc.split("\n\n", 1)[0]
    return plain(doc)


# ---- signatures --------------------------------------------------------------------------------------------------

def annotation_text(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, str):  # ``from __future__ import annotations``: the source text
        return annotation
    return inspect.formatannotation(annotation)


def default_text(cls: type, name: str, default: Any) -> str:
    if dataclasses.is_dataclass(cls):  # a default_factory shows as ``<factory>`` in the signature: call it
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if name in fields and fields[name].default_factory is not dataclasses.MISSING:
            default = fields[name].default_factory()
    if default is inspect.Parameter.empty:
        return "required"
    if dataclasses.is_dataclass(default) and not isinstance(default, type) and default == type(default)():
        return f"{type(default).__name__}()"  # the block's own defaults, in its table
    text = repr(default)
    if re.search(r" at 0x[0-9a-f]+", text):  # a repr with an address would change from run to run
        raise ValueError(f"{cls.__qualname__}.{name}: the default {text} has no stable repr")
    return text


def init_owner(cls: type) -> type:
    """The class in ``cls``'s MRO whose ``__init__`` it runs."""
    return next(c for c in cls.__mro__ if "__init__" in c.__dict__)


def forwarded_to(cls: type, owner: Optional[type] = None) -> Optional[type]:
    """The parent that ``owner.__init__`` (``cls``'s own by default) hands its ``**kwargs`` to
    (``super().__init__(..., **kwargs)``): the next ``__init__`` in ``cls``'s MRO, as in Python, so that a command
    made of several groups of settings (``class Evaluate(Generates, StageCommand)``) gets all of them; or None."""
    if dataclasses.is_dataclass(cls):
        return None
    owner = owner or init_owner(cls)
    kinds = {p.kind for p in inspect.signature(owner.__init__).parameters.values()}
    if inspect.Parameter.VAR_KEYWORD not in kinds:
        return None
    mro = cls.__mro__
    parent = next(c for c in mro[mro.index(owner) + 1:] if "__init__" in c.__dict__)  # where super() leads
    return None if parent is object else parent


def super_keywords(cls: type) -> set[str]:
    """Names that ``cls.__init__`` passes by keyword in its ``super().__init__(...)`` call: fixed there, so not
    settings (as jsonargparse, which reads the same call, leaves them out of ``--help``)."""
    source = textwrap.dedent(inspect.getsource(init_owner(cls).__init__))
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "__init__"
                and isinstance(node.func.value, ast.Call) and getattr(node.func.value.func, "id", None) == "super"):
            return {kw.arg for kw in node.keywords if kw.arg is not None}
    return set()


def parameters(cls: type, owner: Optional[type] = None) -> list[inspect.Parameter]:
    """The settings of ``cls``: its ``__init__``'s arguments, and where it forwards ``*args, **kwargs`` to its
    parent's ``__init__`` (the shared method settings of ``PostTrainingModule``), the parent's after its own
    (``owner``: the class of ``cls``'s MRO whose ``__init__`` is read, ``cls``'s own by default)."""
    init = cls if dataclasses.is_dataclass(cls) else (owner or cls).__init__
    params = list(inspect.signature(init).parameters.values())
    if not dataclasses.is_dataclass(cls):
        params = params[1:]  # self
    parent = forwarded_to(cls, owner)
    if parent is None:
        return params
    own = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    fixed = super_keywords(owner or cls) | {p.name for p in own}
    return own + [p for p in parameters(cls, parent) if p.name not in fixed]


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def code(text: str) -> str:
    return f"`{cell(text)}`" if text else ""


def table(cls: type) -> str:
    docs = descriptions(cls)
    rows = ["| argument | type | default | description |", "|---|---|---|---|"]
    for p in parameters(cls):
        name = {p.VAR_POSITIONAL: f"*{p.name}", p.VAR_KEYWORD: f"**{p.name}"}.get(p.kind, p.name)
        default = "" if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) else default_text(cls, p.name, p.default)
        rows.append(f"| `{name}` | {code(annotation_text(p.annotation))} | {code(default)} | "
                    f"{cell(docs.get(p.name, ''))} |")
    return "\n".join(rows)


def source_file(cls: type) -> str:
    return Path(inspect.getsourcefile(cls)).resolve().relative_to(ROOT).as_posix()


def block(heading: str, cls: type, level: int = 3) -> str:
    where = f"`{cls.__module__}.{cls.__qualname__}` ([{source_file(cls)}](../{source_file(cls)}))"
    text = summary(cls)
    return f"{'#' * level} {heading}\n\n{where}" + (f": {text}" if text else "") + f"\n\n{table(cls)}\n"


# ---- which classes -----------------------------------------------------------------------------------------------

def exported(base: type) -> list[type]:
    import lightning_post

    classes = [getattr(lightning_post, name) for name in lightning_post.__all__ if name != "__version__"]
    return sorted((c for c in classes if isinstance(c, type) and issubclass(c, base)), key=lambda c: c.__name__)


def training_blocks() -> list[tuple[str, type]]:
    """``(key, callback class)`` of the blocks the training CLI adds (``samples``, ``export``, ...), read by running
    ``PostCLI.add_arguments_to_parser`` against a recorder."""
    from lightning_post.trainer_cli import PostCLI

    class Recorder:
        def __init__(self):
            self.blocks: list[tuple[str, type]] = []

        def add_lightning_class_args(self, cls, key, *args, **kwargs):
            self.blocks.append((key, cls))

        def __getattr__(self, name: str) -> Callable:
            return lambda *args, **kwargs: None

    recorder = Recorder()
    PostCLI.add_arguments_to_parser(None, recorder)
    return recorder.blocks


def trainer_classes(blocks: list[tuple[str, type]]) -> list[type]:
    """Classes a YAML names under ``trainer``: the callbacks of ``lightning_post.callbacks.__all__`` that are not a
    block of their own (``Checkpoint``) and the strategies of ``lightning_post.strategies``."""
    import lightning_post.callbacks as callbacks
    import lightning_post.strategies as strategies
    from lightning.pytorch.strategies import Strategy

    seen = {cls for _, cls in blocks}
    out = [getattr(callbacks, name) for name in callbacks.__all__ if getattr(callbacks, name) not in seen]
    out += sorted((c for c in vars(strategies).values() if isinstance(c, type) and issubclass(c, Strategy)
                   and c.__module__ == strategies.__name__), key=lambda c: c.__name__)
    return out


def cli_keywords() -> dict[str, Any]:
    """The literal keyword arguments ``cli_main`` passes to ``PostCLI`` (``seed_everything_default``, ...)."""
    import lightning_post.trainer_cli as trainer_cli

    tree = ast.parse(inspect.getsource(trainer_cli.cli_main))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "PostCLI":
            out = {}
            for kw in node.keywords:
                try:
                    out[kw.arg] = ast.literal_eval(kw.value)
                except ValueError:
                    continue
            return out
    raise LookupError("cli_main no longer calls PostCLI(...)")


def settings_classes(classes: list[type]) -> list[type]:
    """Dataclasses of lightning_post named in the annotations of ``classes`` (and of those, recursively)."""
    found: dict[str, type] = {}
    todo = list(classes)
    while todo:
        cls = todo.pop()
        # an argument forwarded to a parent is annotated in the parent's module
        modules = [sys.modules[c.__module__] for c in cls.__mro__ if c.__module__ in sys.modules]
        for p in parameters(cls):
            for word in re.findall(r"\b[A-Z]\w*", annotation_text(p.annotation)):
                target = next((getattr(m, word) for m in modules if isinstance(getattr(m, word, None), type)), None)
                if (isinstance(target, type) and dataclasses.is_dataclass(target)
                        and target.__module__.startswith("lightning_post") and target.__name__ not in found):
                    found[target.__name__] = target
                    todo.append(target)
    return sorted(found.values(), key=lambda c: c.__name__)


# ---- the page ----------------------------------------------------------------------------------------------------

HEADER = """\
# Config reference

<!-- Generated by scripts/config_reference.py from the code: do not edit by hand. After changing a setting, run
     `.venv/bin/python scripts/config_reference.py`; tests/test_docs.py fails while this file is stale. -->

Every setting of every method, data module, settings block, training callback and command, read from the classes'
`__init__` signatures (type and default) and their docstrings (description). `required` marks an argument without
a default; a default written `Name()` is the block's own defaults, listed in its table below. Defaults are Python
values: `None` is YAML's `null`, `True`/`False` are `true`/`false`.

In a training YAML (`lightning-post fit|validate|test|predict --config ...`) the method's settings are under
`model.init_args`, the data module's under `data.init_args`, a callback block's under its key (`export.dirpath`);
the other commands take `--name value` or the same names as keys of their `--config` YAML.
`lightning-post <command> --print_config` prints every key with the value it would use.
"""


@dataclasses.dataclass
class Reference:
    """The classes the page documents, grouped as on the page."""

    methods: list[type]
    datamodules: list[type]
    settings: list[type]
    blocks: list[tuple[str, type]]
    trainer: list[type]
    logger: type
    commands: list[tuple[str, type]]
    trainer_defaults: dict[str, Any]

    def classes(self) -> list[type]:
        return [*self.methods, *self.datamodules, *self.settings, *(c for _, c in self.blocks), *self.trainer,
                self.logger, *(c for _, c in self.commands)]


def reference() -> Reference:
    """Collect the classes from the code's registries."""
    import lightning as L

    from lightning_post.commands import command_classes
    from lightning_post.tracking import MLflowLogger
    from lightning_post.trainer_cli import TRAINER_DEFAULTS

    methods, datamodules = exported(L.LightningModule), exported(L.LightningDataModule)
    blocks = training_blocks()
    trainer = trainer_classes(blocks)
    classes = command_classes()  # the registry's: the tools, then the data commands
    commands = [(f"lightning-post {name}", cls) for name, cls in classes.items() if name != "pipeline"]
    commands.append(("lightning-post pipeline", classes["pipeline"]))
    settings = settings_classes([*methods, *datamodules, *(c for _, c in blocks), *trainer, *(c for _, c in commands)])
    trainer_defaults = {**TRAINER_DEFAULTS, "seed_everything": cli_keywords().get("seed_everything_default")}
    return Reference(methods, datamodules, settings, blocks, trainer, MLflowLogger, commands, trainer_defaults)


def defaults() -> dict[str, list[tuple[str, Any]]]:
    """``argument -> [(class name, default value), ...]`` over every documented class (``inspect.Parameter.empty``
    for a required argument), plus the trainer defaults under ``Trainer``: what a page may state as a default."""
    out: dict[str, list[tuple[str, Any]]] = {}
    ref = reference()
    for cls in ref.classes():
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        for p in parameters(cls):
            value = p.default
            if p.name in fields and fields[p.name].default_factory is not dataclasses.MISSING:
                value = fields[p.name].default_factory()
            out.setdefault(p.name, []).append((cls.__name__, value))
    for key, value in ref.trainer_defaults.items():
        out.setdefault(key, []).append(("Trainer", value))
    return out


def render() -> str:
    """The whole page, as the code gives it now."""
    ref = reference()

    def names(classes: list[type]) -> str:
        return ", ".join(f"`{c.__name__}`" for c in classes)

    parts = [HEADER]
    parts.append("## Contents\n\n" + "\n".join([
        f"- Training commands: [methods](#methods-model) ({names(ref.methods)}), "
        f"[data modules](#data-modules-data) ({names(ref.datamodules)}), "
        f"[settings blocks](#settings-blocks) ({names(ref.settings)}), "
        "[callback blocks](#callback-blocks) (" + ", ".join(f"`{k}`" for k, _ in ref.blocks) + "), "
        f"[trainer defaults](#trainer-defaults) (and {names(ref.trainer)})",
        "- Other commands: " + ", ".join(f"`{name}`" for name, _ in ref.commands),
    ]) + "\n")
    parts.append("## Methods (`model`)\n\n`model.class_path: lightning_post.<Name>`; the settings go under "
                 "`model.init_args`.\n")
    parts += [block(f"`{c.__name__}`", c) for c in ref.methods]
    parts.append("## Data modules (`data`)\n\n`data.class_path: lightning_post.<Name>`; the settings go under "
                 "`data.init_args`. `data.init_args.tokenizer` is linked to `model.init_args.model_name_or_path` "
                 "(set it there).\n")
    parts += [block(f"`{c.__name__}`", c) for c in ref.datamodules]
    parts.append("## Settings blocks\n\nNested settings named by the arguments above (`peft`, `optim`, "
                 "`safety_filter`, `quality_gate`, `tasks`, ...): a mapping with these keys.\n")
    parts += [block(f"`{c.__name__}`", c) for c in ref.settings]
    parts.append("## Callback blocks\n\nTop-level keys of a training YAML (and `--<key>.<setting>` flags), each a "
                 "callback the training commands add.\n")
    parts += [block(f"`{key}`", cls) for key, cls in ref.blocks]
    rows = "\n".join(f"| `{k}` | {code(repr(v))} |" for k, v in ref.trainer_defaults.items())
    parts.append("## Trainer defaults\n\n`trainer` takes any `lightning.Trainer` argument; lightning-post changes "
                 "these defaults (`lightning_post.trainer_cli.TRAINER_DEFAULTS`) and that of the top-level "
                 f"`seed_everything` (`cli_main`):\n\n| key | default |\n|---|---|\n{rows}\n")
    parts.append(block("The logger: `MLflowLogger`", ref.logger, level=3))
    parts += [block(f"`trainer`: `{c.__name__}`", c) for c in ref.trainer]
    parts.append("## Commands\n")
    parts += [block(f"`{name}`", cls) for name, cls in ref.commands]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/config_reference.md is stale")
    args = parser.parse_args(argv)
    text = render()
    current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
    if args.check:
        if current == text:
            return 0
        diff = difflib.unified_diff(current.splitlines(), text.splitlines(), str(OUTPUT), "generated", lineterm="")
        print("\n".join(list(diff)[:60]), file=sys.stderr)
        print(f"{OUTPUT.relative_to(ROOT)} is stale: run python scripts/config_reference.py", file=sys.stderr)
        return 1
    if current != text:
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
