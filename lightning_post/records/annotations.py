"""The annotation schema: comparison pairs and the labels people or judges give them, validated on load, JSONL in and
out, and their conversion to and from training preference pairs.

A **pair** (one JSON object per line)::

    {"pair_id": "3f2a9c01d4e5:davinci|text-davinci-003",  # optional; made from prompt_id and models when absent
     "prompt_id": "3f2a9c01d4e5",                          # optional; a hash of the prompt when absent
     "prompt": "Rewrite ..." | [{"role": "user", "content": "Rewrite ..."}],
     "response_a": "...", "response_b": "...",             # in the order shown to the annotator
     "model_a": "davinci", "model_b": "text-davinci-003"}  # optional

An **annotation** is a pair plus the label::

    {..., "overall": "A" | "B" | "Tie",
     "criteria": {"helpfulness": "A", "harmlessness": "Tie", "honesty": "B"},   # optional, any subset
     "reasoning": "B answers the question; A repeats it.",                      # optional free text
     "confidence": 1..5,                                                        # optional integer
     "annotator": "ann-07"}                                                     # required

A bad record stops loading with its file, line and field.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Iterable, Optional

from lightning_post.records.files import DataError, json_lines
from lightning_post.records.preference import normalize_preference_record
from lightning_post.records.prompts import normalize_prompt_record
from lightning_post.records.registry import normalizer

VERDICTS = ("A", "B", "Tie")
CRITERIA = ("helpfulness", "harmlessness", "honesty")
PAIR_FIELDS = ("pair_id", "prompt_id", "prompt", "response_a", "response_b", "model_a", "model_b")
LABEL_FIELDS = ("overall", "criteria", "reasoning", "confidence", "annotator")


def prompt_id(messages: list[dict]) -> str:
    """A short stable id of a prompt (the first 12 hex digits of the SHA-1 of its messages as JSON)."""
    return hashlib.sha1(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:12]


def _optional_text(record: dict, field: str, where: str) -> Optional[str]:
    value = record.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DataError(where, field, f"must be a non-empty string, got {value!r}")
    return value


def _response(record: dict, field: str, where: str) -> str:
    value = record.get(field)
    if value is None:
        raise DataError(where, field, "is missing")
    if not isinstance(value, str):
        raise DataError(where, field, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(where, field, "is empty")
    return value


def _verdict(value: Any, where: str, field: str) -> str:
    if value not in VERDICTS:
        raise DataError(where, field, f"must be one of {list(VERDICTS)}, got {value!r}")
    return value


@normalizer("pair")
def normalize_pair(record: Any, where: str) -> dict[str, Any]:
    """Validate a comparison pair and fill its ids; the prompt becomes chat messages.

    >>> normalize_pair({"prompt": "Hi", "response_a": "Hello", "response_b": "Hey", "model_a": "m1",
    ...                 "model_b": "m2"}, "f:1")["pair_id"]
    'c463df0d90a8:m1|m2'
    """
    if not isinstance(record, dict):
        raise DataError(where, None, f"a record must be a JSON object, got {type(record).__name__}")
    if record.get("prompt") is None:
        raise DataError(where, "prompt", "is missing")
    prompt = normalize_prompt_record({"prompt": record["prompt"]}, where)["prompt"]
    out = {"prompt": prompt, "response_a": _response(record, "response_a", where),
           "response_b": _response(record, "response_b", where),
           "model_a": _optional_text(record, "model_a", where), "model_b": _optional_text(record, "model_b", where)}
    out["prompt_id"] = _optional_text(record, "prompt_id", where) or prompt_id(prompt)
    default_id = f"{out['prompt_id']}:{out['model_a']}|{out['model_b']}" if out["model_a"] and out["model_b"] \
        else f"{out['prompt_id']}:{hashlib.sha1((out['response_a'] + chr(0) + out['response_b']).encode()).hexdigest()[:8]}"
    out["pair_id"] = _optional_text(record, "pair_id", where) or default_id
    return {k: out[k] for k in PAIR_FIELDS}


@normalizer("annotation")
def normalize_annotation(record: Any, where: str) -> dict[str, Any]:
    """Validate an annotation: a pair plus ``overall``, optional ``criteria``/``reasoning``/``confidence`` and the
    required ``annotator``.

    >>> try:
    ...     normalize_annotation({"prompt": "Hi", "response_a": "a", "response_b": "b", "overall": "A",
    ...                           "confidence": 7, "annotator": "x"}, "f.jsonl:3")
    ... except DataError as e:
    ...     print(e)
    f.jsonl:3: field 'confidence': must be an integer from 1 to 5, got 7
    """
    out = normalize_pair(record, where)
    if out["response_a"].strip() == out["response_b"].strip():  # a verdict between identical answers says nothing
        raise DataError(where, "response_b", "is the same text as response_a: no preference between identical answers "
                                             "can be annotated")
    if record.get("overall") is None:
        raise DataError(where, "overall", f"is missing (one of {list(VERDICTS)})")
    out["overall"] = _verdict(record["overall"], where, "overall")
    criteria = record.get("criteria") or {}
    if not isinstance(criteria, dict):
        raise DataError(where, "criteria", f"must be an object {{criterion: verdict}}, got {type(criteria).__name__}")
    for name, value in criteria.items():
        if name not in CRITERIA:
            raise DataError(where, f"criteria.{name}", f"is not a criterion; use {list(CRITERIA)}")
        _verdict(value, where, f"criteria.{name}")
    out["criteria"] = {k: criteria[k] for k in CRITERIA if k in criteria}
    reasoning = record.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, str):
        raise DataError(where, "reasoning", f"must be a string, got {type(reasoning).__name__}")
    out["reasoning"] = reasoning or None
    confidence = record.get("confidence")
    if confidence is not None and (isinstance(confidence, bool) or not isinstance(confidence, int)
                                   or not 1 <= confidence <= 5):
        raise DataError(where, "confidence", f"must be an integer from 1 to 5, got {confidence!r}")
    out["confidence"] = confidence
    annotator = record.get("annotator")
    if annotator is None:
        raise DataError(where, "annotator", "is missing (who gave this label: a person's id or a judge's name)")
    if not isinstance(annotator, str) or not annotator.strip():
        raise DataError(where, "annotator", f"must be a non-empty string, got {annotator!r}")
    out["annotator"] = annotator
    return out


def _load(paths: Iterable[str], normalize) -> list[tuple[str, dict]]:
    out = []
    for path in paths:
        if not Path(path).exists():
            raise DataError(str(path), None, "file not found")
        out += [(where, normalize(rec, where)) for where, rec in json_lines(path)]
        if not out:
            raise DataError(str(path), None, "has no records")
    return out


def load_pairs(paths: Iterable[str]) -> list[tuple[str, dict]]:
    """``(file:line, pair)`` of every pair; the first bad record raises :class:`DataError`."""
    return _load(paths, normalize_pair)


def load_annotations(paths: Iterable[str]) -> list[tuple[str, dict]]:
    """``(file:line, annotation)`` of every annotation; the first bad record raises :class:`DataError`."""
    return _load(paths, normalize_annotation)


def annotations_from_preferences(located: list[tuple[str, dict]], annotator: str, seed: int = 0,
                                 invalid: Optional[list[DataError]] = None) -> list[dict]:
    """Annotations of ``(location, raw preference record)`` pairs: the two replies in a seeded random order, the
    chosen one the winner (a soft ``label`` of 1/2 is a tie, below 1/2 the rejected reply wins), and the record's
    own ``annotator`` field when it has one. Each record is its own prompt id (its location), so a question asked
    in several records shows up as a duplicate prompt. The shown order is ours, so the position statistics of these
    annotations describe the shuffle, not the original labellers. With an ``invalid`` list, malformed records are
    appended to it and left out instead of raising."""
    rng = random.Random(seed)
    out = []
    for where, record in located:
        try:
            pair = normalize_preference_record(record, where)
        except DataError as e:
            if invalid is None:
                raise
            invalid.append(e)
            continue
        label = pair.get("label")
        chosen_first = rng.random() < 0.5
        a, b = (pair["chosen"], pair["rejected"]) if chosen_first else (pair["rejected"], pair["chosen"])
        winner = "Tie" if label == 0.5 else ("A" if chosen_first else "B")
        if label is not None and label < 0.5:
            winner = "B" if chosen_first else "A"
        who = record.get("annotator") if isinstance(record.get("annotator"), str) else annotator
        out.append(normalize_annotation({"prompt_id": where, "prompt": pair["prompt"], "response_a": a, "response_b": b,
                                         "overall": winner, "annotator": who}, where))
    return out


def to_preference_records(annotations: Iterable[dict], criterion: str = "overall", ties: str = "drop",
                          confidence_weight: bool = False) -> list[dict]:
    """Training pairs ``{"prompt", "chosen", "rejected", ["label"], ["weight"], "pair_id", "annotator"}`` from
    annotations, judged by ``criterion`` (``overall`` or one of :data:`CRITERIA`).

    ``ties``: ``drop`` leaves tied (and unlabelled-criterion) annotations out; ``half`` keeps a tie as a pair with
    soft ``label`` 0.5 (the DPO and reward losses then push neither way). ``confidence_weight`` sets
    ``weight = confidence / 5`` (an annotation without confidence is an error then).

    >>> to_preference_records([{"prompt": [{"role": "user", "content": "Hi"}], "response_a": "a", "response_b": "b",
    ...     "overall": "B", "confidence": 4, "annotator": "x", "pair_id": "p"}], confidence_weight=True)[0]["weight"]
    0.8
    """
    if ties not in ("drop", "half"):
        raise ValueError(f"ties must be 'drop' or 'half', got {ties!r}")
    if criterion != "overall" and criterion not in CRITERIA:
        raise ValueError(f"criterion must be 'overall' or one of {list(CRITERIA)}, got {criterion!r}")
    out = []
    for ann in annotations:
        v = ann["overall"] if criterion == "overall" else (ann.get("criteria") or {}).get(criterion)
        if v is None or (v == "Tie" and ties == "drop"):
            continue
        chosen, rejected = (ann["response_b"], ann["response_a"]) if v == "B" else (ann["response_a"], ann["response_b"])
        row: dict[str, Any] = {"prompt": ann["prompt"], "chosen": chosen, "rejected": rejected}
        if v == "Tie":
            row["label"] = 0.5
        if confidence_weight:
            if ann.get("confidence") is None:
                raise DataError(ann.get("pair_id", "?"), "confidence", "is missing; confidence_weight needs it")
            row["weight"] = ann["confidence"] / 5
        row.update(pair_id=ann.get("pair_id"), annotator=ann.get("annotator"))
        out.append(row)
    return out
