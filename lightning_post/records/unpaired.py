"""Unpaired preference examples for KTO: ``{"prompt", "completion", "label"}`` (``label`` true = desirable).

This is the layout ``lightning-post data feedback`` writes (``unpaired.jsonl``) and TRL's unpaired format. ``prompt`` is a
string or a list of chat messages; ``completion`` a string or one assistant message.
"""

from __future__ import annotations

from typing import Any

from lightning_post.records.files import DataError, raw_records
from lightning_post.records.preference import normalize_preference_record
from lightning_post.records.registry import normalizer


@normalizer("unpaired")
def normalize_unpaired_record(record: Any, where: str) -> dict[str, Any]:
    """Validate one unpaired example; returns ``{"prompt": messages, "raw_prompt", "completion", "label": bool}``.

    >>> normalize_unpaired_record({"prompt": "Hi", "completion": "Hello", "label": True}, "f:1")["label"]
    True
    """
    if not isinstance(record, dict):
        raise DataError(where, None, f"a record must be a JSON object, got {type(record).__name__}")
    label = record.get("label")
    if not isinstance(label, bool):
        raise DataError(where, "label", f"must be true (desirable) or false (undesirable), got {label!r}")
    if record.get("completion") is None:
        raise DataError(where, "completion", "is missing")
    if record.get("prompt") is None:
        raise DataError(where, "prompt", "is missing")
    try:
        pair = normalize_preference_record(
            {"prompt": record["prompt"], "chosen": record["completion"], "rejected": record["completion"]}, where
        )
    except DataError as e:  # report the field by its name in this layout
        field = "completion" if e.field in ("chosen", "rejected") else e.field
        raise DataError(where, field, e.problem) from None
    return {"prompt": pair["prompt"], "raw_prompt": pair["raw_prompt"], "completion": pair["chosen"], "label": label}


def unpaired_from_pairs(path: str) -> list[dict]:
    """Each preference pair as two unpaired examples: chosen desirable, rejected undesirable (the bundled default)."""
    out = []
    for _, pair in raw_records(path, normalize_preference_record):
        out += [{"prompt": pair["prompt"], "raw_prompt": pair["raw_prompt"], "completion": pair["chosen"], "label": True},
                {"prompt": pair["prompt"], "raw_prompt": pair["raw_prompt"], "completion": pair["rejected"],
                 "label": False}]
    return out
