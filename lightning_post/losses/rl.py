"""RL maths of PPO-style RLHF as pure functions: per-token tensors ``(B, T)`` over the generated reply, with a mask
``(B, T)`` that is 1 on reply tokens (up to and including EOS) and 0 on padding after them.

* KL estimators (Schulman 2020, "Approximating KL divergence"): ``k1 = log pi - log pi_ref``;
  ``k3 = (r - 1) - log r`` with ``r = pi_ref / pi`` (unbiased, always >= 0).
* Per-token rewards (Ziegler et al. 2019; Stiennon et al. 2020): ``-kl_coef * kl_t`` on every reply token, plus the
  sequence score on the last one.
* GAE (Schulman et al. 2016): ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lambda A_{t+1}``,
  returns ``A_t + V_t``; with ``gamma = lambda = 1`` and ``V = 0`` the advantage is the reward-to-go.
* Clipped PPO losses (Schulman et al. 2017) and the adaptive KL coefficient of Ziegler et al. 2019.
* Critic-free advantages over ``k`` samples per prompt: RLOO (Ahmadian et al. 2024; leave-one-out baseline) and
  GRPO (Shao et al. 2024; group-normalised scores).
"""

from __future__ import annotations

from typing import Callable

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of ``x`` where ``mask`` is 1 (over ``dim``, or over everything)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of ``x`` over the masked entries (Bessel-corrected, as ``torch.var``)."""
    mean = masked_mean(x, mask)
    n = mask.to(x.dtype).sum()
    return ((x - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / std`` over masked entries only (padding neither counts nor changes); masked-out entries -> 0.

    ``shift_mean=False`` keeps the mean (used for rewards: only their scale is normalised).
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


# ---- KL -----------------------------------------------------------------------------------------------------------
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``log pi - log pi_ref`` per token (unbiased, can be negative)."""
    return logp - ref_logp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``(r - 1) - log r`` with ``log r = log pi_ref - log pi`` per token (unbiased, non-negative)."""
    log_ratio = ref_logp - logp
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"k1": kl_k1, "k3": kl_k3}


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards ``(B, T)``: ``-kl_coef * kl`` on reply tokens, the score ``(B,)`` added on the last one."""
    mask = mask.to(kl.dtype)
    rewards = -kl_coef * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)  # (B,) index of each reply's last token
    return rewards.scatter_add(1, last[:, None], scores[:, None].to(kl.dtype))


# ---- advantages ---------------------------------------------------------------------------------------------------
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded replies; returns ``(advantages, returns)``, both ``(B, T)``.

    The value after a reply's last token is 0 (the episode ends), so padding never leaks into the estimate.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])  # (B,) A_{t+1}
    T = values.shape[1]
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * mask


def rloo_advantages(scores: torch.Tensor, k: int) -> torch.Tensor:
    """RLOO: each of the ``k`` samples of a prompt against the mean of the other ``k - 1``.

    ``scores`` ``(P * k,)`` grouped by prompt (rows ``p*k .. p*k+k-1``); returns ``(P * k,)``.
    """
    if k < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    s = scores.view(-1, k)  # (P, k)
    baseline = (s.sum(1, keepdim=True) - s) / (k - 1)
    return (s - baseline).reshape(-1)


def grpo_advantages(scores: torch.Tensor, k: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO: ``(s - mean) / (std + eps)`` within each prompt's group of ``k`` samples (``std`` unbiased)."""
    if k < 2:
        raise ValueError("GRPO needs at least 2 samples per prompt")
    s = scores.view(-1, k)  # (P, k)
    return ((s - s.mean(1, keepdim=True)) / (s.std(1, keepdim=True) + eps)).reshape(-1)


#: critic-free estimators: sequence scores ``(P*k,)`` -> sequence advantages ``(P*k,)``
GROUP_ADVANTAGES: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "rloo": rloo_advantages, "grpo": grpo_advantages,
}
ESTIMATORS = ("gae", *GROUP_ADVANTAGES)


# ---- losses -------------------------------------------------------------------------------------------------------
def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                        cliprange: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate per token ``max(-A r, -A clip(r, 1-eps, 1+eps))``, ``r = exp(logp - old_logp)``;
    returns the masked mean and ``{clipfrac, approx_kl}`` (``approx_kl = mean (old - new)^2 / 2``)."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask),
                 "approx_kl": masked_mean(0.5 * log_ratio ** 2, mask)}
    return loss, stats


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       cliprange_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``0.5 * max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)`` masked mean, and the share clipped."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    a, b = (values - returns) ** 2, (clipped - returns) ** 2
    return 0.5 * masked_mean(torch.maximum(a, b), mask), masked_mean((b > a).float(), mask).detach()


def adaptive_kl_coef(coef: float, kl: float, target: float, horizon: int, n_steps: int) -> float:
    """Ziegler et al. 2019: ``coef * (1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon)``."""
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return coef * (1.0 + error * n_steps / horizon)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each categorical distribution ``(..., V) -> (...)``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)
