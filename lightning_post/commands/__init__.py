"""Every ``lightning-post`` command in one place: its name, a one-line summary (what ``--help`` lists) and the
``module:name`` that runs it, imported only when that command runs, so that ``lightning-post --help`` and
``--version`` answer without importing torch (benchmarks/cli_startup/CLI_STARTUP.md).

A command is a class whose ``__init__`` is its schema and whose ``run()`` does the work (:mod:`.base`), one module
per command beside this one; the training commands are LightningCLI's (``lightning_post.trainer_cli``) and
``runs`` is a plain function of its arguments. Adding a command is one module and one line below.

This module imports nothing (the ``cli`` front reads it on every call).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, NamedTuple, Optional


class Entry(NamedTuple):
    """One command: what ``--help`` says of it and what runs it (``None``: a group of subcommands)."""

    summary: str
    target: Optional[str]

    def load(self) -> Any:
        """The class (or function) that runs the command, imported now."""
        if self.target is None:
            raise LookupError(f"{self.summary!r} is a group of commands, not one")
        module, _, name = self.target.partition(":")
        return getattr(import_module(module), name)


#: ``lightning-post <command>`` of training, in the order ``--help`` lists them (LightningCLI: ``cli_main(argv)``)
TRAINING_COMMANDS = {
    "fit": Entry("train a method (SFT, reward model, DPO and its loss family, KTO, PPO/RLOO/GRPO, CAI) from YAML",
                 "lightning_post.trainer_cli:cli_main"),
    "validate": Entry("the validation metrics of a model or a checkpoint", "lightning_post.trainer_cli:cli_main"),
    "test": Entry("the test metrics of a model or a checkpoint (generation metrics: BLEU, ROUGE, BERTScore)",
                  "lightning_post.trainer_cli:cli_main"),
    "predict": Entry("run a model's predict step over a data split", "lightning_post.trainer_cli:cli_main"),
}
#: ``lightning-post <command>`` of evaluation, safety and data
TOOL_COMMANDS = {
    "evaluate": Entry("one model: text metrics, judge win rate, multiple choice, safety probes, bias",
                      "lightning_post.commands.evaluate:Evaluate"),
    "abtest": Entry("two models side by side: judge or human verdicts, significance, safety, a ship/keep decision",
                    "lightning_post.commands.abtest:ABTest"),
    "redteam": Entry("attack a model with red-team prompts and jailbreaks; attack success rate and the red-team set",
                     "lightning_post.commands.redteam:RedTeam"),
    "jailbreak-data": Entry("refusal SFT records and DPO pairs from a red-team set, for the defense stage",
                            "lightning_post.commands.jailbreak_data:JailbreakDefenseData"),
    "pipeline": Entry("stages in order (sft, reward, dpo, cai, evaluate, abtest, ...), resumable, one MLflow parent "
                      "run", "lightning_post.commands.pipeline:Pipeline"),
    "data": Entry("preference data: build pairs, label them, check their quality, convert, read feedback", None),
    "runs": Entry("the MLflow store: mark runs whose process is gone KILLED (runs clean)",
                  "lightning_post.commands.runs:main"),
}
#: ``lightning-post data <command>``
DATA_COMMANDS = {
    "pairs": Entry("comparison pairs of several models' answers to the same prompts",
                   "lightning_post.commands.data:DataPairs"),
    "label": Entry("label pairs with a judge (reward model or LLM, both orders)",
                   "lightning_post.commands.data:DataLabel"),
    "report": Entry("quality report of annotations or preference files: agreement, bias, a gate",
                    "lightning_post.commands.data:DataReport"),
    "convert": Entry("annotations -> a training preference file", "lightning_post.commands.data:DataConvert"),
    "feedback": Entry("deployment feedback (ratings, thumbs) -> KTO, preference and SFT files and a report",
                      "lightning_post.commands.feedback:DataFeedback"),
    "arithmetic": Entry("a verifiable task: seeded arithmetic prompts with answers, train and held-out",
                        "lightning_post.commands.data:DataArithmetic"),
}


def entry(name: str) -> Entry:
    """The entry of ``name``: ``"evaluate"``, ``"fit"``, ``"data report"``."""
    group, _, sub = name.partition(" ")
    return DATA_COMMANDS[sub] if group == "data" and sub else {**TRAINING_COMMANDS, **TOOL_COMMANDS}[group]


def command_classes() -> dict[str, type]:
    """``lightning-post <name>`` -> its command class, for every command that is one (``data`` ones named
    ``data <name>``; training and ``runs`` are not classes). Imports every command module."""
    import inspect

    named = {**TOOL_COMMANDS, **{f"data {n}": e for n, e in DATA_COMMANDS.items()}}
    loaded = {name: e.load() for name, e in named.items() if e.target is not None}
    return {name: obj for name, obj in loaded.items() if inspect.isclass(obj)}


def parse_command(name: str, argv: list[str]):
    """``(parser, command)``: ``--config`` YAML and settings parsed into the class of ``lightning-post <name>``
    (``"evaluate"``, ``"data report"``)."""
    return entry(name).load().parse(argv, f"lightning-post {name}")


def run_command(name: str, argv: list[str]) -> Any:
    """Parse and run ``lightning-post <name> <argv>`` in this process; a bad setting, file, record, model or output
    folder raises :class:`~lightning_post.errors.UserError`, which the command line prints as one line."""
    return parse_command(name, argv)[1].run()
