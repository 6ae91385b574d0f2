"""Multiple-choice knowledge evaluation in a bring-your-own format (MMLU-style), scored by log-likelihood.

A record: ``{"question": str, "choices": [str, ...], "answer": index or letter, "subject": optional str}``. The
model is asked the question (its chat template) and each choice is scored as its reply: ``acc`` picks the choice with
the highest summed log-likelihood, ``acc_norm`` the highest per-token mean (which does not favour short choices).
"""

from __future__ import annotations

from collections import defaultdict
from importlib import resources
from typing import Sequence

from lightning_post.records.files import DataError, json_lines
from lightning_post.generation import ChatGenerator

LETTERS = "ABCDEFGHIJ"


def default_mc_file() -> str:
    """20 bundled questions (English and Korean, 10 subjects) written for lightning-post."""
    return str(resources.files("lightning_post") / "resources" / "mc_sample.jsonl")


def load_mc(path: str) -> list[dict]:
    """Validated multiple-choice records; a bad one names its file, line and field."""
    out = []
    for where, rec in json_lines(path):
        if not isinstance(rec, dict):
            raise DataError(where, None, "a record must be a JSON object")
        if not isinstance(rec.get("question"), str) or not rec["question"].strip():
            raise DataError(where, "question", "is missing or empty")
        choices = rec.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise DataError(where, "choices", "must be a list of at least two non-empty strings")
        answer = rec.get("answer")
        if isinstance(answer, str) and len(answer) == 1 and answer.upper() in LETTERS:
            answer = LETTERS.index(answer.upper())
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise DataError(where, "answer", f"must be a choice index (0-{len(choices) - 1}) or letter, got {answer!r}")
        out.append({"question": rec["question"], "choices": choices, "answer": answer,
                    "subject": rec.get("subject", "all")})
    if not out:
        raise DataError(path, None, "has no records")
    return out


def evaluate_mc(gen: ChatGenerator, records: Sequence[dict]) -> dict:
    """Accuracy (``acc``: summed log-likelihood; ``acc_norm``: per token) overall and per subject, with each
    question's scores."""
    tok = gen.tokenizer
    per_subject: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    rows = []
    for rec in records:
        conv = [{"role": "user", "content": rec["question"]}]
        logliks = gen.option_logprobs([conv], rec["choices"], desc="multiple choice")[0].tolist()
        lengths = [max(1, len(tok(c, add_special_tokens=False).input_ids)) for c in rec["choices"]]
        pick = max(range(len(logliks)), key=lambda i: logliks[i])
        pick_norm = max(range(len(logliks)), key=lambda i: logliks[i] / lengths[i])
        per_subject[rec["subject"]].append((pick == rec["answer"], pick_norm == rec["answer"]))
        rows.append({"question": rec["question"], "answer": rec["answer"], "pick": pick, "pick_norm": pick_norm,
                     "logliks": logliks})
    hits = [h for v in per_subject.values() for h in v]
    return {
        "acc": sum(a for a, _ in hits) / len(hits), "acc_norm": sum(b for _, b in hits) / len(hits),
        "questions": len(hits), "chance": sum(1 / len(r["choices"]) for r in records) / len(records),
        "by_subject": {k: {"acc": sum(a for a, _ in v) / len(v), "questions": len(v)}
                       for k, v in sorted(per_subject.items())},
        "rows": rows,
    }
