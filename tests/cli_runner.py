"""Run ``lightning-post`` from a test: in this process by default, in a child process where a process proves
something (DDP/FSDP launches, signals, a pipeline resumed after its process died, the console scripts).

In-process runs skip the ~10 CPU-seconds of imports that every child process pays. Each call runs the same front
(:func:`lightning_post.cli.main`) as the console script, in ``cwd``, and returns what a child process would: the exit
code (a ``SystemExit``'s code, 1 with the traceback on stderr for an exception), the text written to stdout and to
stderr (our log records and Lightning's included). The working directory, the environment, the root logger's level
and the handlers it adds are restored afterwards, so that one command does not leak into the next test.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT

EXE = [sys.executable, "-m", "lightning_post.cli"]
#: loggers that do not propagate to the root (Lightning's own handler): their records are captured as well
_OWN_HANDLER_LOGGERS = ("lightning.pytorch", "lightning.fabric")


@dataclass
class Result:
    """What a finished command left: like :class:`subprocess.CompletedProcess`."""

    args: list
    returncode: int
    stdout: str
    stderr: str


def cli(args, cwd, check: bool = True, timeout: float = 900, process: bool = False) -> Result:
    """``lightning-post *args`` in ``cwd``; ``process=True`` starts a child process (``timeout`` applies there).
    With ``check``, a non-zero exit fails the test with the end of both streams."""
    run = _in_child if process or launches_processes(args) else _in_process
    result = run([str(a) for a in args], Path(cwd), timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def launches_processes(args) -> bool:
    """A command that starts several processes itself (``--trainer.devices`` above 1) runs in a child: Lightning's
    launcher re-runs the command line of the process it is in."""
    args = [str(a) for a in args]
    for i, a in enumerate(args):
        value = a.split("=", 1)[1] if a.startswith("--trainer.devices=") else (
            args[i + 1] if a == "--trainer.devices" and i + 1 < len(args) else None)
        if value is not None and value.strip() not in ("1", "[0]", "auto", "-1") and "--print_config" not in args:
            return True
    return False


def _in_child(args: list[str], cwd: Path, timeout: float) -> Result:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(EXE + args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    return Result(args, proc.returncode, proc.stdout, proc.stderr)


class _Bytes:
    """``stream.buffer`` of a captured text stream: bytes written there land in the text, decoded."""

    def __init__(self, text: io.StringIO):
        self.text = text

    def write(self, data: bytes) -> int:
        self.text.write(bytes(data).decode("utf-8", errors="replace"))
        return len(data)

    def flush(self) -> None:
        pass


class _Captured(io.StringIO):
    """A captured stdout/stderr that also takes bytes on ``.buffer``, as ``sys.stdout`` does."""

    def __init__(self):
        super().__init__()
        self.buffer = _Bytes(self)


def _exit_code(error: SystemExit, err: io.StringIO) -> int:
    """The exit status a process would have for ``sys.exit(code)`` (a message is printed and means 1)."""
    if error.code is None:
        return 0
    if isinstance(error.code, int):
        return error.code
    print(error.code, file=err)
    return 1


def _in_process(args: list[str], cwd: Path, timeout: float) -> Result:
    from lightning_post import cli as front

    out, err = _Captured(), _Captured()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger()] + [logging.getLogger(n) for n in _OWN_HANDLER_LOGGERS]
    root = loggers[0]
    root_level, root_handlers = root.level, list(root.handlers)
    environ, here, argv = dict(os.environ), os.getcwd(), list(sys.argv)
    for logger in loggers:
        logger.addHandler(handler)
    root.setLevel(logging.INFO)
    os.chdir(cwd)
    sys.argv = ["lightning-post", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                front.main(args)
            except SystemExit as e:
                code = _exit_code(e, err)
            except Exception:  # a crash: a process would print the traceback and exit 1
                traceback.print_exc(file=err)
                code = 1
    finally:
        os.chdir(here)
        sys.argv = argv
        os.environ.clear()
        os.environ.update(environ)
        for logger in loggers:
            logger.removeHandler(handler)
        for h in root.handlers[:]:  # a basicConfig() inside the command bound a handler to our buffer
            if h not in root_handlers:
                root.removeHandler(h)
        root.setLevel(root_level)
        gc.collect()
    return Result(args, code, out.getvalue(), err.getvalue())


def client(cwd):
    """The MLflow client of the store that the commands write in ``cwd``."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{cwd}/mlruns/mlflow.db")
