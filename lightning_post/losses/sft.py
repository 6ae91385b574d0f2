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


class _LinearCrossEntropy(torch.autograd.Function):
    """``F.cross_entropy(hidden @ weight.T, targets, reduction="none")`` with the gradient made in the forward.

    For each chunk of rows: logits ``(c, V)`` in float32, ``lse = logsumexp(logits)``, loss ``lse - logit[target]``,
    prediction ``argmax``; and, when ``hidden`` needs a gradient, ``d loss / d hidden = (softmax - onehot) @ weight``
    ``(c, H)``, kept for the backward. The ``(N, V)`` logits never exist at once, there is no separate log-softmax
    backward over them, and the backward is one multiplication by the incoming per-token gradient. The weight gets
    no gradient (a frozen LM head, as with LoRA); :func:`linear_cross_entropy` falls back otherwise.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size):
        N = hidden.shape[0]
        losses = torch.empty(N, dtype=torch.float32, device=hidden.device)
        predictions = torch.empty(N, dtype=torch.long, device=hidden.device)
        grad = torch.empty_like(hidden) if hidden.requires_grad else None  # (N, H)
        buffer = None  # one (chunk, V) float32 buffer for every chunk: no new allocation per chunk
        for start in range(0, N, chunk_size):
            rows = slice(start, start + chunk_size)
            h, target = hidden[rows], targets[rows]  # (c, H), (c,)
            product = h @ weight.t()  # (c, V), in the compute dtype (bf16 under autocast)
            if buffer is None:
                buffer = torch.empty(min(chunk_size, N), product.shape[1], dtype=torch.float32, device=h.device)
            logits = buffer[: h.shape[0]]
            logits.copy_(product)
            del product
            target_logit = logits.gather(1, target[:, None])[:, 0]  # (c,)
            top, predictions[rows] = logits.max(-1)  # (c,), (c,)
            exp = logits.sub_(top[:, None]).exp_()  # exp(logit - max), in place
            total = exp.sum(-1)  # (c,)
            losses[rows] = _nll(top, total, target_logit)
            if grad is not None:
                probs = exp.div_(total[:, None])  # softmax, in place
                probs[torch.arange(target.numel(), device=probs.device), target] -= 1.0
                grad[rows] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)  # (c, H)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(predictions)
        return losses, predictions

    @staticmethod
    def backward(ctx, grad_losses, grad_predictions):
        (grad,) = ctx.saved_tensors
        return grad * grad_losses[:, None].to(grad.dtype), None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy of the LM head's logits, and the arg-max predictions, without the full logits.

    Args:
        hidden: ``(N, H)`` hidden states at the N positions that predict a labelled token.
        weight: ``(V, H)`` LM head weight (no bias, as in Llama-style heads).
        targets: ``(N,)`` the labelled token ids.
        chunk_size: rows of logits computed at once (memory: ``chunk_size * V`` floats).

    Returns:
        ``(N,)`` losses, equal to ``token_cross_entropy(hidden @ weight.T, targets)``, and ``(N,)`` predictions.
        With a trainable head it computes exactly that (full logits), since the chunked gradient is only for the
        hidden states.
    """
    if weight.requires_grad and torch.is_grad_enabled():
        logits = (hidden @ weight.t()).float()  # (N, V)
        top, predictions = logits.detach().max(-1)  # (N,), (N,)
        total = (logits - top[:, None]).exp().sum(-1)  # (N,)
        return _nll(top, total, logits.gather(1, targets[:, None])[:, 0]), predictions
    return _LinearCrossEntropy.apply(hidden, weight.detach(), targets, chunk_size)


def _nll(top: torch.Tensor, total: torch.Tensor, target_logit: torch.Tensor) -> torch.Tensor:
    """``logsumexp - logit[target]`` from the row maximum and ``sum(exp(logit - max))``; one formula for both paths
    of :func:`linear_cross_entropy`, so a policy and its frozen copy get bit-identical values."""
    return top + total.log() - target_logit
