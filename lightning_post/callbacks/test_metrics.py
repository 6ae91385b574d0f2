"""Generation metrics in the ``test`` stage: the module answers the test prompts and its answers are scored against
the test references (BLEU, ROUGE, BERTScore), per sample and aggregated."""

from __future__ import annotations

import logging
from typing import Optional

import lightning as L
import torch

from lightning_post.records.tokenize import IGNORE_INDEX
from lightning_post.scoring.text_metrics import BertScorer, check_bleu_tokenizers, text_metrics
from lightning_post.tracking import mlflow_logger

log = logging.getLogger(__name__)


def prompts_and_references(batch: dict, tokenizer) -> list[tuple[list[int], str]]:
    """``(prompt ids, reference text)`` of each unpacked row of a labelled batch: the reference is the last run of
    labelled tokens (a conversation's last assistant turn), the prompt every token before it. Preference batches
    (``[chosen; rejected]``) give their chosen rows. Packed rows (several examples per row) are skipped."""
    labels, ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    rows = range(batch["index"].shape[0]) if "index" in batch and "weight" in batch else range(ids.shape[0])
    out = []
    for i in rows:
        labelled = (labels[i] != IGNORE_INDEX).nonzero().flatten()
        if labelled.numel() == 0:
            continue
        last = int(labelled[-1])
        gaps = (labelled[1:] - labelled[:-1] > 1).nonzero().flatten()
        first = int(labelled[gaps[-1] + 1]) if gaps.numel() else int(labelled[0])
        if "segment_ids" in batch and int(batch["segment_ids"][i].max()) > 1:
            continue  # packed row
        real = mask[i].bool()
        prompt = ids[i][:first][real[:first]].tolist()
        reference = tokenizer.decode(ids[i][first:last + 1], skip_special_tokens=True).strip()
        if prompt and reference:
            out.append((prompt, reference))
    return out


class TestGenerationMetrics(L.Callback):
    """After ``lightning-post test``: greedy answers to up to ``max_examples`` test prompts, scored against their
    references; logs ``test/bleu``, ``test/corpus_bleu``, ``test/rouge1``, ``test/rouge2``, ``test/rougeL`` and
    ``test/bertscore`` and, to MLflow, the per-sample table ``test_generations.json``."""

    def __init__(self, enabled: bool = True, max_examples: int = 32, max_new_tokens: int = 96,
                 bertscore: bool = True, bertscore_model: Optional[str] = None, batch_size: int = 16,
                 bleu_tokenizers: Optional[dict[str, str]] = None):
        """
        Args:
            enabled: set to false to skip generation in ``test``.
            max_examples: answer at most this many test prompts (per process).
            max_new_tokens: longest generated answer.
            bertscore: also compute BERTScore (offline all-MiniLM-L6-v2 unless ``bertscore_model``).
            bertscore_model: a local encoder folder for BERTScore.
            batch_size: prompts per generation batch.
            bleu_tokenizers: sacrebleu tokenizer per language (``null`` = ``{en: 13a, ko: char}``); a sample's
                language is its reference's script (Hangul or not).
        """
        self.bleu_tokenizers = check_bleu_tokenizers(bleu_tokenizers)
        self.enabled, self.max_examples, self.max_new_tokens = enabled, max_examples, max_new_tokens
        self.bertscore, self.bertscore_model, self.batch_size = bertscore, bertscore_model, batch_size
        self._pending: list[tuple[list[int], str]] = []
        self.results: list[dict] = []

    def _active(self, pl_module: L.LightningModule) -> bool:
        return self.enabled and getattr(pl_module, "generates", True) and getattr(pl_module, "tokenizer", None) is not None

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending, self.results = [], []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._active(pl_module) or "labels" not in batch or len(self._pending) >= self.max_examples:
            return
        found = prompts_and_references({k: v.cpu() if torch.is_tensor(v) else v for k, v in batch.items()},
                                       pl_module.tokenizer)
        self._pending += found[: self.max_examples - len(self._pending)]

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(pl_module) or not self._pending:
            return
        prompts, references = zip(*self._pending)
        answers: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            answers += pl_module.generate_from_ids(list(prompts[start: start + self.batch_size]),
                                                   max_new_tokens=self.max_new_tokens)
        scorer = BertScorer(self.bertscore_model, device=str(pl_module.device)) if self.bertscore else None
        per_sample, aggregate = text_metrics(answers, list(references), scorer,
                                             bleu_tokenizers=self.bleu_tokenizers)
        scores = {f"test/{k}": float(v) for k, v in aggregate.items() if isinstance(v, float)}
        if trainer.world_size == 1:  # processes may hold different languages: keys that differ cannot be reduced
            for lang, values in aggregate["by_language"].items():
                scores.update({f"test/{lang}/{k}": float(v) for k, v in values.items()})
        pl_module.log_dict(scores, sync_dist=True)
        tok = pl_module.tokenizer
        self.results = [{"prompt": tok.decode(p, skip_special_tokens=True), "answer": a, "reference": r, **m}
                        for p, a, r, m in zip(prompts, answers, references, per_sample)]
        logger = mlflow_logger(trainer)
        if logger is not None and trainer.is_global_zero:
            table = {key: [row[key] for row in self.results] for key in self.results[0]}
            logger.experiment.log_table(logger.run_id, data=table, artifact_file="test_generations.json")
            for lang, signature in aggregate["bleu_signature"].items():
                logger.experiment.log_param(logger.run_id, f"test/bleu_signature.{lang}", signature)
        log.info("test generation metrics on %d prompts: %s", len(answers),
                 {k: round(v, 4) for k, v in scores.items()})
