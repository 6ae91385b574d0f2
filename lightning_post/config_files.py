"""YAML config files checked before a parser reads them, so that a syntax error names its file and line.

jsonargparse reads a ``--config`` file's text and parses the string, so PyYAML's message says
``in "<unicode string>", line 4`` instead of the file. :func:`check_yaml_file` parses each file first with its name.
"""

from __future__ import annotations

from pathlib import Path


class ConfigFileError(ValueError):
    """A config file that cannot be read: ``configs/x.yaml:4: YAML syntax error: ...``."""


def check_yaml_file(path: str) -> None:
    """Raise :class:`ConfigFileError` when ``path`` is missing, not UTF-8, not YAML, or not a mapping of settings."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigFileError(f"{path}: file not found" if not file.exists() else f"{path}: is not a file")
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigFileError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        context = getattr(e, "context", None)
        raise ConfigFileError(f"{path}{line}: YAML syntax error: {problem}" + (f" ({context})" if context else "")) \
            from None
    if value is not None and not isinstance(value, dict):
        raise ConfigFileError(f"{path}: must hold a mapping of settings, got {type(value).__name__}")


def config_paths(argv: list[str]) -> list[str]:
    """The files named by ``--config X`` and ``--config=X`` in ``argv``.

    >>> config_paths(["fit", "--config", "a.yaml", "--config=b.yaml", "--x", "1"])
    ['a.yaml', 'b.yaml']
    """
    out = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif arg.startswith("--config="):
            out.append(arg.removeprefix("--config="))
    return out
