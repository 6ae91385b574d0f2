"""What every command shares: the :class:`Command` base (parse ``--config`` YAML and settings into the class, run
it) and the settings that several commands take, each declared once here with its default and docstring.

A command lists the groups it takes as base classes and forwards ``**kwargs`` to ``super().__init__``; jsonargparse
follows ``**kwargs`` into the bases, so ``--help`` and ``--print_config`` still list every setting with its default.
Where a shared setting means something particular to one command (what its ``seed`` draws, which model its
``dtype`` is of), the command's own ``Args:`` says so and its ``--help`` shows that text instead.

    class Evaluate(Generates, StageCommand):
        def __init__(self, model: str = DEFAULT_MODEL, ..., output_dir: str = "mlruns/evaluate/latest",
                     experiment_name: str = "evaluate", **kwargs):
            super().__init__(**kwargs)
            self.keep(locals())
"""

from __future__ import annotations

import abc

import glob
from typing import Any, Optional, Union

from lightning_post.errors import ConfigError, UserError
from lightning_post.records.files import DataError
from lightning_post.tracking import DEFAULT_TRACKING_URI

#: file arguments: one path, a list of paths, or quoted glob patterns
Paths = Union[str, list[str], None]


class Command(abc.ABC):
    """A ``lightning-post`` command: ``__init__`` is its schema (every setting typed, with a one-line docstring) and
    checks it; :meth:`run` does the work."""

    def __init__(self):
        """The end of the ``**kwargs`` chain of the groups below: a setting no group took is an error here."""

    @abc.abstractmethod
    def run(self) -> Any:
        """Do the command's work; returns its report."""

    def keep(self, settings: dict[str, Any]) -> None:
        """Store the ``__init__`` arguments (``locals()``) as attributes: ``vars(self)`` is then every setting (the
        MLflow params of the run)."""
        self.__dict__.update({k: v for k, v in settings.items() if k not in ("self", "kwargs", "__class__")})

    @classmethod
    def parse(cls, argv: list[str], prog: str):
        """``(parser, command)``: ``--config`` YAML and settings in ``argv`` parsed into this class."""
        from jsonargparse import ActionConfigFile

        from lightning_post.help import CommandParser, PlainHelpFormatter

        parser = CommandParser(prog=prog, description=cls.__doc__, formatter_class=PlainHelpFormatter)
        parser.add_argument("--config", action=ActionConfigFile)
        parser.add_class_arguments(cls)
        _own_help(parser, cls)
        cfg = parser.parse_args(argv).as_dict()
        cfg.pop("config", None)
        cfg.pop("__path__", None)
        try:
            return parser, cls(**cfg)
        except UserError:
            raise
        except ValueError as e:  # the constructors check their settings: a bad choice or combination is the user's
            raise UserError(str(e)) from e

    @classmethod
    def main(cls, argv: list[str], prog: str) -> Any:
        """``lightning-post <command> <argv>``: parse and run."""
        return cls.parse(argv, prog)[1].run()


def _own_help(parser, cls: type) -> None:
    """The help of a shared setting as the command's own ``Args:`` words it, where they do."""
    import inspect

    from docstring_parser import parse

    init = cls.__dict__.get("__init__")
    own = inspect.signature(init).parameters if init else {}
    docs = {p.arg_name: p.description for p in parse(getattr(init, "__doc__", None) or "").params
            if p.arg_name not in own and p.description}
    for action in parser._actions:
        if action.dest in docs:
            action.help = docs[action.dest]


class Seeded(Command):
    """Settings of a command with random draws."""

    def __init__(self, seed: int = 0, **kwargs):
        """
        Args:
            seed: seed of the command's random draws.
        """
        super().__init__(**kwargs)
        self.seed = seed


class OnDevice(Command):
    """Settings of a command that loads models."""

    def __init__(self, device: Optional[str] = None, **kwargs):
        """
        Args:
            device: ``cpu``, ``cuda``, ... (``null`` = cuda if available).
        """
        super().__init__(**kwargs)
        self.device = device

    def _device(self) -> str:
        from lightning_post.generation import pick_device

        return pick_device(self.device)


class Generates(OnDevice):
    """Settings of a command that answers prompts with a model."""

    def __init__(self, max_new_tokens: int = 96, batch_size: int = 16, dtype: str = "float32", **kwargs):
        """
        Args:
            max_new_tokens: longest generated answer.
            batch_size: prompts per generation batch.
            dtype: parameter dtype of the models.
        """
        super().__init__(**kwargs)
        self.keep(locals())


class Recorded(Command):
    """Settings of a command that writes an output folder and records it as an MLflow run
    (:func:`~lightning_post.tracking.log_run`)."""

    def __init__(self, overwrite: bool = False, tracking_uri: str = DEFAULT_TRACKING_URI,
                 run_name: Optional[str] = None, **kwargs):
        """
        Args:
            overwrite: write into an existing ``output_dir`` that holds files this command did not write (they
                are kept; only files of an earlier output of the same command are replaced).
            tracking_uri: MLflow tracking URI.
            run_name: MLflow run name.
        """
        super().__init__(**kwargs)
        self.keep(locals())


class StageCommand(Recorded, Seeded):
    """Settings of a command that a pipeline runs as a stage (``--output_dir``, ``--tracking_uri`` and ``--run_id``
    given by the pipeline)."""

    def __init__(self, run_id: Optional[str] = None, **kwargs):
        """
        Args:
            run_id: record into this existing MLflow run (a pipeline's child run) instead of a new one.
        """
        super().__init__(**kwargs)
        self.run_id = run_id


def check_counts(command: Any, names: tuple[str, ...], positive: tuple[str, ...] = ()) -> None:
    """Refuse negative counts (and zero for ``positive`` ones: ``max_prompts 0`` would answer nothing and report a
    NaN rate); ``null`` means "all" where a count allows it."""
    for name in names:
        value = getattr(command, name)
        low = 1 if name in positive else 0
        if value is not None and value < low:
            raise ConfigError(name, f"must be >= {low}" + (" or null (all)" if name.startswith("max_") else "") +
                                    f", got {value}")


def expand(paths: Paths) -> list[str]:
    """File arguments as a list: one path, a list of paths, or glob patterns (``'predictions/*.jsonl'``, quoted)."""
    out = []
    for p in [paths] if isinstance(paths, str) else paths or []:
        hits = sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
        if not hits:
            raise DataError(p, None, "no file matches this pattern")
        out += hits
    return out


def flat_metrics(prefix: str, tree: dict) -> dict[str, float]:
    """The numbers of a nested report as flat MLflow metrics: ``{"a": {"b": 1}}`` -> ``{"<prefix>a/b": 1}``
    (booleans and text left out)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flat_metrics(f"{prefix}{k}/", v))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = v
    return out
