"""CAIDataModule: prompts for the Constitutional AI loop in, the loop's revisions out as SFT data.

``prepare_data`` reads and validates the prompt files (nothing is generated here); :class:`CAIModule` then writes
``<output_dir>/revisions.jsonl`` (and ``feedback.jsonl``), and ``setup`` reads the revisions as instruction data:
each prompt with its final revision as the reply.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Optional

from torch.utils.data import DataLoader

from lightning_post.errors import UserError
from lightning_post.data.appendable import AppendableJsonl
from lightning_post.data.base import hold_out
from lightning_post.data.instruction import Files, InstructionDataModule, _as_list
from lightning_post.data.preference import default_preference_file
from lightning_post.data.prompts import normalize_prompt_record
from lightning_post.data.records import DataError, raw_records
from lightning_post.models.loading import DEFAULT_MODEL

log = logging.getLogger(__name__)


def prompt_id(messages: list[dict]) -> str:
    """A stable id of a prompt (its text), so a resumed run recognises the prompts it has done."""
    text = "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in messages)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def load_prompt_items(files: list[str], first_turn_only: bool, max_prompts: Optional[int],
                      skip_invalid: bool = False) -> tuple[list[dict], list[DataError]]:
    """``[{"id", "prompt": messages}]`` from prompt or preference files, duplicates kept once, in file order."""
    skipped: list[DataError] = []

    def normalize(record, where):
        try:
            return normalize_prompt_record(record, where)
        except DataError as e:
            if not skip_invalid:
                raise
            if not any(str(e) == str(s) for s in skipped):  # the file is read twice (line check, then datasets)
                skipped.append(e)
            return None

    items, seen = [], set()
    for path in files:
        for _, rec in raw_records(path, normalize):
            if rec is None:
                continue
            messages = rec["prompt"][:1] if first_turn_only else rec["prompt"]
            key = prompt_id(messages)
            if key not in seen:
                seen.add(key)
                items.append({"id": key, "prompt": messages})
            if max_prompts is not None and len(items) >= max_prompts:
                return items, skipped
    return items, skipped


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
        template: str = "chat",
        tokenizer: str = DEFAULT_MODEL,
        max_length: int = 512,
        truncation: str = "right",
        packing: bool = False,
        batch_size: int = 8,
        eval_batch_size: int = 8,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
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
            template: SFT template of the revision data (``chat`` = the tokenizer's chat template).
            tokenizer: tokenizer name or path (linked to ``model.model_name_or_path`` by the CLI).
            max_length: longest tokenised example in tokens.
            truncation: ``right`` (keep the first ``max_length`` tokens) or ``drop``.
            packing: pack several examples per row.
            batch_size: rows per optimizer step per device.
            eval_batch_size: rows per validation batch.
            shuffle: shuffle training rows each epoch (seeded).
            seed: seed of the validation split and the shuffling.
            num_workers: DataLoader worker processes.
        """
        super().__init__(None, None, None, val_fraction, template, tokenizer, max_length, truncation, packing,
                         batch_size, eval_batch_size, shuffle, seed, num_workers)
        self.save_hyperparameters()
        self.check_settings()
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
            self.items, self.invalid = load_prompt_items(_as_list(hp.prompt_files) or [default_preference_file()],
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
