"""Prompt-only data for RL (PPO, RLOO, GRPO): the policy writes the replies itself.

Records may be any prompt layout of :mod:`lightning_post.records.prompts` (a prompt, a conversation, an instruction
or a preference pair, whose prompt is used), so the prompts of a preference dataset serve directly. Prompts are
formatted by the same templates as SFT and DPO, so the policy sees exactly the text it was trained on, and
left-padded for batched generation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from lightning_post.data.base import NOT_TAKEN, PostDataModule, Rows, hold_out
from lightning_post.errors import UserError
from lightning_post.records.files import Files, as_list
from lightning_post.records.prompts import load_prompt_records
from lightning_post.records.templates import check_template
from lightning_post.records.tokenize import encode_prompt, prompt_ids

log = logging.getLogger(__name__)


@dataclass
class PromptExample:
    ids: list[int]
    record: dict  # the normalised prompt (for reward models and reward functions)
    index: int


def collate_prompts(examples: list[PromptExample], pad_id: int) -> dict:
    """Left-padded ``input_ids``/``attention_mask`` ``(B, P)`` for generation, plus ``index`` and the records."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, width - len(e.ids):] = torch.tensor(e.ids)
        mask[i, width - len(e.ids):] = 1
    return {"input_ids": ids, "attention_mask": mask, "index": torch.tensor([e.index for e in examples]),
            "records": [e.record for e in examples]}


class PromptDataModule(PostDataModule):
    """Prompts for on-policy RL; a malformed record stops the run with file, line and field before anything is
    written. Duplicate prompts (e.g. the two records of a pair file that share a prompt) are kept once."""

    def __init__(
        self,
        train_files: Files = None,
        val_files: Files = None,
        val_fraction: float = 0.1,
        val_size: Optional[int] = None,
        max_train_prompts: Optional[int] = None,
        max_prompt_length: int = 256,
        **kwargs,
    ):
        """
        Args:
            train_files: JSON/JSONL/parquet files of prompts (or pairs); ``None`` = the prompts of the bundled
                preference dataset.
            val_files: held-out prompts (validation scores the policy's replies to them); ``None`` = hold out
                ``val_fraction`` (or ``val_size``) of the training prompts.
            val_fraction: share of prompts held out when ``val_files`` is not given.
            val_size: exact number of held-out prompts (overrides ``val_fraction``).
            max_train_prompts: use at most this many training prompts (after holding out), in file order.
            max_prompt_length: longer prompts lose tokens from the left (the request at the end is kept); the
                policy's replies are as long as the method's ``max_new_tokens`` (this module has no ``max_length``).
            **kwargs: the knobs every data module shares (:class:`~lightning_post.data.base.PostDataModule`);
                ``batch_size`` is the prompts per rollout per device, each answered ``samples_per_prompt`` times.
        """
        super().__init__(max_length=NOT_TAKEN, **kwargs)
        check_template(self.hparams.template)
        if max_prompt_length < 8:
            raise UserError(f"max_prompt_length must be at least 8, got {max_prompt_length}")
        self.truncated = 0

    def _read_all(self) -> dict[str, list[dict]]:
        hp = self.hparams
        train = load_prompt_records(as_list(hp.train_files) or [self.bundled_file()])
        if hp.val_files is not None:
            val = load_prompt_records(as_list(hp.val_files))
        else:
            train, val = hold_out(train, hp.seed, hp.val_fraction, hp.val_size)
        if hp.max_train_prompts is not None:
            train = train[: hp.max_train_prompts]
        return self.safety_filtered({"train": train, "val": val})

    def encode(self, records: list[dict]) -> list[PromptExample]:
        hp, tok = self.hparams, self._tokenizer()
        out = []
        for i, rec in enumerate(records):
            ids = prompt_ids(rec["prompt"], rec["raw_prompt"], hp.template, tok)
            if len(ids) > hp.max_prompt_length:
                self.truncated += 1
                bos = [ids[0]] if ids[0] == tok.bos_token_id else []
                ids = bos + ids[len(ids) - hp.max_prompt_length + len(bos):]
            out.append(PromptExample(ids, rec, i))
        return out

    def prepare_data(self) -> None:
        self._records = self._read_all()  # validated before the MLflow run exists

    def setup(self, stage: Optional[str] = None) -> None:
        if "train" in self.splits:
            return
        records = getattr(self, "_records", None) or self._read_all()
        self._records = None
        for split in ("train", "val"):
            self.splits[split] = Rows(self.encode(records[split]))
        self.splits["test"] = self.splits["val"]
        if self.truncated:
            log.warning("%d prompts were cut from the left to max_prompt_length=%d", self.truncated,
                        self.hparams.max_prompt_length)
        log.info("prompts: %d train, %d held out", len(self.splits["train"]), len(self.splits["val"]))

    def collate(self, examples: list[PromptExample]) -> dict:
        return collate_prompts(examples, self._tokenizer().pad_token_id)

    def encode_prompt(self, text: str) -> list[int]:
        return encode_prompt(text, self.hparams.template, self._tokenizer())
