"""``lightning-post data feedback``: deployment feedback -> KTO, preference and SFT files and a report (the old
``lightning-post-feedback`` script runs the same command: :mod:`lightning_post.feedback_cli`).

    lightning-post data feedback --files feedback.jsonl --output_dir data/feedback
"""

from __future__ import annotations

import json
from pathlib import Path

from lightning_post.commands.base import Paths, Recorded, expand
from lightning_post.records.feedback import feedback_report, load_feedback, to_pairs, to_sft, to_unpaired
from lightning_post.errors import ConfigError
from lightning_post.outputs import check_output_dir, finite_json, write_folder
from lightning_post.tracking import log_run


class DataFeedback(Recorded):
    """Deployment feedback (thumbs, 1-5 ratings, side-by-side comparisons) -> ``unpaired.jsonl`` (KTO),
    ``pairs.jsonl`` (DPO, reward models), ``sft.jsonl`` (the best-rated answers) and ``report.json``, written into a
    temporary folder and moved into place, and recorded on MLflow (counts and agreement as metrics)."""

    def __init__(
        self,
        files: Paths,
        output_dir: str,
        good_rating: float = 4.0,
        bad_rating: float = 2.0,
        min_rating: float = 4.5,
        experiment_name: str = "feedback",
        log_mlflow: bool = True,
        **kwargs,
    ):
        """
        Args:
            files: feedback JSON Lines files (a path, a list, or quoted glob patterns); the event schema is in
                docs/data_formats.md.
            output_dir: folder of ``unpaired.jsonl``, ``pairs.jsonl``, ``sft.jsonl`` and ``report.json``.
            good_rating: mean rating at or above which an answer is desirable (KTO).
            bad_rating: mean rating at or below which an answer is undesirable (KTO).
            min_rating: mean rating an answer needs to become SFT data.
            experiment_name: MLflow experiment.
            log_mlflow: record the report on an MLflow run.
            run_name: MLflow run name (``null`` = ``feedback-<time>-<suffix>``).
            **kwargs: the settings of :class:`~lightning_post.commands.base.Recorded`.
        """
        super().__init__(**kwargs)
        self.keep(locals())
        self.files = expand(files)
        if not self.files:
            raise ConfigError("files", "give at least one feedback file")
        if not bad_rating < good_rating:
            raise ConfigError("bad_rating", f"must be below good_rating ({good_rating}), got {bad_rating}")

    def run(self) -> dict:
        out = Path(self.output_dir)
        check_output_dir(out, "feedback", self.overwrite, "output_dir")
        events = load_feedback(self.files)
        datasets = {
            "unpaired.jsonl": to_unpaired(events, self.good_rating, self.bad_rating),
            "pairs.jsonl": to_pairs(events),
            "sft.jsonl": to_sft(events, self.min_rating),
        }
        report = feedback_report(events)
        report["written"] = {name: len(rows) for name, rows in datasets.items()}
        write_folder(out, {**datasets, "report.json": report}, "feedback", self.overwrite)
        print(json.dumps(finite_json({k: v for k, v in report.items() if k != "rating_distribution"}), indent=1,
                         allow_nan=False))
        if self.log_mlflow:
            metrics = {f"feedback/{k}": v for k, v in report.items() if isinstance(v, (int, float))}
            metrics.update({f"feedback/written_{n.removesuffix('.jsonl')}": c for n, c in report["written"].items()})
            run_id = log_run(self.tracking_uri, self.experiment_name, self.run_name,
                             {"method": "feedback", "source_dir": str(out.resolve())}, vars(self), metrics, out)
            print("mlflow run:", run_id)
            report["mlflow_run_id"] = run_id
        return report
