"""CAIDataModule: prompts for the Constitutional AI loop in, the loop's revisions out as SFT data.

``prepare_data`` reads and validates the prompt files (nothing is generated here); :class:`CAIModule` then writes
``<output_dir>/revisions.jsonl`` (and ``feedback.jsonl``), and ``setup`` reads the revisions as instruction data:
each prompt with its final revision as the reply.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from torch.utils.data import DataLoader

from lightning_post.data.appendable import AppendableJsonl
from lightning_post.data.base import hold_out
from lightning_post.data.instruction import InstructionDataModule
from lightning_post.errors import UserError
from lightning_post.records.files import DataError, Files, as_list, default_preference_file
from lightning_post.records.prompts import load_prompt_items

log = logging.getLogger(__name__)


class CAIDataModule(InstructionDataModule):
    """Prompts for critique -> revision, and the revisions as supervised data (SL-CAI).

    Generation is resumable: prompts whose records are already in ``revisions.jsonl`` are not generated again.
    """

    def __init__(
        self,
        prompt_files: Files = None,
        first_turn_only: bool = True,
        max_prompts: Optional[int] = 64,
        skip_invalid: bool = False,
        output_dir: str = "mlruns/cai",
        only_revised: bool = False,
        generation_batch_size: int = 8,
        val_fraction: float = 0.1,
        **kwargs,
    ):
        """
        Args:
            prompt_files: prompt or preference files (JSON/JSONL(.gz)/parquet); ``None`` = the prompts of the bundled
                preference dataset. Red-team prompts: ``../shared/data/preference/*.jsonl.gz``.
            first_turn_only: keep only each conversation's first user turn (HH-RLHF's red-team requests).
            max_prompts: use at most this many distinct prompts, in file order (``null`` = all).
            skip_invalid: skip (and count) malformed records instead of stopping at the first.
            output_dir: folder of ``revisions.jsonl`` and ``feedback.jsonl``; a rerun continues them.
            only_revised: train only on prompts whose answer the model decided to revise.
            generation_batch_size: prompts per generation batch (and per ``predict`` batch).
            val_fraction: share of the revised prompts held out for validation.
            **kwargs: the SFT data settings (``truncation``, ``packing``) and the knobs every data module shares
                (:class:`~lightning_post.data.base.PostDataModule`); ``template`` formats the revision data.
        """
        # the training data is what the loop generates: no files of it, and no safety filter on it
        super().__init__(train_files=None, val_files=None, test_files=None, val_fraction=val_fraction,
                         safety_filter=None, **kwargs)
        self.items: Optional[list[dict]] = None
        self.invalid: list[DataError] = []

    @property
    def revisions(self) -> AppendableJsonl:
        return AppendableJsonl(Path(self.hparams.output_dir) / "revisions.jsonl")

    @property
    def feedback(self) -> AppendableJsonl:
        return AppendableJsonl(Path(self.hparams.output_dir) / "feedback.jsonl")

    def prompt_items(self) -> list[dict]:
        if self.items is None:
            hp = self.hparams
            self.items, self.invalid = load_prompt_items(as_list(hp.prompt_files) or [default_preference_file()],
                                                         hp.first_turn_only, hp.max_prompts, hp.skip_invalid)
            if self.invalid:
                log.warning("skipped %d malformed prompt records, the first: %s", len(self.invalid), self.invalid[0])
            if not self.items:
                raise UserError(f"no prompt in {hp.prompt_files or default_preference_file()}")
        return self.items

    def pending(self, store: AppendableJsonl) -> list[dict]:
        """Prompts with no record in ``store`` yet."""
        done = store.done_ids()
        return [it for it in self.prompt_items() if it["id"] not in done]

    def prepare_data(self) -> None:
        self.prompt_items()  # validated before the MLflow run or any output exists

    def setup(self, stage: Optional[str] = None) -> None:
        if stage == "predict":  # predict generates the revisions; there is no training data to build yet
            self.prompt_items()
            return
        super().setup(stage)

    def _read_all(self) -> dict[str, Optional[list[dict]]]:
        """The final revision of every prompt as a chat example ``prompt -> revision``."""
        hp = self.hparams
        records = self.revisions.read()
        if not records:
            raise UserError(f"{self.revisions.path} has no records: the Constitutional AI loop must run first "
                             "(lightning-post fit or predict with model CAIModule)")
        last: dict[str, dict] = {}
        for rec in records:
            if rec["id"] not in last or rec["round"] >= last[rec["id"]]["round"]:
                last[rec["id"]] = rec
        revised_ids = {rec["id"] for rec in records if rec["revised"]}
        examples = [{"messages": [*rec["prompt"], {"role": "assistant", "content": rec["revision"]}]}
                    for key, rec in last.items() if rec["revision"].strip() and
                    (not hp.only_revised or key in revised_ids)]
        if not examples:
            raise UserError(f"{self.revisions.path}: no usable revision (only_revised={hp.only_revised})")
        train, val = hold_out(examples, hp.seed, hp.val_fraction)
        return {"train": train, "val": val or train[:1], "test": None}

    def predict_dataloader(self) -> DataLoader:
        """Batches of prompts not yet in ``revisions.jsonl`` (``lightning-post predict`` generates them)."""
        return DataLoader(self.pending(self.revisions), batch_size=self.hparams.generation_batch_size,
                          collate_fn=list)
