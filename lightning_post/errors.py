"""Errors a user can fix, each one line: a setting with a wrong value, an unusable path.

The command line prints these as ``lightning-post <command>: error: <message>`` without a traceback (exit code 2);
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """An error in what the user gave (a setting, a file, a record): printed as one line, exit code 2."""


class ConfigError(UserError):
    """A setting that cannot work, named as in the YAML: ``model.init_args.optim.lr: must be > 0, got -0.1``."""

    def __init__(self, setting: str, problem: str):
        self.setting, self.problem = setting, problem
        super().__init__(f"{setting}: {problem}")


class OutputError(UserError):
    """An output path that a command refuses to write (it would delete or mix with files it did not write)."""
