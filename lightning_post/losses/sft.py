"""Supervised fine-tuning loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood ``-log softmax(logits)[target]``, computed in float32.

    Args:
        logits: ``(N, V)`` logits at the N positions that predict a response token.
        targets: ``(N,)`` the response token ids.

    Returns:
        ``(N,)`` losses. The SFT objective of an optimizer step is their sum over every micro-batch and device
        divided by the step's total number of response tokens, so gradient accumulation does not change it.
    """
    return F.cross_entropy(logits.float(), targets, reduction="none")
