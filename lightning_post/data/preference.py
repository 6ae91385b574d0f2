"""PreferenceDataModule: (prompt, chosen, rejected) files -> tokenised pairs batched as ``[chosen; rejected]``.

Shared by RewardModule and DPOModule (and later CAI/PPO). Record layouts are documented in
:mod:`lightning_post.records.preference`, the truncation policy in :func:`lightning_post.records.tokenize.truncate_pair`.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lightning_post.data.base import PostDataModule, Rows, hold_out
from lightning_post.data.collate import collate_pairs, collate_rows
from lightning_post.errors import UserError
from lightning_post.quality.gate import QualityGate
from lightning_post.quality.report import gate_findings, quality_report
from lightning_post.records.annotations import annotations_from_preferences
from lightning_post.records.files import DataError, Files, as_list, raw_records
from lightning_post.records.preference import load_preference_records, normalize_scoring_record
from lightning_post.records.templates import check_template
from lightning_post.records.tokenize import (
    IGNORE_INDEX, PairExample, PairStats, Tokenized, encode_prompt, reply_segments, split_prompt_reply,
    tokenize_pair, tokenize_segments, truncate_pair,
)

log = logging.getLogger(__name__)


class PreferenceDataModule(PostDataModule):
    """Preference pairs for reward models and DPO: files -> validated pairs -> template -> tokens.

    Batches hold ``2B`` rows, ``[chosen; rejected]``, with labels on the reply tokens only, plus per-pair ``margin``,
    ``weight`` and ``index``. Every file is validated completely before training starts; a bad record stops the run
    with its file, line and field, and nothing (MLflow run, checkpoint) is written.
    """

    def __init__(
        self,
        train_files: Files = None,
        val_files: Files = None,
        test_files: Files = None,
        predict_files: Files = None,
        val_fraction: float = 0.1,
        val_size: Optional[int] = None,
        max_train_pairs: Optional[int] = None,
        min_prompt_length: int = 64,
        drop_identical: bool = True,
        skip_invalid: bool = False,
        quality_gate: Optional[QualityGate] = None,
        **kwargs,
    ):
        """
        Args:
            train_files: JSON/JSONL(.gz)/parquet files or saved dataset folders; ``None`` = the bundled dataset.
            val_files: validation files; ``None`` = hold out part of the training pairs (``val_size``/``val_fraction``).
            test_files: test files for ``lightning-post test``; ``None`` = the validation split.
            predict_files: pairs or (prompt, response) records to score with ``lightning-post predict``.
            val_fraction: share of training pairs held out for validation when ``val_files`` is not given.
            val_size: number of pairs held out instead of ``val_fraction`` (a fixed held-out set never trained on).
            max_train_pairs: train on at most this many pairs (after holding out validation), in file order.
            min_prompt_length: prompt tokens always kept when truncating (a pair longer than ``max_length`` loses
                prompt tokens from the left first); replies are cut from the right beyond it.
            drop_identical: drop (and report) pairs whose chosen and rejected replies are the same text.
            skip_invalid: leave out malformed records (each is logged with file, line, field; counted in
                ``data/invalid_pairs``) instead of stopping; for public datasets with a few broken rows.
            quality_gate: check the training pairs before training (length bias, pairs labelled both ways,
                intransitive preferences, duplicate prompts; see ``lightning-post data report``): ``mode: warn`` logs
                what it finds, ``mode: fail`` stops before anything is written. ``null`` = no check.
            **kwargs: the knobs every data module shares (:class:`~lightning_post.data.base.PostDataModule`).
        """
        super().__init__(**kwargs)
        check_template(self.hparams.template)
        max_length = self.hparams.max_length
        if not 0 < min_prompt_length < max_length:
            raise UserError(f"need 0 < min_prompt_length ({min_prompt_length}) < max_length ({max_length})")
        self.stats: dict[str, PairStats] = {}
        self.predict_records: list[dict] = []
        self.invalid: list[DataError] = []
        self.quality: Optional[dict] = None

    # ---- preparation -------------------------------------------------------------------------------------------
    def _read_all(self) -> dict[str, Optional[list[tuple[str, dict]]]]:
        hp = self.hparams
        skipped: Optional[list[DataError]] = [] if hp.skip_invalid else None
        train = load_preference_records(as_list(hp.train_files) or [self.bundled_file()], skipped)
        if hp.val_files is not None:
            val = load_preference_records(as_list(hp.val_files), skipped)
        else:
            train, val = hold_out(train, hp.seed, hp.val_fraction, hp.val_size)
        if hp.max_train_pairs is not None:
            train = train[: hp.max_train_pairs]
        test = load_preference_records(as_list(hp.test_files), skipped) if hp.test_files is not None else None
        self.invalid = skipped or []
        for e in self.invalid:
            log.warning("skipped invalid pair: %s", e)
        if hp.quality_gate is not None:
            self._check_quality(train)
        return self.safety_filtered({"train": train, "val": val, "test": test})

    def _check_quality(self, train: list[tuple[str, dict]]) -> None:
        """Run the quality gate on the training pairs (chosen wins; the order given to the checks is random)."""
        gate = self.hparams.quality_gate
        gate = QualityGate(**gate) if isinstance(gate, dict) else gate
        anns = annotations_from_preferences(train, "train",
                                            self.hparams.seed)
        report = quality_report(anns)
        findings = gate_findings(report, gate, position_known=False)
        self.quality = {"report": report, "findings": findings}
        for f in findings:
            log.warning("quality gate (%s): %s", gate.mode, f)
        if findings and gate.mode == "fail":
            files = ", ".join(as_list(self.hparams.train_files) or [self.bundled_file()])
            raise DataError(files, None, "quality gate failed: " + "; ".join(findings))

    def setup_metrics(self) -> dict[str, float]:
        """The gate's headline figures as ``data/quality/...`` metrics (empty without a gate)."""
        if self.quality is None:
            return {}
        r = self.quality["report"]
        return {"data/quality/length_bias": r["bias"]["length"]["rate"],
                "data/quality/length_bias_p": r["bias"]["length"]["p_value"],
                "data/quality/both_ways_rate": r["consistency"]["both_ways_rate"],
                "data/quality/intransitive_rate": r["intransitivity"]["rate"],
                "data/quality/duplicate_prompt_rate": r["diversity"]["duplicate_prompt_rate"],
                "data/quality/findings": float(len(self.quality["findings"]))}

    def encode(self, located: list[tuple[str, dict]], split: str) -> list[PairExample]:
        """Tokenise pairs; counts (truncated, identical, dropped) go to ``self.stats[split]``."""
        hp, tok = self.hparams, self._tokenizer()
        stats = PairStats(pairs=len(located))
        out = []
        for where, pair in tqdm(located, desc=f"tokenising {split}", disable=len(located) < 1000):
            if pair["chosen"].strip() == pair["rejected"].strip():
                stats.identical += 1
                stats.identical_where.append(where)
                if hp.drop_identical:
                    stats.dropped += 1
                    continue
            out.append(tokenize_pair(pair, hp.template, tok, hp.max_length, hp.min_prompt_length, stats, len(out)))
        if stats.identical:
            shown = ", ".join(stats.identical_where[:5]) + (" ..." if stats.identical > 5 else "")
            log.warning("%s: %d pairs have chosen == rejected (%s)%s", split, stats.identical, shown,
                        "; dropped" if hp.drop_identical else "")
        if stats.prompt_truncated or stats.reply_truncated:
            log.warning(
                "%s: %d of %d pairs had their prompt cut from the left, %d a reply cut (max_length=%d)",
                split, stats.prompt_truncated, stats.pairs, stats.reply_truncated, hp.max_length,
            )
        self.stats[split] = stats
        return out

    def prepare_data(self) -> None:
        # Lightning calls this before it creates the MLflow run: a bad file stops the run with nothing written.
        if self.hparams.predict_files is not None:
            self._predict_located = self._read_predict()
        else:
            self._records = self._read_all()

    def setup(self, stage: Optional[str] = None) -> None:
        if stage == "predict":
            if self.hparams.predict_files is None:
                raise UserError("set data.predict_files to the pairs or (prompt, response) records to score")
            located = getattr(self, "_predict_located", None) or self._read_predict()
            self.splits["predict"] = Rows(self._encode_predict(located))
            return
        if "train" in self.splits:
            return
        records = getattr(self, "_records", None) or self._read_all()
        self._records = None
        self.splits["train"] = Rows(self.encode(records["train"], "train"))
        self.splits["val"] = Rows(self.encode(records["val"], "val"))
        test = records["test"]
        self.splits["test"] = Rows(self.encode(test, "test")) if test is not None else self.splits["val"]
        if not self.splits["train"].rows:
            files = ", ".join(as_list(self.hparams.train_files)) or "the bundled pairs"
            raise UserError(f"{files}: no training pair is left: every pair has chosen == rejected or an empty "
                            "reply, or was dropped by truncation (data.max_length)")

    # ---- loaders -----------------------------------------------------------------------------------------------
    def collate(self, pairs: list[PairExample]) -> dict:
        return collate_pairs(pairs, self._tokenizer().pad_token_id)

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a generation prompt for a bare request (the ``raw`` template uses HH-RLHF's layout)."""
        if self.hparams.template == "raw":
            return self._tokenizer()(f"\n\nHuman: {text}\n\nAssistant:", add_special_tokens=False)["input_ids"]
        return encode_prompt(text, self.hparams.template, self._tokenizer())

    # ---- scoring (lightning-post predict) ----------------------------------------------------------------------
    def _read_predict(self) -> list[tuple[str, dict]]:
        return [item for p in as_list(self.hparams.predict_files) for item in raw_records(p, normalize_scoring_record)]

    def _encode_predict(self, located: list[tuple[str, dict]]) -> list[tuple[int, int, Tokenized]]:
        """Rows ``(record index, side, tokens)``; side 0 = the response (or chosen), 1 = rejected."""
        hp, tok = self.hparams, self._tokenizer()
        self.predict_records = [item["record"] for _, item in located]
        rows = []
        for i, (_, item) in enumerate(located):
            pair = item.get("pair") or item["single"]
            sides = ("chosen", "rejected") if "pair" in item else ("chosen",)
            for side, name in enumerate(sides):
                prompt_text, reply_text = reply_segments(pair["prompt"], pair["raw_prompt"], pair[name], hp.template, tok)
                ex = tokenize_segments([(prompt_text, False), (reply_text, True)], tok, hp.template == "chat")
                prompt, reply = split_prompt_reply(ex)
                prompt, reply, _, _, _ = truncate_pair(prompt, reply, reply, hp.max_length, hp.min_prompt_length,
                                                       tok.bos_token_id)
                rows.append((i, side, Tokenized(prompt + reply, [IGNORE_INDEX] * len(prompt) + reply)))
        return rows

    def _collate_predict(self, rows: list[tuple[int, int, Tokenized]]) -> dict:
        batch = collate_rows([[ex] for _, _, ex in rows], self._tokenizer().pad_token_id)
        batch["record"] = torch.tensor([i for i, _, _ in rows])
        batch["side"] = torch.tensor([s for _, s, _ in rows])
        return batch

    def predict_dataloader(self) -> DataLoader:
        if "predict" not in self.splits:
            raise UserError("set data.predict_files to the pairs or (prompt, response) records to score")
        return DataLoader(self.splits["predict"], batch_size=self.hparams.eval_batch_size, shuffle=False,
                          collate_fn=self._collate_predict, num_workers=self.hparams.num_workers)
