"""``lightning-post``: one command line for every method and tool.

    lightning-post --help                                      (every command, one line each)
    lightning-post fit --config configs/sft/default.yaml
    lightning-post fit --config configs/sft/default.yaml --config configs/strategies/ddp.yaml
    lightning-post test --config configs/sft/default.yaml --ckpt_path mlruns/runs/<exp>/<run>/checkpoints/last.ckpt
    lightning-post evaluate --config configs/evaluate/default.yaml --model exports/sft/model
    lightning-post abtest --config configs/abtest/default.yaml --model_a smollm2-135m-instruct --model_b exports/dpo/model
    lightning-post data report --annotations judged.jsonl --output_dir reports/judged

This module imports nothing heavy: ``--help``, ``--version`` and a mistyped command answer without torch. The
commands are listed in :mod:`lightning_post.commands`; each command's own module is imported when it runs. A user
error (a bad setting, file, record, model name or output folder) ends in one line on stderr and exit code 2;
``--debug`` (or ``LIGHTNING_POST_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import difflib
import os
import sys
from typing import Optional

# the registry of every command (name, one-line summary, what runs it); it imports nothing
from lightning_post.commands import DATA_COMMANDS, TOOL_COMMANDS, TRAINING_COMMANDS, Entry, entry

DEBUG_ENV = "LIGHTNING_POST_DEBUG"


def version_text() -> str:
    """``lightning-post 0.1.0 (torch ..., lightning ..., transformers ..., peft ..., Python ...)``, read from the
    installed packages' metadata (nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    from lightning_post import __version__

    parts = []
    for dist in ("torch", "lightning", "transformers", "peft", "mlflow"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} missing")
    parts.append(f"Python {sys.version.split()[0]}")
    return f"lightning-post {__version__} ({', '.join(parts)})"


def _table(commands: dict[str, Entry]) -> str:
    width = max(map(len, commands)) + 2
    return "\n".join(f"  {name:<{width}}{e.summary}" for name, e in commands.items())


def overview() -> str:
    """The text of ``lightning-post --help``."""
    return f"""usage: lightning-post [--version] [--debug] <command> [--config FILE ...] [settings ...]

Post-training foundation models on PyTorch Lightning. Each command takes YAML configs (--config) and settings
(--name value); `lightning-post <command> --help` lists a command's settings with their defaults.

training (LightningCLI):
{_table(TRAINING_COMMANDS)}

evaluation, safety and data:
{_table(TOOL_COMMANDS)}

options:
  -h, --help      show this overview and exit
  -V, --version   show the version of lightning-post and of its main dependencies, and exit
  --debug         show the traceback of an error (also LIGHTNING_POST_DEBUG=1)

examples:
  lightning-post fit --config configs/sft/default.yaml
  lightning-post evaluate --config configs/evaluate/default.yaml --model <export folder>
  lightning-post data report --annotations judged.jsonl --output_dir reports/judged
"""


def data_overview() -> str:
    """The text of ``lightning-post data --help``."""
    return f"""usage: lightning-post data <command> [--config FILE ...] [settings ...]

Build, label, check and convert preference data; `lightning-post data <command> --help` lists its settings.

commands:
{_table(DATA_COMMANDS)}
"""


def _fail(command: str, message: str) -> None:
    prog = f"lightning-post {command}".rstrip()
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _unknown(kind: str, name: str, choices, listing: str) -> None:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    _fail("" if kind == "command" else "data", f"{name!r} is not a {kind}{hint} ({listing} lists them)")


def _user_error(error: BaseException, kinds: tuple) -> Optional[BaseException]:
    """The first error of ``kinds`` in ``error``'s chain of causes, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kinds):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def main(argv: Optional[list[str]] = None) -> None:
    """``lightning-post <command> ...``: user errors (a bad setting, file, record, model name or output folder) end
    in one line and exit code 2 (``--debug``: with the traceback); a fit stopped by Ctrl-C or SIGTERM exits with 130
    after saving."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes", "on")
    if "--debug" in argv:
        debug = True
        argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(overview(), file=sys.stdout if argv else sys.stderr, end="")
        sys.exit(0 if argv else 2)
    if argv[0] in ("-V", "--version"):
        print(version_text())
        sys.exit(0)
    command = argv[0]
    if command not in TRAINING_COMMANDS and command not in TOOL_COMMANDS:
        if command.startswith("-"):  # LightningCLI's old form: `lightning-post --config x.yaml fit`
            _fail("", f"the command comes first: lightning-post <command> {' '.join(argv)} "
                      "(lightning-post --help lists the commands)")
        _unknown("command", command, [*TRAINING_COMMANDS, *TOOL_COMMANDS], "lightning-post --help")
    if command == "data":
        if len(argv) < 2 or argv[1] in ("-h", "--help"):
            print(data_overview(), file=sys.stdout if len(argv) > 1 else sys.stderr, end="")
            sys.exit(0 if len(argv) > 1 else 2)
        if argv[1] not in DATA_COMMANDS:
            _unknown("data command", argv[1], DATA_COMMANDS, "lightning-post data --help")
        command = f"data {argv[1]}"
    _run(command, argv, debug)


def _run(command: str, argv: list[str], debug: bool) -> None:
    import logging

    from lightning_post.config_files import ConfigFileError, check_yaml_file, config_paths
    from lightning_post.errors import UserError

    interrupted = None
    if command in TRAINING_COMMANDS:
        # imported before our log format is set: Lightning then keeps its own handler for its messages
        from lightning_post.callbacks.checkpoint import INTERRUPTED as interrupted

        interrupted.clear()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        for path in config_paths(argv):  # YAML syntax named with its file and line, before any parser reads it
            check_yaml_file(path)
        _dispatch(command, argv)
    except (UserError, ConfigFileError) as e:  # a setting, a file, a record, a model name, an output folder
        if debug:
            raise
        _fail(command, str(e))
    except ValueError as e:  # jsonargparse wraps a constructor's error into "Does not validate against ..."
        cause = _user_error(e, (UserError,))
        if cause is None or debug:
            raise
        _fail(command, str(cause))
    except SystemExit:
        if interrupted is not None and interrupted.is_set():  # Lightning exits 1 after a second Ctrl-C
            sys.exit(130)
        raise
    if interrupted is not None and interrupted.is_set():
        print("lightning-post: stopped by a signal; the checkpoint and the export so far are saved (resume with "
              "--ckpt_path <run folder>/checkpoints/last.ckpt)", file=sys.stderr)
        sys.exit(130)


def _dispatch(command: str, argv: list[str]) -> None:
    """Run ``command`` (``"evaluate"``, ``"data report"``) with its arguments: a command class parses them into its
    settings; the training commands and ``runs`` take them as they are."""
    target = entry(command).load()
    if command in TRAINING_COMMANDS:
        target(argv)  # LightningCLI: the subcommand is its first argument
    elif isinstance(target, type):
        target.main(argv[len(command.split()):], f"lightning-post {command}")
    else:
        target(argv[1:])


if __name__ == "__main__":
    main()
