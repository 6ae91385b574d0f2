"""Checkpoints that a crash cannot spoil, and a Ctrl-C (or a scheduler's SIGTERM) that saves the run.

* :class:`Checkpoint` keeps ``last.ckpt`` every ``every_n_train_steps`` optimizer steps and at the end of training,
  each written under a temporary name and renamed into place: a ``kill -9`` leaves the previous ``last.ckpt``
  whole, never half of a new one, and no older than N steps. (Lightning's ``ModelCheckpoint(save_last=True,
  save_top_k=0)`` alone writes ``last.ckpt`` only at the end of an epoch: a run of ``max_steps`` inside one epoch
  has none until it finishes.)
* :class:`GracefulStop` (added by the CLI to every ``fit``) turns the first SIGINT or SIGTERM into a stop after the
  current optimizer step: ``last.ckpt`` is written, the export runs on the weights so far, the MLflow run is marked
  ``KILLED`` and the command exits with 130. A second Ctrl-C stops at once (the last periodic checkpoint stays).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_post.models.loading import read_checkpoint

log = logging.getLogger(__name__)

# Lightning 2.6 warns at every periodic save under manual optimization that the checkpoint holds the state after the
# optimizer step. For our modules that is the state to resume from (a step is whole once `opt.step()` ran; the
# kill -9 test shows resume == continuous), so the 15-line warning is noise on every save.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps")

#: set when a fit of this process was stopped by a signal: the CLI exits with 130 (128 + SIGINT) afterwards
INTERRUPTED = threading.Event()


def run_dir(trainer: L.Trainer) -> Path:
    """The folder of this run: the parent of the checkpoint folder (``mlruns/runs/<experiment>/<run>``)."""
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and getattr(ckpt, "dirpath", None):
        return Path(ckpt.dirpath).parent
    return Path(trainer.default_root_dir)


def save_atomic(trainer: L.Trainer, filepath: str, weights_only: bool = False) -> None:
    """``trainer.save_checkpoint`` into ``<filepath>.tmp``, then renamed over ``filepath`` (every rank must call it).

    A strategy that writes a folder (DeepSpeed) has the old folder swapped out and removed after the rename.
    """
    tmp = f"{filepath}.tmp"
    trainer.save_checkpoint(tmp, weights_only)  # ends with a barrier: rank 0 has written when it returns
    if not trainer.is_global_zero:
        return
    if os.path.isdir(tmp):
        old = f"{filepath}.old"
        if os.path.exists(filepath):
            os.replace(filepath, old)
        os.replace(tmp, filepath)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, filepath)


class Checkpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` optimizer steps and at the end of training, written atomically.

    Resume a stopped or killed run with ``--ckpt_path <run folder>/checkpoints/last.ckpt`` (the path is printed and
    tagged ``checkpoint_dir`` on the MLflow run).
    """

    def __init__(
        self,
        dirpath: Optional[str] = None,
        every_n_train_steps: Optional[int] = 10,
        save_top_k: int = 0,
        monitor: Optional[str] = None,
        mode: str = "min",
        filename: Optional[str] = None,
        save_weights_only: bool = False,
    ):
        """
        Args:
            dirpath: checkpoint folder (``null`` = ``<run folder>/checkpoints``).
            every_n_train_steps: write ``last.ckpt`` every N optimizer steps (a ``kill -9`` loses at most N steps;
                ``null`` = only at the end of each epoch).
            save_top_k: also keep the k best checkpoints by ``monitor`` (0 = only ``last.ckpt``; -1 = every one).
            monitor: logged metric that ranks checkpoints for ``save_top_k`` (e.g. ``val/loss``).
            mode: ``min`` or ``max`` of ``monitor``.
            filename: name pattern of the top-k checkpoints (Lightning's ``ModelCheckpoint.filename``).
            save_weights_only: leave out the optimizer state (such a checkpoint cannot resume training exactly).
        """
        if every_n_train_steps is not None and every_n_train_steps < 1:
            from lightning_post.errors import ConfigError

            raise ConfigError("Checkpoint.every_n_train_steps", f"must be >= 1 or null, got {every_n_train_steps}")
        super().__init__(dirpath=dirpath, filename=filename, monitor=monitor, mode=mode, save_last=True,
                         save_top_k=save_top_k, every_n_train_steps=every_n_train_steps,
                         save_weights_only=save_weights_only)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        save_atomic(trainer, filepath, self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)

    def save_last_now(self, trainer: L.Trainer) -> str:
        """Write ``last.ckpt`` for the current step (a stop on a signal); returns its path."""
        path = self.format_checkpoint_name(self._monitor_candidates(trainer), self.CHECKPOINT_NAME_LAST)
        if self._last_global_step_saved != trainer.global_step or not os.path.exists(path):
            self._save_checkpoint(trainer, path)
        return path


class GracefulStop(L.Callback):
    """Stop ``fit`` on the first SIGINT/SIGTERM after the current optimizer step, with a checkpoint, the export and
    the MLflow run marked ``KILLED``; exit code 130."""

    def __init__(self, enabled: bool = True):
        """
        Args:
            enabled: catch SIGINT and SIGTERM during ``fit`` (false = Lightning's own handling: exit 1, no checkpoint).
        """
        self.enabled = enabled
        self.requested: Optional[int] = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        if self.requested is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: stop now
                signal.signal(signum, signal.default_int_handler)
                raise KeyboardInterrupt
            return  # a repeated SIGTERM (a scheduler sends SIGKILL itself when its grace period ends)
        self.requested = signum
        print(f"\nlightning-post: {signal.Signals(signum).name}: stopping after this step with a checkpoint and the "
              "export (Ctrl-C again stops at once)", file=sys.stderr, flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # here, not in on_fit_start: Lightning installs its own SIGTERM handler (which ends the fit at the next batch
        # without a checkpoint) between the two; this one replaces it, and Lightning's teardown restores the original
        self.requested = None
        if not self.enabled or threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handler)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if not self.enabled:
            return
        # every rank stops at the same step, whichever got the signal
        if not trainer.strategy.reduce_boolean_decision(self.requested is not None, all=False):
            return
        path = self._save(trainer)
        log.warning("stopped by a signal at step %d; resume with --ckpt_path %s", trainer.global_step, path)
        self._mark_killed(trainer)
        trainer.should_stop = True

    def _save(self, trainer: L.Trainer) -> str:
        ckpt = next((c for c in trainer.checkpoint_callbacks if isinstance(c, Checkpoint)), None)
        if ckpt is not None:
            return ckpt.save_last_now(trainer)
        path = str(run_dir(trainer) / "checkpoints" / "last.ckpt")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_atomic(trainer, path)
        return path

    @staticmethod
    def _mark_killed(trainer: L.Trainer) -> None:
        INTERRUPTED.set()
        for logger in trainer.loggers:
            logger.interrupted = True  # our MLflowLogger finalises such a run as KILLED

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt) or type(exception).__name__ == "SIGTERMException":
            self._mark_killed(trainer)  # Lightning then exits with 1: the CLI turns that into 130
        self._restore()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()


def check_checkpoint_class(path: str, class_path: str, base: Optional[str] = None, setting: str = "ckpt_path") -> None:
    """Refuse a checkpoint written by another method than the configured ``class_path`` (a DPO checkpoint given to
    an SFT config would otherwise have its hyperparameters merged into the SFT config and fail later on tensor
    sizes), or trained from another base model than ``base``."""
    from lightning_post.errors import ConfigError

    ckpt = read_checkpoint(path, setting)
    written_by = (ckpt.get("lightning_post") or {}).get("class")
    name = class_path.rsplit(".", 1)[-1]
    if written_by and written_by.rsplit(".", 1)[-1] != name:
        raise ConfigError(setting, f"{path} was written by {written_by.rsplit('.', 1)[-1]}, but the config's model is "
                                   f"{name}; use the config it was trained with (its MLflow run keeps it as "
                                   "config.yaml)")
    hp = ckpt.get("hyper_parameters") or {}
    if base and hp.get("model_name_or_path") and hp["model_name_or_path"] != base:
        raise ConfigError(setting, f"{path} was trained from {hp['model_name_or_path']!r}, but the config names "
                                   f"{base!r} (model.init_args.model_name_or_path)")
