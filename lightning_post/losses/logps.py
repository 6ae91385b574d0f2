"""Sequence log-probabilities from per-token values."""

from __future__ import annotations

import torch


def sum_by_row(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Sum per-token ``values (N,)`` into their rows ``(n_rows,)``; ``rows (N,)`` names each token's row.

    >>> sum_by_row(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 2, 0]), 3)
    tensor([5., 0., 2.])
    """
    return torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add(0, rows, values)
