"""Write the scores of ``lightning-post predict`` (reward models) to a JSON Lines file and to MLflow."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import lightning as L

from lightning_post.callbacks.checkpoint import run_dir
from lightning_post.tracking import mlflow_logger

log = logging.getLogger(__name__)


def scored_records(records: list[dict], rows: list[tuple[int, int, float]]) -> list[dict[str, Any]]:
    """Attach scores to the input records: ``score`` for a (prompt, response) record; ``score_chosen``,
    ``score_rejected`` and ``score_margin`` for a preference pair (side 0 = chosen, 1 = rejected).

    >>> scored_records([{"chosen": "a", "rejected": "b"}, {"response": "c"}], [(0, 0, 2.0), (0, 1, 0.5), (1, 0, 1.0)])
    [{'chosen': 'a', 'rejected': 'b', 'score_chosen': 2.0, 'score_rejected': 0.5, 'score_margin': 1.5}, {'response': 'c', 'score': 1.0}]
    """
    sides: dict[int, dict[int, float]] = {}
    for record, side, score in rows:
        sides.setdefault(record, {})[side] = score
    out = []
    for i, rec in enumerate(records):
        got = sides.get(i, {})
        rec = dict(rec)
        if "chosen" in rec and rec.get("chosen") is not None:
            rec.update(score_chosen=got.get(0), score_rejected=got.get(1))
            if got.get(0) is not None and got.get(1) is not None:
                rec["score_margin"] = got[0] - got[1]
        else:
            rec["score"] = got.get(0)
        out.append(rec)
    return out


class ScoreWriter(L.Callback):
    """Collect ``predict_step`` outputs and write every input record with its reward score."""

    def __init__(self, output_path: Optional[str] = None):
        """
        Args:
            output_path: JSON Lines file to write; ``None`` = ``<run folder>/scores.jsonl``.
        """
        self.output_path = output_path
        self.rows: list[tuple[int, int, float]] = []
        self.written: Optional[Path] = None

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if isinstance(outputs, dict) and "score" in outputs:
            self.rows += list(zip(outputs["record"].tolist(), outputs["side"].tolist(), outputs["score"].tolist()))

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.rows:
            return
        records = scored_records(trainer.datamodule.predict_records, self.rows)
        path = Path(self.output_path) if self.output_path else run_dir(trainer) / "scores.jsonl"
        if trainer.world_size > 1:
            path = path.with_suffix(f".rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)  # written whole, then renamed
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        self.written = path
        log.info("wrote %d scored records to %s", len(records), path)
        logger = mlflow_logger(trainer)
        if logger is not None and trainer.is_global_zero:
            logger.experiment.log_artifact(logger.run_id, str(path))
