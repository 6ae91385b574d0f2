"""PreferenceDataModule: (prompt, chosen, rejected) files -> tokenised pairs batched as ``[chosen; rejected]``.

Shared by RewardModule and DPOModule (and later CAI/PPO). Record layouts and the truncation policy are documented
in :mod:`lightning_post.data.pairs`.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lightning_post.errors import UserError
from lightning_post.data.collate import collate_pairs, collate_rows
from lightning_post.data.base import PostDataModule, Rows, hold_out
from lightning_post.data.safety import SafetyFilter
from lightning_post.data.instruction import Files, _as_list
from lightning_post.data.pairs import (
    PairExample,
    PairStats,
    normalize_preference_record,
    reply_segments,
    split_prompt_reply,
    tokenize_pair,
    truncate_pair,
)
from lightning_post.data.records import DataError, raw_records
from lightning_post.data.templates import check_template
from lightning_post.data.tokenize import IGNORE_INDEX, Tokenized, encode_prompt, tokenize_segments
from lightning_post.models.loading import DEFAULT_MODEL
from lightning_post.quality.gate import QualityGate

log = logging.getLogger(__name__)


def default_preference_file() -> str:
    """The bundled dataset: 120 Korean and English pairs on helpfulness, harmlessness and honesty."""
    return str(resources.files("lightning_post") / "resources" / "preferences.jsonl")


def load_preference_records(paths: list[str], skipped: Optional[list[DataError]] = None) -> list[tuple[str, dict]]:
    """``(location, normalised pair)`` for every record of ``paths``.

    The first bad record raises ``DataError``, unless ``skipped`` is a list: then bad records are left out and their
    errors appended to it (for real-world files with a few broken rows, reported rather than silently dropped).
    """
    def normalize(record, where):
        try:
            return normalize_preference_record(record, where)
        except DataError as e:
            if skipped is None:
                raise
            if not any(s.where == where for s in skipped):  # each record is checked twice (lines, then datasets)
                skipped.append(e)
            return None

    return [(w, pair) for path in paths for w, pair in raw_records(path, normalize) if pair is not None]


def normalize_scoring_record(record: Any, where: str) -> dict[str, Any]:
    """A record to score with a reward model: a preference pair (both replies are scored), or one reply as
    ``{"prompt": str | messages, "response": str}`` or ``{"messages": [..., assistant turn]}``."""
    if isinstance(record, dict) and record.get("chosen") is not None:
        return {"pair": normalize_preference_record(record, where), "record": record}
    if not isinstance(record, dict):
        raise DataError(where, None, f"a record must be a JSON object, got {type(record).__name__}")
    if record.get("messages") is not None:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
            raise DataError(where, "messages", "must be a non-empty list ending with an assistant turn")
        fake = {"chosen": messages, "rejected": messages}
    else:
        if record.get("response") is None:
            raise DataError(where, "response", "is missing (expected prompt/response, messages or chosen/rejected)")
        fake = {"prompt": record.get("prompt"), "chosen": record["response"], "rejected": record["response"]}
        if fake["prompt"] is None:
            raise DataError(where, "prompt", "is missing")
    try:
        return {"single": normalize_preference_record(fake, where), "record": record}
    except DataError as e:
        if e.field == "chosen":  # the reply was passed as "chosen": name it as the user wrote it
            e = DataError(where, "messages" if "messages" in record else "response", e.problem)
        raise e from None


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
        template: str = "chat",
        tokenizer: str = DEFAULT_MODEL,
        max_length: int = 512,
        min_prompt_length: int = 64,
        drop_identical: bool = True,
        skip_invalid: bool = False,
        batch_size: int = 8,
        eval_batch_size: int = 8,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        safety_filter: Optional[SafetyFilter] = None,
        quality_gate: Optional[QualityGate] = None,
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
            template: ``chat`` (the tokenizer's chat template), ``raw`` (the record's own text, e.g. HH-RLHF's
                ``Human:/Assistant:`` dialogue) or any SFT template (``conversational``, ``basic``, ...).
            tokenizer: tokenizer name or path (linked to ``model.model_name_or_path`` by the CLI).
            max_length: longest prompt + reply in tokens; longer pairs lose prompt tokens from the left first.
            min_prompt_length: prompt tokens always kept when truncating; replies are cut from the right beyond it.
            drop_identical: drop (and report) pairs whose chosen and rejected replies are the same text.
            skip_invalid: leave out malformed records (each is logged with file, line, field; counted in
                ``data/invalid_pairs``) instead of stopping; for public datasets with a few broken rows.
            batch_size: pairs per optimizer step per device (split into micro-batches by the module).
            eval_batch_size: pairs per validation/test batch.
            shuffle: shuffle training pairs each epoch (seeded).
            seed: seed of the validation split and the shuffling.
            num_workers: DataLoader worker processes.
            safety_filter: rules and classifiers that remove unsafe records from every split before
                tokenising, with counts by reason and a sample in MLflow (see
                :class:`~lightning_post.data.safety.SafetyFilter`; ``null`` = keep everything).
            quality_gate: check the training pairs before training (length bias, pairs labelled both ways,
                intransitive preferences, duplicate prompts; see ``lightning-post data report``): ``mode: warn`` logs
                what it finds, ``mode: fail`` stops before anything is written. ``null`` = no check.
        """
        super().__init__(tokenizer)
        self.save_hyperparameters()
        self.check_settings()
        check_template(template)
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
        train = load_preference_records(_as_list(hp.train_files) or [default_preference_file()], skipped)
        if hp.val_files is not None:
            val = load_preference_records(_as_list(hp.val_files), skipped)
        else:
            train, val = hold_out(train, hp.seed, hp.val_fraction, hp.val_size)
        if hp.max_train_pairs is not None:
            train = train[: hp.max_train_pairs]
        test = load_preference_records(_as_list(hp.test_files), skipped) if hp.test_files is not None else None
        self.invalid = skipped or []
        for e in self.invalid:
            log.warning("skipped invalid pair: %s", e)
        if hp.quality_gate is not None:
            self._check_quality(train)
        return self.safety_filtered({"train": train, "val": val, "test": test})

    def _check_quality(self, train: list[tuple[str, dict]]) -> None:
        """Run the quality gate on the training pairs (chosen wins; the order given to the checks is random)."""
        from lightning_post.quality.report import gate_findings, quality_report
        from lightning_post.quality.schema import annotations_from_preferences

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
            files = ", ".join(_as_list(self.hparams.train_files) or [default_preference_file()])
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
            files = ", ".join(_as_list(self.hparams.train_files)) or "the bundled pairs"
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
        return [item for p in _as_list(self.hparams.predict_files) for item in raw_records(p, normalize_scoring_record)]

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
