"""Unpaired preference examples for KTO: ``{"prompt", "completion", "label"}`` (``label`` true = desirable).

This is the layout ``lightning-post-feedback`` writes (``unpaired.jsonl``) and TRL's unpaired format. ``prompt`` is a
string or a list of chat messages; ``completion`` a string or one assistant message.

Batches (see :func:`collate_unpaired`) hold the B examples and, under ``kl_*`` keys, B mismatched rows
``prompt_i + completion_{(i+1) mod B}`` from which KTO estimates its KL reference point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from lightning_post.data.collate import collate_rows
from lightning_post.data.pairs import normalize_preference_record, truncate_pair
from lightning_post.data.records import DataError
from lightning_post.data.tokenize import IGNORE_INDEX, Tokenized


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
