"""MLflow tracking: the default logger (SQLite store under ``mlruns/``), run tags, flattened params, the config."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.loggers import MLFlowLogger

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
        super().__init__(
            experiment_name=experiment_name or "default",
            run_name=run_name,
            tracking_uri=tracking_uri,
            artifact_location=artifact_location,
            tags=tags,
            run_id=run_id,
        )



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


def write_folder(out_dir: Path, files: dict[str, Any]) -> None:
    """Write ``{name: value}`` into a temporary folder, then move it to ``out_dir``. A ``.jsonl`` name takes a list of
    rows, a string is written as text, a matplotlib figure as an image, anything else as JSON; names may hold
    sub-folders (``plots/bias.png``)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        for name, value in files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if hasattr(value, "savefig"):
                value.savefig(target, dpi=110)
                continue
            text = value if isinstance(value, str) else \
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in value) if name.endswith(".jsonl") \
                else json.dumps(value, indent=1, ensure_ascii=False)
            target.write_text(text, encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    for path in sorted(out_dir.iterdir()):
        if path.is_dir():
            client.log_artifacts(run.info.run_id, str(path), path.name)
        else:
            client.log_artifact(run.info.run_id, str(path))
    for name, fig in (plots or {}).items():
        client.log_figure(run.info.run_id, fig, f"plots/{name}.png")
    client.set_terminated(run.info.run_id)
    return run.info.run_id
