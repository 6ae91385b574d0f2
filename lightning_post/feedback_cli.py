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
import sys
from pathlib import Path

from lightning_post.data.feedback import feedback_report, load_feedback, to_pairs, to_sft, to_unpaired
from lightning_post.data.records import DataError
from lightning_post.errors import OutputError
from lightning_post.outputs import check_output_dir, finite_json, write_folder
from lightning_post.tracking import log_run


def write_outputs(events: list[dict], out_dir: Path, good_rating: float, bad_rating: float, min_rating: float,
                  overwrite: bool = False) -> dict:
    datasets = {
        "unpaired.jsonl": to_unpaired(events, good_rating, bad_rating),
        "pairs.jsonl": to_pairs(events),
        "sft.jsonl": to_sft(events, min_rating),
    }
    report = feedback_report(events)
    report["written"] = {name: len(rows) for name, rows in datasets.items()}
    write_folder(out_dir, {**datasets, "report.json": report}, "feedback", overwrite)
    return report


def log_report(report: dict, out_dir: Path, tracking_uri: str, experiment: str) -> str:
    metrics = {f"feedback/{k}": v for k, v in report.items() if isinstance(v, (int, float))}
    metrics.update({f"feedback/written_{name.removesuffix('.jsonl')}": n for name, n in report["written"].items()})
    return log_run(tracking_uri, experiment, None, {"method": "feedback", "source_dir": str(out_dir.resolve())}, {},
                   metrics, out_dir)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="feedback JSON Lines files")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--overwrite", action="store_true",
                    help="write into an existing --out-dir that holds other files (they are kept)")
    ap.add_argument("--good-rating", type=float, default=4.0, help="mean rating at or above which an answer is desirable")
    ap.add_argument("--bad-rating", type=float, default=2.0, help="mean rating at or below which it is undesirable")
    ap.add_argument("--min-rating", type=float, default=4.5, help="mean rating an answer needs to become SFT data")
    ap.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db")
    ap.add_argument("--experiment", default="feedback")
    ap.add_argument("--no-mlflow", action="store_true", help="do not record the report on MLflow")
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    try:
        check_output_dir(out, "feedback", args.overwrite, "--out-dir")
        events = load_feedback(args.files)
    except (DataError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = write_outputs(events, out, args.good_rating, args.bad_rating, args.min_rating, args.overwrite)
    print(json.dumps(finite_json({k: v for k, v in report.items() if k != "rating_distribution"}), indent=1,
                     allow_nan=False))
    if not args.no_mlflow:
        if args.tracking_uri.startswith("sqlite:///mlruns/"):  # the default store: its folder must exist
            Path("mlruns").mkdir(exist_ok=True)
        print("mlflow run:", log_report(report, out, args.tracking_uri, args.experiment))
    return 0


if __name__ == "__main__":
    sys.exit(main())
