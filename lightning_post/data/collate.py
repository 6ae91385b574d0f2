"""Collators: pad examples into a batch, or pack several examples into one row that keeps them apart.

Batch keys (all ``(B, T)``): ``input_ids``, ``labels`` (``-100`` = no loss), ``attention_mask`` (1 = real token),
``position_ids`` (restart at 0 for every packed example) and ``segment_ids`` (1, 2, ... per packed example, 0 = pad).
Padding is on the right. Only :func:`attention_bias` turns ``segment_ids`` into the 4D mask that keeps packed
examples from attending to each other (restarted position ids alone do not, see FACTS.md).
"""

from __future__ import annotations

from typing import Sequence

import torch

from lightning_post.records.tokenize import IGNORE_INDEX, Tokenized


def pack_greedy(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Group example indices into rows of at most ``max_length`` tokens, in order (next-fit).

    >>> pack_greedy([3, 4, 2, 5], 7)
    [[0, 1], [2, 3]]
    """
    rows: list[list[int]] = []
    used = max_length + 1
    for i, n in enumerate(lengths):
        if used + n > max_length:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


def collate_rows(rows: Sequence[Sequence[Tokenized]], pad_id: int, pad_to_multiple_of: int = 1) -> dict:
    """Build a right-padded batch from rows, each a list of one (unpacked) or more (packed) examples."""
    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    B = len(rows)
    input_ids = torch.full((B, width), pad_id, dtype=torch.long)
    labels = torch.full((B, width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((B, width), dtype=torch.long)
    segment_ids = torch.zeros((B, width), dtype=torch.long)
    for b, row in enumerate(rows):
        start = 0
        for s, ex in enumerate(row, start=1):
            n = len(ex.input_ids)
            input_ids[b, start : start + n] = torch.tensor(ex.input_ids)
            labels[b, start : start + n] = torch.tensor(ex.labels)
            position_ids[b, start : start + n] = torch.arange(n)
            segment_ids[b, start : start + n] = s
            start += n
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": (segment_ids > 0).long(),
        "position_ids": position_ids,
        "segment_ids": segment_ids,
    }


def attention_bias(segment_ids: torch.Tensor) -> torch.Tensor:
    """Boolean mask ``(B, 1, T, T)``: query t may attend to key s iff s <= t and both are in the same segment.

    Padding (segment 0) attends only to padding, so no query row is all-masked (which would give NaN in softmax).
    """
    T = segment_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()  # (T, T)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
    return (same & causal)[:, None]  # (B, 1, T, T)


def split_batch(batch: dict, micro_batch_size: int) -> list[dict]:
    """Split a batch into micro-batches of ``micro_batch_size`` rows, each trimmed of columns that are all padding."""
    B = batch["input_ids"].shape[0]
    out = []
    for start in range(0, B, micro_batch_size):
        out.append(_trim_padding({k: v[start : start + micro_batch_size] for k, v in batch.items()}))
    return out


def _trim_padding(mb: dict) -> dict:
    """Drop the columns that are padding in every row (1D keys are per row or per pair and stay whole)."""
    width = int(mb["attention_mask"].sum(1).max())
    return {k: v[:, :width] if v.dim() == 2 else v for k, v in mb.items()}


def collate_pairs(pairs: Sequence, pad_id: int) -> dict:
    """Batch preference pairs as one concatenated batch ``[chosen_1..chosen_B; rejected_1..rejected_B]``.

    One forward over the ``(2B, T)`` rows serves both sides; row ``i`` and row ``B + i`` are the two replies of pair
    ``i``. Per-pair keys (``(B,)``): ``margin``, ``weight``, ``label`` (soft label, 1 = chosen is better) and
    ``index`` (position of the pair in its split).
    """
    batch = collate_rows([[p.chosen] for p in pairs] + [[p.rejected] for p in pairs], pad_id)
    batch["margin"] = torch.tensor([p.margin for p in pairs], dtype=torch.float32)
    batch["weight"] = torch.tensor([p.weight for p in pairs], dtype=torch.float32)
    batch["index"] = torch.tensor([p.index for p in pairs], dtype=torch.long)
    batch["label"] = torch.tensor([getattr(p, "label", 1.0) for p in pairs], dtype=torch.float32)
    return batch


PAIR_KEYS = ("margin", "weight", "index", "label")


def split_pairs(batch: dict, pairs_per_micro_batch: int) -> list[dict]:
    """Split a :func:`collate_pairs` batch into micro-batches of whole pairs (each keeps its ``[chosen; rejected]``
    layout), each trimmed of columns that are all padding."""
    B = batch["index"].shape[0]
    out = []
    for start in range(0, B, pairs_per_micro_batch):
        stop = min(start + pairs_per_micro_batch, B)
        rows = torch.cat([torch.arange(start, stop), torch.arange(B + start, B + stop)])
        out.append(_trim_padding({k: (v[start:stop] if k in PAIR_KEYS else v[rows]) for k, v in batch.items()}))
    return out
