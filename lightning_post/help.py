"""What the parsers of every command show a user: ``--help`` text without the Sphinx markup of our docstrings
(````state.json```` reads ``state.json``, ``:class:`Stage``` reads ``Stage``), and a bad setting as one line with the
type or values it accepts, instead of the usage block and jsonargparse's nested report.
"""

from __future__ import annotations

import difflib
import re
import sys

from jsonargparse import ArgumentParser, DefaultHelpFormatter

_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_LITERAL = re.compile(r"``([^`]+)``")
_LINK = re.compile(r"`([^`<]+?)\s*<([^>]+)>`__?")


def plain(text: str) -> str:
    """Docstring text as a terminal shows it.

    >>> plain("writes ``state.json``; see :class:`~lightning_post.pipeline.Stage` and :func:`run`")
    'writes state.json; see Stage and run'
    >>> plain("see `the notes <https://x.org/a.html#id3>`_.")
    'see the notes (https://x.org/a.html#id3).'
    """
    def role(m: re.Match) -> str:
        target = m.group(1).strip()
        return target.rsplit(".", 1)[-1] if m.group(0).split("`", 1)[1].startswith("~") else target

    return _LINK.sub(r"\1 (\2)", _LITERAL.sub(r"\1", _ROLE.sub(role, text)))


class PlainHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help formatter (types and defaults shown) with the markup removed from descriptions and the
    help of each setting."""

    def start_section(self, heading) -> None:  # a group's heading is its class docstring
        super().start_section(plain(heading) if heading else heading)

    def _format_text(self, text: str) -> str:
        return super()._format_text(plain(text))

    def _expand_help(self, action) -> str:
        return plain(super()._expand_help(action))


_TYPE = re.compile(r"<class '([\w.]+)'>")


def _type_name(text: str) -> str:
    text = _TYPE.sub(lambda m: "null" if m.group(1) == "NoneType" else m.group(1).rsplit(".", 1)[-1], text)
    return text.replace("typing.", "")


def condense(message: str, settings: list[str] = ()) -> str:
    """jsonargparse's error report as one line: the setting, what it accepts and what it got; an unknown setting with
    the nearest known one.

    >>> condense('Parser key "n":\\n  Does not validate against any of the Union subtypes\\n  Subtypes: '
    ...          "[<class 'int'>, <class 'NoneType'>]\\n  Errors:\\n    - Expected a <class 'int'>\\n  Given value: x")
    "n: expected int or null, got 'x'"
    >>> condense("Parser key \\"mode\\":\\n  Expected a typing.Literal['a', 'b']. Got value: c")
    "mode: expected one of 'a', 'b', got 'c'"
    >>> condense("unrecognized arguments: --max_promts 3", ["--max_prompts", "--seed"])
    'unknown setting --max_promts; did you mean --max_prompts?'
    >>> condense('Parser key "model":\\n  Does not validate against any of the Union subtypes\\n  Errors:\\n'
    ...          "    - Problem with given class_path 'lightning_post.SFTModule':\\n"
    ...          "        Option 'dtyp' is not accepted\\n    - Expected a <class 'NoneType'>")
    "model.init_args: option 'dtyp' is not accepted by lightning_post.SFTModule"
    """
    raw = [line for line in message.strip().splitlines() if line.strip()]
    lines = [line.strip() for line in raw]
    if not lines:
        return "invalid arguments"
    unknown = re.match(r"[Uu]nrecognized arguments: (\S+)", lines[0])
    if unknown:
        name = unknown.group(1).split("=", 1)[0]
        close = difflib.get_close_matches(name, list(settings), n=1, cutoff=0.6)
        return f"unknown setting {name}" + (f"; did you mean {close[0]}?" if close else "")
    key = re.match(r'Parser key "([^"]+)":?\s*(.*)', lines[0])
    if not key:
        return " ".join(lines)
    nested = next((i for i, line in enumerate(lines) if "Problem with given class_path" in line), None)
    if nested is not None:  # a setting of the chosen class: its own problem, named under <key>.init_args
        cls = re.search(r"class_path '([^']+)'", lines[nested]).group(1)
        depth = len(raw[nested]) - len(raw[nested].lstrip())
        inner = []
        for line in raw[nested + 1:]:
            if len(line) - len(line.lstrip()) <= depth:
                break
            inner.append(line)
        detail = condense("\n".join(inner)) if inner else "is not accepted"
        if detail.startswith("Option "):
            return f"{key.group(1)}.init_args: option{detail[6:]} by {cls}"
        return f"{key.group(1)}.init_args.{detail}" if inner and inner[0].strip().startswith("Parser key") \
            else f"{key.group(1)}.init_args: {detail} ({cls})"
    rest = " ".join([key.group(2), *lines[1:]]).strip()
    given = re.search(r"(?:Given value|Got value): (.*?)(?:$| Given| Errors)", rest)
    got = f", got {given.group(1).strip()!r}" if given else ""
    subtypes = re.search(r"Subtypes: \[(.*?)\]\s*(?:Errors|Given|$)", rest)
    literal = re.search(r"Literal\[(.*?)\]", rest)
    if literal:
        return f"{key.group(1)}: expected one of {literal.group(1)}{got}"
    if subtypes:
        kinds = [_type_name(t.strip()) for t in re.split(r",\s*(?![^\[]*\])", subtypes.group(1))]
        return f"{key.group(1)}: expected {' or '.join(kinds)}{got}"
    expected = re.search(r"Expected an? (.*?)\.? Got value", rest)
    if expected:
        return f"{key.group(1)}: expected {_type_name(expected.group(1))}{got}"
    return f"{key.group(1)}: {rest}"


class OneLineErrors:
    """A parser whose errors are one line on stderr, ``<prog>: error: <setting>: <problem>``, and exit code 2."""

    def error(self, message: str, ex: Exception | None = None):
        if not getattr(self, "exit_on_error", True):
            return super().error(message, ex)  # type: ignore[misc]
        parser = getattr(ex, "subcommand_parser", None) or self
        settings = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
        prog = parser.prog.replace(" [options]", "")
        print(f"{prog}: error: {condense(message, settings)} ({prog} --help lists the settings)", file=sys.stderr)
        sys.exit(2)


class CommandParser(OneLineErrors, ArgumentParser):
    """The parser of ``lightning-post <command>`` beside training (the training commands' is in trainer_cli)."""
