"""``lightning-post-feedback``: validate deployment feedback and write KTO, preference and SFT datasets + a report.

    lightning-post-feedback feedback.jsonl --out-dir data/feedback
    lightning-post fit --config configs/dpo.yaml --data.init_args.train_files data/feedback/pairs.jsonl

Writes ``<out-dir>/{unpaired,pairs,sft}.jsonl`` and ``report.json`` (all into a temporary folder first, then moved
into place, so a bad event leaves nothing half-written), and records the report on an MLflow run (experiment
``feedback``): counts and agreement as metrics, the report and the files as artifacts.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

from lightning_post.data.feedback import feedback_report, load_feedback, to_pairs, to_sft, to_unpaired
from lightning_post.data.records import DataError


def write_outputs(events: list[dict], out_dir: Path, good_rating: float, bad_rating: float, min_rating: float) -> dict:
    datasets = {
        "unpaired.jsonl": to_unpaired(events, good_rating, bad_rating),
        "pairs.jsonl": to_pairs(events),
        "sft.jsonl": to_sft(events, min_rating),
    }
    report = feedback_report(events)
    report["written"] = {name: len(rows) for name, rows in datasets.items()}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        for name, rows in datasets.items():
            (tmp / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def log_report(report: dict, out_dir: Path, tracking_uri: str, experiment: str) -> str:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run = client.create_run(exp_id, tags={"method": "feedback", "source_dir": str(out_dir.resolve())})
    for key, value in report.items():
        if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
            client.log_metric(run.info.run_id, f"feedback/{key}", float(value))
    for name, count in report["written"].items():
        client.log_metric(run.info.run_id, f"feedback/written_{name.removesuffix('.jsonl')}", count)
    for path in sorted(out_dir.iterdir()):
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="feedback JSON Lines files")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--good-rating", type=float, default=4.0, help="mean rating at or above which an answer is desirable")
    ap.add_argument("--bad-rating", type=float, default=2.0, help="mean rating at or below which it is undesirable")
    ap.add_argument("--min-rating", type=float, default=4.5, help="mean rating an answer needs to become SFT data")
    ap.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db")
    ap.add_argument("--experiment", default="feedback")
    ap.add_argument("--no-mlflow", action="store_true", help="do not record the report on MLflow")
    args = ap.parse_args(argv)
    try:
        events = load_feedback(args.files)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    report = write_outputs(events, out, args.good_rating, args.bad_rating, args.min_rating)
    print(json.dumps({k: v for k, v in report.items() if k != "rating_distribution"}, indent=1))
    if not args.no_mlflow:
        if args.tracking_uri.startswith("sqlite:///mlruns/"):  # the default store: its folder must exist
            Path("mlruns").mkdir(exist_ok=True)
        print("mlflow run:", log_report(report, out, args.tracking_uri, args.experiment))
    return 0


if __name__ == "__main__":
    sys.exit(main())
