"""Callbacks that tests add from the command line (``--trainer.callbacks+ tests.helpers.X``)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch


class ParameterChecksum(L.Callback):
    """Write ``{"step", "start", "sum"}`` (sums of every parameter, before and after training) per rank."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.start = None

    @staticmethod
    def _sum(module) -> float:
        with torch.no_grad():
            return float(sum(p.double().sum() for p in module.parameters()))

    def on_train_start(self, trainer, pl_module):
        self.start = self._sum(pl_module)

    def on_train_end(self, trainer, pl_module):
        self.path.mkdir(parents=True, exist_ok=True)
        out = {"step": trainer.global_step, "start": self.start, "sum": self._sum(pl_module)}
        (self.path / f"rank{trainer.global_rank}.json").write_text(json.dumps(out))


class SlowSteps(L.Callback):
    """Sleep after every optimizer step, so that a test can signal or kill a fit of the tiny model mid-way."""

    def __init__(self, seconds: float = 0.5):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, *args):
        import time

        time.sleep(self.seconds)
