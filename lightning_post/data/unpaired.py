"""Unpaired preference examples for KTO: ``{"prompt", "completion", "label"}`` (``label`` true = desirable).

This is the layout ``lightning-post data feedback`` writes (``unpaired.jsonl``) and TRL's unpaired format. ``prompt`` is a
string or a list of chat messages; ``completion`` a string or one assistant message.

Batches (see :func:`collate_unpaired`) hold the B examples and, under ``kl_*`` keys, B mismatched rows
``prompt_i + completion_{(i+1) mod B}`` from which KTO estimates its KL reference point.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Optional, Sequence

import torch
from torch.utils.data import DataLoader

from lightning_post.data.base import PostDataModule, Rows, hold_out
from lightning_post.data.collate import collate_pairs, collate_rows
from lightning_post.errors import UserError
from lightning_post.records.files import Files, as_list, raw_records
from lightning_post.records.preference import load_preference_records
from lightning_post.records.templates import check_template
from lightning_post.records.tokenize import (
    IGNORE_INDEX, PairExample, PairStats, Tokenized, encode_prompt, reply_segments, split_prompt_reply, tokenize_pair,
    tokenize_segments, truncate_pair,
)
from lightning_post.records.unpaired import normalize_unpaired_record, unpaired_from_pairs


@dataclass
class UnpairedExample:
    prompt: list[int]
    completion: list[int]
    desirable: bool
    index: int = 0


def _row(prompt: list[int], completion: list[int], max_length: int, min_prompt_length: int, bos_id) -> Tokenized:
    prompt, completion, _, _, _ = truncate_pair(prompt, completion, completion, max_length, min_prompt_length, bos_id)
    return Tokenized(prompt + completion, [IGNORE_INDEX] * len(prompt) + completion)


def collate_unpaired(examples: Sequence[UnpairedExample], pad_id: int, max_length: int, min_prompt_length: int,
                     bos_id=None) -> dict:
    """Rows ``prompt_i + completion_i`` (labels on the completion), ``desirable`` and ``index`` ``(B,)``, and the
    mismatched rows ``prompt_i + completion_{(i+1) mod B}`` under ``kl_input_ids``, ``kl_labels``, ... (KTO's KL
    estimate pairs each prompt with another example's completion, as TRL does by shifting completions by one)."""
    B = len(examples)
    batch = collate_rows([[_row(e.prompt, e.completion, max_length, min_prompt_length, bos_id)] for e in examples],
                         pad_id)
    kl = collate_rows([[_row(e.prompt, examples[(i + 1) % B].completion, max_length, min_prompt_length, bos_id)]
                       for i, e in enumerate(examples)], pad_id)
    batch.update({f"kl_{k}": v for k, v in kl.items()})
    batch["desirable"] = torch.tensor([e.desirable for e in examples])
    batch["index"] = torch.tensor([e.index for e in examples])
    return batch


# ---- the data module ---------------------------------------------------------------------------------------------
log = logging.getLogger(__name__)


class UnpairedDataModule(PostDataModule):
    """KTO data: ``{"prompt", "completion", "label"}`` files (e.g. ``lightning-post data feedback``'s ``unpaired.jsonl``)
    -> tokens; batches carry the mismatched KL rows (see :func:`collate_unpaired`). A malformed row stops the run
    with file, line and field before anything is written."""

    def __init__(
        self,
        train_files: Files = None,
        val_files: Files = None,
        test_files: Files = None,
        val_pair_files: Files = None,
        val_fraction: float = 0.1,
        min_prompt_length: int = 64,
        **kwargs,
    ):
        """
        Args:
            train_files: unpaired JSON/JSONL/parquet files; ``None`` = the bundled preference pairs, each split into
                a desirable (chosen) and an undesirable (rejected) example.
            val_files: validation files; ``None`` = hold out ``val_fraction`` of the training examples.
            test_files: test files for ``lightning-post test``; ``None`` = the validation split.
            val_pair_files: preference pairs (any layout PreferenceDataModule reads) on which validation also
                measures paired accuracy: the share of pairs whose chosen reply gets the higher implicit reward
                (``val/pairs/accuracies``, comparable with DPO's ``val/rewards/accuracies``). Keep them out of the
                training feedback.
            val_fraction: share of training examples held out when ``val_files`` is not given.
            min_prompt_length: prompt tokens always kept when truncating (an example longer than ``max_length``
                loses prompt tokens from the left first).
            **kwargs: the knobs every data module shares (:class:`~lightning_post.data.base.PostDataModule`);
                ``batch_size`` is also the group the KL rows are drawn from.
        """
        super().__init__(**kwargs)
        check_template(self.hparams.template)
        max_length = self.hparams.max_length
        if not 0 < min_prompt_length < max_length:
            raise UserError(f"need 0 < min_prompt_length ({min_prompt_length}) < max_length ({max_length})")

    def _load(self, files: Files) -> list[dict]:
        return [rec for path in as_list(files) for _, rec in raw_records(path, normalize_unpaired_record)]

    def _read_all(self) -> dict[str, Optional[list[dict]]]:
        hp = self.hparams
        train = self._load(hp.train_files) if hp.train_files is not None else unpaired_from_pairs(self.bundled_file())
        if hp.val_files is not None:
            val = self._load(hp.val_files)
        else:
            train, val = hold_out(train, hp.seed, hp.val_fraction)
        test = self._load(hp.test_files) if hp.test_files is not None else None
        return self.safety_filtered({"train": train, "val": val, "test": test})

    def encode(self, records: list[dict]) -> list[UnpairedExample]:
        hp, tok = self.hparams, self._tokenizer()
        out = []
        for i, rec in enumerate(records):
            prompt_text, reply_text = reply_segments(rec["prompt"], rec["raw_prompt"], rec["completion"], hp.template, tok)
            prompt, completion = split_prompt_reply(
                tokenize_segments([(prompt_text, False), (reply_text, True)], tok, hp.template == "chat"))
            out.append(UnpairedExample(prompt, completion, rec["label"], i))
        return out

    def prepare_data(self) -> None:
        self._records = self._read_all()  # validated before the MLflow run exists

    def setup(self, stage: Optional[str] = None) -> None:
        if "train" in self.splits:
            return
        hp = self.hparams
        records = getattr(self, "_records", None) or self._read_all()
        self._records = None
        for split in ("train", "val", "test"):
            if records[split] is not None:
                self.splits[split] = Rows(self.encode(records[split]))
        self.splits.setdefault("test", self.splits["val"])
        if hp.val_pair_files is not None:
            self.splits["val_pairs"] = Rows(self.encode_pairs(load_preference_records(as_list(hp.val_pair_files))))
        n = len(records["train"])
        good = sum(r["label"] for r in records["train"])
        log.info("train: %d unpaired examples, %d desirable, %d undesirable", n, good, n - good)

    def collate(self, examples: list[UnpairedExample]) -> dict:
        hp, tok = self.hparams, self._tokenizer()
        return collate_unpaired(examples, tok.pad_token_id, hp.max_length, hp.min_prompt_length, tok.bos_token_id)

    def encode_pairs(self, located: list[tuple[str, dict]]) -> list[PairExample]:
        """Tokenise held-out preference pairs (each side truncated like an unpaired example); identical pairs are
        left out, since neither side can be preferred."""
        hp, tok, stats = self.hparams, self._tokenizer(), PairStats(pairs=len(located))
        kept = [pair for _, pair in located if pair["chosen"].strip() != pair["rejected"].strip()]
        if not kept:
            raise UserError(f"val_pair_files {hp.val_pair_files!r} hold no pair with two different replies")
        return [tokenize_pair(pair, hp.template, tok, hp.max_length, hp.min_prompt_length, stats, i)
                for i, pair in enumerate(kept)]

    def val_dataloader(self):
        """The unpaired validation examples, then (when ``val_pair_files`` is set) the held-out pairs."""
        if "val_pairs" not in self.splits:
            return self.eval_loader("val")
        pairs = DataLoader(
            self.splits["val_pairs"], batch_size=self.hparams.eval_batch_size, shuffle=False,
            collate_fn=partial(collate_pairs, pad_id=self._tokenizer().pad_token_id),
            num_workers=self.hparams.num_workers, generator=self._generator(),
        )
        return [self.eval_loader("val"), pairs]

    def encode_prompt(self, text: str) -> list[int]:
        return encode_prompt(text, self.hparams.template, self._tokenizer())
