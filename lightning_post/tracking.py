"""MLflow tracking: the default logger (SQLite store under ``mlruns/``), run tags, flattened params, the config."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.loggers import MLFlowLogger

from lightning_post.outputs import output_files

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_ARTIFACTS = "mlruns/artifacts"


class MLflowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger with the project's defaults.

    The store is the SQLite database ``mlruns/mlflow.db`` and artifacts go under ``mlruns/artifacts`` (relative to
    the working directory); ``experiment_name`` defaults to the method (``sft``, ``dpo``, ...), set by the CLI.
    Open it with ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db``.
    """

    def __init__(
        self,
        experiment_name: Optional[str] = None,
        run_name: Optional[str] = None,
        tracking_uri: str = DEFAULT_TRACKING_URI,
        artifact_location: str = DEFAULT_ARTIFACTS,
        tags: Optional[dict[str, Any]] = None,
        run_id: Optional[str] = None,
    ):
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        if "://" not in artifact_location:
            artifact_location = Path(artifact_location).resolve().as_uri()
        check_store_writable(tracking_uri, artifact_location)
        mark_stale_runs(tracking_uri)
        super().__init__(
            experiment_name=experiment_name or "default",
            run_name=run_name,
            tracking_uri=tracking_uri,
            artifact_location=artifact_location,
            tags=tags,
            run_id=run_id,
        )
        #: set by :class:`~lightning_post.callbacks.checkpoint.GracefulStop` when a signal stopped the fit
        self.interrupted = False

    def finalize(self, status: str = "success") -> None:
        """End the run: ``KILLED`` after a stop by SIGINT/SIGTERM, else Lightning's ``FINISHED``/``FAILED``."""
        super().finalize("KILLED" if self.interrupted else status)



def _local_path(uri: str) -> Optional[Path]:
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    return None if "://" in uri else Path(uri)


def check_store_writable(tracking_uri: str, artifact_location: Optional[str] = None) -> None:
    """Refuse a local MLflow store or artifact folder that this user cannot write, before a run starts (MLflow itself
    retries a read-only SQLite file for minutes before it fails)."""
    from lightning_post.errors import ConfigError

    for setting, uri in (("tracking_uri", tracking_uri), ("artifact_location", artifact_location)):
        path = _local_path(uri) if uri else None
        if path is None:
            continue
        probe = path if path.exists() else next((p for p in path.parents if p.exists()), None)
        effective = os.access in os.supports_effective_ids  # the user this process acts as (e.g. after seteuid)
        if probe is not None and not os.access(probe, os.W_OK, effective_ids=effective):
            raise ConfigError(setting, f"{probe} is not writable by this user; choose another MLflow store "
                                       f"(e.g. --trainer.logger.init_args.{setting}=...)")


#: tags that tie a RUNNING run to the process writing it, so that a run left RUNNING by ``kill -9`` can be found
PID_TAG, START_TAG, HOST_TAG = "lightning_post.pid", "lightning_post.pid_start", "lightning_post.host"


def _start_time(pid: int) -> Optional[str]:
    """The kernel's start time of process ``pid`` (``/proc/<pid>/stat`` field 22), or ``None`` where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_tags() -> dict[str, str]:
    """Tags naming this process: its pid, start time and host."""
    import socket

    pid = os.getpid()
    return {PID_TAG: str(pid), START_TAG: _start_time(pid) or "", HOST_TAG: socket.gethostname()}


def _alive(tags: dict) -> bool:
    import socket

    if tags.get(HOST_TAG) != socket.gethostname():
        return True  # another machine's process: it cannot be checked from here
    pid = int(tags[PID_TAG])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = tags.get(START_TAG)
    return not started or _start_time(pid) in (None, started)  # a reused pid belongs to another process


def mark_stale_runs(tracking_uri: str) -> list[str]:
    """Mark ``KILLED`` every RUNNING run of this machine whose process is gone (a ``kill -9``, a power cut); returns
    their ids. Runs without our process tags are left alone. Called before each fit and by ``lightning-post runs
    clean``."""
    path = _local_path(tracking_uri)
    if path is not None and tracking_uri.startswith("sqlite:///") and not path.exists():
        return []  # no store yet: nothing to clean (and creating its tables here would cost seconds)
    import mlflow
    from mlflow.entities import ViewType

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    stale = []
    try:
        experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        runs = client.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=5000) if experiments else []
    except Exception as e:  # an unreadable store is reported by the run itself, with MLflow's message
        log.debug("could not look for stale runs in %s: %s", tracking_uri, e)
        return []
    for run in runs:
        if PID_TAG in run.data.tags and not _alive(run.data.tags):
            client.set_tag(run.info.run_id, "lightning_post.stale", "its process ended without closing the run")
            client.set_terminated(run.info.run_id, status="KILLED")
            stale.append(run.info.run_id)
    if stale:
        log.warning("marked %d run(s) KILLED whose process is gone: %s", len(stale), ", ".join(stale))
    return stale


def set_tags(logger: MLFlowLogger, tags: dict[str, Any]) -> None:
    """Set (or overwrite) tags on the logger's run."""
    for key, value in tags.items():
        logger.experiment.set_tag(logger.run_id, key, str(value))


def git_commit(path: Optional[str] = None) -> str:
    """The commit of the working tree (or of the installed package's checkout); ``unknown`` outside git."""
    for where in (path or os.getcwd(), str(Path(__file__).resolve().parent)):
        try:
            out = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
            )
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
    return "unknown"


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """Flatten a nested config into ``{"model.init_args.optim.lr": "0.0002", ...}`` (MLflow params are strings).

    >>> flatten({"a": {"b": 1, "c": [1, 2]}, "d": None})
    {'a.b': '1', 'a.c': '[1, 2]', 'd': 'None'}
    """
    out: dict[str, str] = {}
    if isinstance(tree, dict) and tree:
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    else:
        text = json.dumps(tree, default=str) if isinstance(tree, (list, tuple)) else str(tree)
        out[prefix] = text[:6000]  # MLflow's limit for a param value
    return out


def log_text_artifact(logger: MLFlowLogger, text: str, artifact_path: str) -> None:
    """Write ``text`` to a file named like ``artifact_path`` and log it on the logger's run."""
    folder, name = os.path.split(artifact_path)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / name
        file.write_text(text, encoding="utf-8")
        logger.experiment.log_artifact(logger.run_id, str(file), artifact_path=folder or None)


def log_json_artifact(client, run_id: str, value: Any, artifact_path: str) -> None:
    """Log ``value`` as a JSON file named like ``artifact_path`` on a run, through an ``MlflowClient``."""
    folder, name = os.path.split(artifact_path)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / name
        file.write_text(json.dumps(value, indent=1, ensure_ascii=False), encoding="utf-8")
        client.log_artifact(run_id, str(file), artifact_path=folder or None)


def mlflow_logger(trainer) -> Optional[MLFlowLogger]:
    """The trainer's first MLflow logger, if any."""
    return next((lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)), None)


def log_run(tracking_uri: str, experiment: str, run_name: Optional[str], tags: dict, params: dict,
            metrics: dict[str, float], out_dir: Path, plots: Optional[dict[str, Any]] = None,
            run_id: Optional[str] = None) -> str:
    """A finished MLflow run outside training: tags, params, finite numeric metrics, every file of ``out_dir`` and
    ``plots`` (matplotlib figures, as ``plots/<name>.png``); returns its id. ``run_id`` fills a run created
    beforehand (a pipeline's child run) instead of a new one in ``experiment``."""
    import mlflow

    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    if run_id:
        run = client.get_run(run_id)
        for k, v in tags.items():
            client.set_tag(run_id, k, str(v))
    else:
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
        run = client.create_run(exp_id, run_name=run_name, tags=tags)
    for k, v in params.items():
        client.log_param(run.info.run_id, k, str(v)[:500])
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and v == v:
            client.log_metric(run.info.run_id, k, float(v))
    for path in output_files(out_dir):  # what the command wrote, not a user's files beside it
        folder = path.parent.relative_to(out_dir).as_posix()
        client.log_artifact(run.info.run_id, str(path), None if folder == "." else folder)
    for name, fig in (plots or {}).items():
        client.log_figure(run.info.run_id, fig, f"plots/{name}.png")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def runs_command(argv: list[str]) -> None:
    """``lightning-post runs clean [--tracking_uri URI]``: mark ``KILLED`` the RUNNING runs of this machine whose
    process is gone (``kill -9``, a power cut); each ``fit`` does the same on its store before it starts."""
    import argparse

    ap = argparse.ArgumentParser(prog="lightning-post runs", description=runs_command.__doc__)
    ap.add_argument("action", choices=["clean"])
    ap.add_argument("--tracking_uri", default=DEFAULT_TRACKING_URI)
    args = ap.parse_args(argv)
    stale = mark_stale_runs(args.tracking_uri)
    print(f"{len(stale)} stale run(s) marked KILLED" + (f": {', '.join(stale)}" if stale else ""))
