"""MLflow tracking: the default logger (SQLite store under ``mlruns/``), run tags, flattened params, the config."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.loggers import MLFlowLogger

from lightning_post.outputs import finite_json, output_files

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_ARTIFACTS = "mlruns/artifacts"


class MLflowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger with the project's defaults.

    The store is the SQLite database ``mlruns/mlflow.db`` and artifacts go under ``mlruns/artifacts`` (relative to
    the working directory); ``experiment_name`` defaults to the method (``sft``, ``dpo``, ...), set by the CLI.
    ``run_name`` defaults to ``<method>-<time>-<model>-<suffix>`` (the CLI; here: ``<experiment>-<time>-<suffix>``,
    see :func:`default_run_name`) instead of MLflow's random name, which ``seed_everything`` would make the same
    for every run. Open it with ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db``.
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
        tracking_uri = absolute_uri(tracking_uri)
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        if "://" not in artifact_location:
            artifact_location = Path(artifact_location).resolve().as_uri()
        check_store_writable(tracking_uri, artifact_location)
        mark_stale_runs(tracking_uri)
        if not run_name and not run_id:  # a new run: a readable name that no seed repeats
            run_name = default_run_name(experiment_name or "run")
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


#: path components that say nothing about which model it is (an export's ``model`` folder, ``last.ckpt``)
_GENERIC_PARTS = {"model", "models", "adapter", "export", "exports", "merged", "checkpoints", "last", "best", "final"}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._]+", "-", str(text).lower()).strip("-._")


def model_label(model: Optional[str], limit: int = 40) -> str:
    """A short readable name of a model (alias, hub id, export folder or ``.ckpt``) for run names and MLflow keys:
    its last path component that is not a generic one, lower-cased, other characters than letters, digits, ``.``
    and ``_`` made ``-``.

    >>> model_label("HuggingFaceTB/SmolLM2-135M-Instruct")
    'smollm2-135m-instruct'
    >>> model_label("/work/mlruns/pipelines/demo/dpo/export/model")
    'dpo'
    >>> model_label("runs/sft-a/checkpoints/last.ckpt")
    'sft-a'
    """
    parts = [re.sub(r"\.(ckpt|safetensors|gguf|bin|pt)$", "", p, flags=re.IGNORECASE)
             for p in re.split(r"[\\/]+", str(model or "")) if p not in ("", ".", "..")]
    name = next((p for p in reversed(parts) if p.lower() not in _GENERIC_PARTS), parts[-1] if parts else "")
    return _slug(name)[:limit].strip("-._")


def default_run_name(method: Optional[str], *models: Optional[str]) -> str:
    """``<method>-<YYmmdd>-<HHMMSS>-<models>-<4 hex digits>``, e.g. ``sft-261203-054512-smollm2-135m-instruct-9f3a``:
    readable, and unique whatever the seed: the suffix comes from ``os.urandom``, which ``seed_everything`` does not
    seed (MLflow's own random names come from Python's ``random``, so every seeded run got the same one). The time
    comes right after the method because the UI's runs table shows a name's first ~22 characters."""
    words = [w for w in (_slug(p) for p in models if p) if w]
    return "-".join([_slug(method or "run") or "run", time.strftime("%y%m%d-%H%M%S"), *words, os.urandom(2).hex()])


def file_digest(path: str | Path) -> str:
    """The first 16 hex digits of the SHA-256 of a file's bytes (of a folder: of its files' names and bytes)."""
    path = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        if path.is_dir():
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def log_datasets(client, run_id: str, sources: list[tuple[str, str, dict]]) -> None:
    """Log data files as MLflow dataset inputs of a run (the runs table's Dataset column): one per file, named by
    the file, with ``source`` ``{"uri": <absolute path>}``, ``digest`` :func:`file_digest` of its contents and
    ``profile`` the JSON of its counts; ``sources`` are ``(split, path, counts)``, and the splits that read a file
    become its context tag (``train``, ``train,val`` for a validation split held out of the training file)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    by_file: dict[Path, tuple[list[str], dict]] = {}
    for split, path, counts in sources:
        splits, _ = by_file.setdefault(Path(path).resolve(), ([], counts))
        if split not in splits:
            splits.append(split)
    inputs = []
    for path, (splits, counts) in by_file.items():
        dataset = Dataset(name=path.name, digest=file_digest(path), source_type="local",
                          source=json.dumps({"uri": str(path)}), profile=json.dumps(counts))
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", ",".join(splits))]))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


def absolute_uri(uri: str) -> str:
    """A SQLite tracking URI with its path made absolute (``sqlite:///mlruns/mlflow.db`` ->
    ``sqlite:////work/mlruns/mlflow.db``): MLflow keeps one store per URI string for the life of the process, so a
    relative one would keep writing into the first working directory's store after a ``chdir`` (a notebook, a test)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


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
    except PermissionError:  # it exists, owned by another user: alive
        return True
    started = tags.get(START_TAG)
    return not started or _start_time(pid) in (None, started)  # a reused pid belongs to another process


def mark_stale_runs(tracking_uri: str) -> list[str]:
    """Mark ``KILLED`` every RUNNING run of this machine whose process is gone (a ``kill -9``, a power cut); returns
    their ids. Runs without our process tags are left alone. Called before each fit and by ``lightning-post runs
    clean``."""
    tracking_uri = absolute_uri(tracking_uri)
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
        file.write_text(json.dumps(finite_json(value), indent=1, ensure_ascii=False, allow_nan=False), encoding="utf-8")
        client.log_artifact(run_id, str(file), artifact_path=folder or None)


def mlflow_logger(trainer) -> Optional[MLFlowLogger]:
    """The trainer's first MLflow logger, if any."""
    return next((lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)), None)


def log_run(tracking_uri: str, experiment: str, run_name: Optional[str], tags: dict, params: dict,
            metrics: dict[str, float], out_dir: Path, plots: Optional[dict[str, Any]] = None,
            run_id: Optional[str] = None) -> str:
    """A finished MLflow run outside training: tags, params, finite numeric metrics, every file of ``out_dir`` and
    ``plots`` (matplotlib figures, as ``plots/<name>.png``); returns its id. ``run_id`` fills a run created
    beforehand (a pipeline's child run) instead of a new one in ``experiment``. ``run_name`` ``None`` names the run
    ``<method>-<time>-<model>-<suffix>`` from the tags ``method`` and ``model`` (``<a>-vs-<b>`` from ``model_a`` and
    ``model_b``), like a training run."""
    import mlflow

    tracking_uri = absolute_uri(tracking_uri)
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    if run_id:
        run = client.get_run(run_id)
        for k, v in tags.items():
            client.set_tag(run_id, k, str(v))
    else:
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
        if not run_name:
            model = model_label(tags.get("model")) if tags.get("model") else "-vs-".join(
                model_label(tags[k]) for k in ("model_a", "model_b") if tags.get(k))
            run_name = default_run_name(tags.get("method") or experiment, model)
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
