"""Gradient surgery for multitask learning: PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning") and
the cosine similarities between task gradients."""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def pcgrad(grads: torch.Tensor, order: Optional[Sequence[Sequence[int]]] = None) -> torch.Tensor:
    """Combine task gradients ``(K, D)`` into one update ``(D,)``: each task gradient is projected off every other
    task gradient it conflicts with (negative dot product), against the *original* gradients, in ``order[i]``
    (default: the other tasks by index), and the projected gradients are summed:

    ``g_i <- g_i - (g_i . g_j) / |g_j|^2 g_j``  for each ``j`` with ``g_i . g_j < 0``.

    >>> pcgrad(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))  # g1.g2 = -1: g1 -> (.5, .5), g2 -> (0, 1)
    tensor([0.5000, 1.5000])
    """
    k = grads.shape[0]
    out = grads.clone()
    for i in range(k):
        others = order[i] if order is not None else [j for j in range(k) if j != i]
        for j in others:
            dot = out[i] @ grads[j]
            if dot < 0:
                out[i] = out[i] - dot / grads[j].pow(2).sum().clamp(min=1e-20) * grads[j]
    return out.sum(0)


def gradient_cosines(grads: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``(K, K)`` between task gradients ``(K, D)`` (0 where a gradient is zero)."""
    unit = grads / grads.norm(dim=1, keepdim=True).clamp(min=1e-20)
    return unit @ unit.T
