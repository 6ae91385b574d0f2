"""The GRPO loss family as pure functions, with the semantics of TRL 1.16's ``GRPOTrainer._compute_loss``.

Inputs of every loss (:data:`GRPO_INPUTS`), over ``B`` sampled replies of at most ``T`` tokens:

* ``logps`` ``(B, T)``: log-probabilities of the reply tokens under the policy being trained (with gradient);
* ``old_logps`` ``(B, T)``: the same under the policy that sampled them (no gradient; ``logps.detach()`` on-policy);
* ``ref_logps`` ``(B, T)`` or ``None``: the same under the reference model; needed only when ``beta != 0`` (with
  ``beta == 0`` it is used, when given, for the logged ``kl`` alone);
* ``advantages`` ``(B,)`` per sequence (the usual case: one group-normalised score per reply, broadcast over its
  tokens) or ``(B, T)`` per token (what TRL lets subclasses pass); the loss reads them as ``(B, 1)`` / ``(B, T)``;
* ``mask`` ``(B, T)``: 1 on reply tokens, 0 on padding (and on anything else that must not be trained, such as
  tool output).

Each loss returns a :class:`GRPOLossOutput`: the scalar loss and the statistics TRL logs (clip fractions, the mean of
the KL term, the mean importance weight). Each takes, after the five inputs, exactly the settings it reads, by name and
with a default (:func:`grpo_loss_settings` lists them), under TRL's ``GRPOConfig`` names. Shared settings:

* ``epsilon_low``, ``epsilon_high``: the clip range ``[1 - epsilon_low, 1 + epsilon_high]`` of the importance ratio
  (TRL's ``epsilon`` and ``epsilon_high``; "clip-higher", DAPO, Yu et al. 2025, recommends ``epsilon_high = 0.28``);
* ``delta``: INTELLECT-2's two-sided clipping (Prime Intellect 2025): the unclipped ratio is also capped at ``delta``
  (``None``: off);
* ``importance_sampling_level``: ``token`` (one ratio per token, ``r_t = pi / pi_old``) or ``sequence`` (GSPO, Zheng
  et al. 2025: one ratio per reply, ``exp(mean_t log r_t)`` over its tokens, applied to all of them);
* ``beta``, ``kl_estimator``, ``use_bias_correction_kl``: the KL-in-loss term ``beta * kl_t`` added to every token's
  loss (DeepSeekMath, Shao et al. 2024, eq. 3-4); ``k3`` (TRL's only estimator, the paper's) or ``k1`` from
  :mod:`lightning_post.losses.rl`; with ``use_bias_correction_kl`` (TRL's default) ``kl_t`` is multiplied by the
  importance ratio, so that off-policy its gradient is that of the reverse KL (DeepSeek-V3.2, 2025);
* ``off_policy_mask_threshold``: DeepSeek-V3.2's off-policy sequence mask: a reply with a negative advantage whose
  mean ``log pi_old - log pi`` exceeds the threshold is dropped from the policy term (``None``: off).

Normalisation, the axis on which the losses differ most (``L_t`` the per-token loss, ``m`` the mask):

=========================  ======================================================================================
``grpo``, ``sapo``         ``mean_i (sum_t m L_t / sum_t m)``: each reply's token mean, then the mean over replies
``bnpo``, ``dapo``,        ``sum_{i,t} m L_t / sum_{i,t} m``: a mean over every reply token of the batch
``cispo``, ``vespo``
``dr_grpo``                ``sum_{i,t} m L_t / (B * max_completion_length)``: a constant, free of length bias
``luspo``                  ``mean_i sum_t m L_t``: each reply's token sum (its loss scaled by its length)
=========================  ======================================================================================

What TRL 1.16 does that these functions do not, and what they do instead:

* TRL divides ``dapo`` / ``cispo`` / ``vespo`` by the number of reply tokens in the whole generation batch, gathered
  over processes and accumulation steps (``num_items_in_batch``), and ``bnpo`` by the local micro-batch's; here the
  batch is the tensors given, one process, so ``dapo`` equals ``bnpo``. TRL also divides every loss by the number of
  accumulation steps; here the caller (Lightning) scales for accumulation.
* TRL's vLLM importance-sampling correction (``vllm_importance_sampling_correction``: a ratio between the trainer's and
  the sampler's log-probabilities) is not applied: replies are sampled by the policy itself, so ``old_logps`` are
  the sampler's log-probabilities. The off-policy mask therefore measures drift against ``old_logps``, as TRL does
  without vLLM.
* ``top_entropy_quantile`` (training only the high-entropy tokens) and the entropy bonus (``entropy_coef``) need
  per-token entropies, which these functions do not take; the caller can add an entropy term, and can drop tokens
  from ``mask`` (which also drops them from the normaliser, unlike TRL's entropy mask).
* TRL reduces its logged clip fractions and KL over processes; here they are the batch's.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch

from lightning_post.losses.rl import KL_ESTIMATORS
from lightning_post.losses.settings import loss_settings

Tensor = torch.Tensor

#: the tensors every GRPO-family loss takes first; its further arguments are its settings
GRPO_INPUTS = ("logps", "old_logps", "ref_logps", "advantages", "mask")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
SCALE_REWARDS = ("group", "batch", "none")


class GRPOLossOutput(NamedTuple):
    """What a GRPO-family loss returns; every field is a scalar tensor (``kl`` is ``None`` without ``ref_logps``).

    The shares and means are over reply tokens (``mask``), or over replies where the quantity is one per reply
    (sequence-level ratios), as TRL logs them.
    """

    #: the loss to minimise
    loss: Tensor
    #: share of ratios below ``1 - epsilon_low`` with a negative advantage (clipped from below); 0 where no clip
    clip_low: Tensor
    #: share of ratios above ``1 + epsilon_high`` (``cispo``: above ``epsilon_high``) with a positive advantage
    clip_high: Tensor
    #: mean of the KL term as it enters the loss (times the ratio with ``use_bias_correction_kl``), before ``beta``
    kl: Optional[Tensor]
    #: mean weight the loss puts on ``A`` (ratio, capped ratio, SAPO's gate, VESPO's gamma weight phi), detached
    weight: Tensor


#: a surrogate: ``(ratio, log_ratio, logps, advantages, mask) -> (per-token loss, clipped low, clipped high,
#: weight)``, where ratio is ``(B, T)`` or ``(B, 1)`` and the clip masks are boolean or ``None``
Surrogate = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor],
                     tuple[Tensor, Optional[Tensor], Optional[Tensor], Tensor]]
#: a normaliser: ``(per-token loss, mask) -> scalar``
Reduce = Callable[[Tensor, Tensor], Tensor]


# ---- importance ratios ----------------------------------------------------------------------------------------------
def log_importance_weights(logps: Tensor, old_logps: Tensor, mask: Tensor, level: str = "token") -> Tensor:
    """``log(pi / pi_old)`` per token ``(B, T)`` (``level="token"``), or GSPO's per reply ``(B, 1)``
    (``level="sequence"``): the mean token log-ratio over the reply, ``sum_t m (logp - old) / max(1, sum_t m)``, so
    the sequence ratio is the geometric mean of the token ratios."""
    log_ratio = logps - old_logps
    if level == "token":
        return log_ratio
    if level == "sequence":
        return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)  # (B, 1)
    raise ValueError(f"importance_sampling_level must be one of {IMPORTANCE_SAMPLING_LEVELS}, not {level!r}")


def vespo_gamma_weights(advantages: Tensor, log_ratio: Tensor, mask: Tensor, k_pos: float = 2.0,
                        lambda_pos: float = 3.0, k_neg: float = 3.0, lambda_neg: float = 2.0) -> Tensor:
    """VESPO's gamma weight per reply ``(B, 1)`` (detached): ``phi(w) = exp(lambda + k log w - lambda w)``, i.e.
    ``e^lambda w^k e^{-lambda w}`` with ``phi(1) = 1``, on the sequence ratio ``w = exp(sum_t m log r_t)`` (a
    product of token ratios, not GSPO's geometric mean); ``(k, lambda)`` are ``(k_pos, lambda_pos)`` for
    ``A >= 0`` and ``(k_neg, lambda_neg)`` otherwise. Token log-ratios are clamped to ``[-20, 20]`` and ``log w`` to
    ``[log 1e-8, 20]``, as TRL (and the VESPO code) do; an overflow gives 0."""
    with torch.no_grad():
        seq = (log_ratio.clamp(-20.0, 20.0) * mask).sum(-1, keepdim=True)  # (B, 1)
        log_w = seq.clamp(math.log(1e-8), 20.0)
        nonneg = advantages >= 0
        k = torch.where(nonneg, k_pos, k_neg)
        lam = torch.where(nonneg, lambda_pos, lambda_neg).clamp(min=1e-4)
        return torch.exp(lam + k * log_w - lam * log_w.exp()).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


# ---- surrogates: the per-token loss of each family ------------------------------------------------------------------
def _clipped(epsilon_low: float, epsilon_high: float, delta: Optional[float]) -> Surrogate:
    """PPO's clipped surrogate ``-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)``, ``r`` capped at ``delta``."""
    def surrogate(ratio, log_ratio, logps, advantages, mask):
        clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
        if delta is not None:
            ratio = torch.clamp(ratio, max=delta)
        loss = -torch.min(ratio * advantages, clipped * advantages)
        low = (ratio < 1 - epsilon_low) & (advantages < 0)
        high = (ratio > 1 + epsilon_high) & (advantages > 0)
        return loss, low, high, ratio.detach()
    return surrogate


def _cispo(epsilon_high: float) -> Surrogate:
    """CISPO: ``-sg(min(r, epsilon_high)) A log pi``: the ratio is capped and detached, the gradient flows through
    ``log pi`` of every token (none is dropped, unlike PPO clipping)."""
    def surrogate(ratio, log_ratio, logps, advantages, mask):
        capped = torch.clamp(ratio, max=epsilon_high).detach()
        high = (ratio > epsilon_high) & (advantages > 0)
        return -capped * advantages * logps, None, high, capped
    return surrogate


def _sapo(temperature_pos: float, temperature_neg: float) -> Surrogate:
    """SAPO: ``-(4 / tau) sigmoid(tau (r - 1)) A``, a soft gate in place of the clip (slope 1 at ``r = 1``, as the
    unclipped objective); ``tau = temperature_pos`` for ``A > 0``, else ``temperature_neg``."""
    def surrogate(ratio, log_ratio, logps, advantages, mask):
        tau = torch.where(advantages > 0, temperature_pos, temperature_neg)
        gate = torch.sigmoid(tau * (ratio - 1)) * 4 / tau
        return -gate * advantages, None, None, gate.detach()
    return surrogate


def _vespo(k_pos: float, lambda_pos: float, k_neg: float, lambda_neg: float) -> Surrogate:
    """VESPO: ``-phi(w) A log pi`` with the detached gamma weight of :func:`vespo_gamma_weights`."""
    def surrogate(ratio, log_ratio, logps, advantages, mask):
        phi = vespo_gamma_weights(advantages, log_ratio, mask, k_pos, lambda_pos, k_neg, lambda_neg)
        return -phi * advantages * logps, None, None, phi
    return surrogate


# ---- normalisers ----------------------------------------------------------------------------------------------------
def _mean_of_reply_means(per_token: Tensor, mask: Tensor) -> Tensor:
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def _token_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def _constant(max_completion_length: int) -> Reduce:
    def reduce(per_token, mask):
        return (per_token * mask).sum() / (per_token.size(0) * max_completion_length)
    return reduce


def _mean_of_reply_sums(per_token: Tensor, mask: Tensor) -> Tensor:
    return (per_token * mask).sum(-1).mean()


def _batch_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over reply tokens, or over replies where ``x`` is one value per reply ``(B, 1)`` (TRL's logging)."""
    if x.shape[1] == 1:
        return x.sum() / x.shape[0]
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


# ---- the shared body ------------------------------------------------------------------------------------------------
def _policy_loss(logps: Tensor, old_logps: Tensor, ref_logps: Optional[Tensor], advantages: Tensor, mask: Tensor,
                 surrogate: Surrogate, reduce: Reduce, beta: float, kl_estimator: str, use_bias_correction_kl: bool,
                 importance_sampling_level: str, off_policy_mask_threshold: Optional[float]) -> GRPOLossOutput:
    """Steps: 1. ratio per token or reply; 2. the KL term; 3. the family's per-token loss; 4. the off-policy mask;
    5. plus ``beta`` times the KL term; 6. the family's normaliser; 7. the logged statistics."""
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {tuple(KL_ESTIMATORS)}, not {kl_estimator!r}")
    if beta != 0.0 and ref_logps is None:
        raise ValueError(f"beta = {beta} puts a KL term in the loss, which needs ref_logps")
    mask = mask.to(logps.dtype)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # (B, 1): one advantage per reply, broadcast over its tokens
    # step 1
    log_ratio = logps - old_logps
    ratio = torch.exp(log_importance_weights(logps, old_logps, mask, importance_sampling_level))  # (B, T) or (B, 1)
    # step 2
    kl = None
    if ref_logps is not None:
        kl = KL_ESTIMATORS[kl_estimator](logps, ref_logps)  # (B, T)
        if use_bias_correction_kl:
            kl = kl * ratio
    # step 3
    per_token, low, high, weight = surrogate(ratio, log_ratio, logps, advantages, mask)
    # step 4: keep a reply unless its advantage is negative and it drifted beyond the threshold (mean old - new)
    if off_policy_mask_threshold is not None:
        drift = ((old_logps - logps.detach()) * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
        per_token = per_token * ((advantages >= 0) | (drift <= off_policy_mask_threshold)).to(per_token.dtype)
    # step 5
    if beta != 0.0:
        per_token = per_token + beta * kl
    # step 6
    loss = reduce(per_token, mask)
    # step 7
    with torch.no_grad():
        zero = torch.zeros((), dtype=logps.dtype, device=logps.device)
        return GRPOLossOutput(
            loss=loss,
            clip_low=zero if low is None else _batch_mean(low.to(logps.dtype), mask),
            clip_high=zero if high is None else _batch_mean(high.to(logps.dtype), mask),
            kl=None if kl is None else _batch_mean(kl.detach(), mask),
            weight=_batch_mean(weight, mask),
        )


# ---- the registered losses ------------------------------------------------------------------------------------------
def grpo_loss(logps, old_logps, ref_logps, advantages, mask, epsilon_low=0.2, epsilon_high=0.2, delta=None,
              importance_sampling_level="token", beta=0.0, kl_estimator="k3", use_bias_correction_kl=True,
              off_policy_mask_threshold=None) -> GRPOLossOutput:
    """GRPO (DeepSeekMath, Shao et al. 2024, eq. 3): the clipped surrogate, averaged over each reply's tokens, then
    over replies. Favours short replies with positive advantage and long ones with negative (each reply weighs the
    same whatever its length). With ``importance_sampling_level="sequence"`` this is GSPO (Zheng et al. 2025)."""
    return _policy_loss(logps, old_logps, ref_logps, advantages, mask, _clipped(epsilon_low, epsilon_high, delta),
                        _mean_of_reply_means, beta, kl_estimator, use_bias_correction_kl, importance_sampling_level,
                        off_policy_mask_threshold)


def bnpo_loss(logps, old_logps, ref_logps, advantages, mask, epsilon_low=0.2, epsilon_high=0.2, delta=None,
              importance_sampling_level="token", beta=0.0, kl_estimator="k3", use_bias_correction_kl=True,
              off_policy_mask_threshold=None) -> GRPOLossOutput:
    """BNPO as TRL names it, and DAPO's token-level policy-gradient loss (Yu et al. 2025, eq. 10; TRL's default
    ``loss_type``): the clipped surrogate summed over every reply token and divided by their number, so a reply
    counts by its length. TRL divides ``bnpo`` by the local micro-batch's token count and ``dapo`` by that of the
    whole generation batch (all processes and accumulation steps); here both divide by the batch given, which makes
    them one function. DAPO pairs it with ``epsilon_high = 0.28`` (clip-higher)."""
    return _policy_loss(logps, old_logps, ref_logps, advantages, mask, _clipped(epsilon_low, epsilon_high, delta),
                        _token_mean, beta, kl_estimator, use_bias_correction_kl, importance_sampling_level,
                        off_policy_mask_threshold)


def dr_grpo_loss(logps, old_logps, ref_logps, advantages, mask, epsilon_low=0.2, epsilon_high=0.2, delta=None,
                 max_completion_length=512, importance_sampling_level="token", beta=0.0, kl_estimator="k3",
                 use_bias_correction_kl=True, off_policy_mask_threshold=None) -> GRPOLossOutput:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training"): the clipped surrogate summed over all reply
    tokens and divided by the constant ``B * max_completion_length``, which removes GRPO's length bias.
    ``max_completion_length`` is the generation's token budget (TRL: ``GRPOConfig.max_completion_length``, 512);
    pair it with ``scale_rewards="none"`` as the paper does."""
    return _policy_loss(logps, old_logps, ref_logps, advantages, mask, _clipped(epsilon_low, epsilon_high, delta),
                        _constant(max_completion_length), beta, kl_estimator, use_bias_correction_kl,
                        importance_sampling_level, off_policy_mask_threshold)


def luspo_loss(logps, old_logps, ref_logps, advantages, mask, epsilon_low=0.2, epsilon_high=0.2, delta=None,
               importance_sampling_level="sequence", beta=0.0, kl_estimator="k3", use_bias_correction_kl=True,
               off_policy_mask_threshold=None) -> GRPOLossOutput:
    """LUSPO (length-unbiased sequence policy optimisation, arXiv 2602.05261): GSPO's clipped sequence-ratio
    surrogate, each reply's loss scaled by its length (summed over its tokens), then averaged over replies.
    ``importance_sampling_level`` defaults to ``sequence`` here, as the paper sets it (TRL's default is ``token``,
    with a warning)."""
    return _policy_loss(logps, old_logps, ref_logps, advantages, mask, _clipped(epsilon_low, epsilon_high, delta),
                        _mean_of_reply_sums, beta, kl_estimator, use_bias_correction_kl, importance_sampling_level,
                        off_policy_mask_threshold)


def cispo_loss(logps, old_logps, ref_logps, advantages, mask, epsilon_high=5.0, importance_sampling_level="token",
               beta=0.0, kl_estimator="k3", use_bias_correction_kl=True, off_policy_mask_threshold=None
               ) -> GRPOLossOutput:
    """CISPO (MiniMax-M1, 2025): ``-sg(min(r, epsilon_high)) A log pi`` per token, averaged over every reply token of
    the batch. ``epsilon_high`` caps the ratio itself, not ``1 + epsilon``: ScaleRL (2025) recommends 5.0, our
    default. TRL's ``epsilon_high`` defaults to ``epsilon`` (0.2), which with ``cispo`` caps every ratio at 0.2;
    set it explicitly there. The value is not the surrogate's (it carries ``log pi``); its gradient is
    ``sg(min(r, eps)) A grad log pi``."""
    return _policy_loss(logps, old_logps, ref_logps, advantages, mask, _cispo(epsilon_high), _token_mean, beta,
                        kl_estimator, use_bias_correction_kl, importance_sampling_level, off_policy_mask_threshold)


def sapo_loss(logps, old_logps, ref_logps, advantages, mask, sapo_temperature_pos=1.0, sapo_temperature_neg=1.05,
              importance_sampling_level="token", beta=0.0, kl_estimator="k3", use_bias_correction_kl=True,
              off_policy_mask_threshold=None) -> GRPOLossOutput:
    """SAPO (soft adaptive policy optimisation, arXiv 2511.20347): ``-(4 / tau) sigmoid(tau (r - 1)) A`` per token,
    a smooth gate that fades updates of far off-policy tokens instead of cutting them; ``tau`` is
    ``sapo_temperature_pos`` for ``A > 0``, else ``sapo_temperature_neg``. Normalised as ``grpo`` (each reply's
    token mean, then the mean over replies)."""
    return _policy_loss(logps, old_logps, ref_logps, advantages, mask,
                        _sapo(sapo_temperature_pos, sapo_temperature_neg), _mean_of_reply_means, beta, kl_estimator,
                        use_bias_correction_kl, importance_sampling_level, off_policy_mask_threshold)


def vespo_loss(logps, old_logps, ref_logps, advantages, mask, vespo_k_pos=2.0, vespo_lambda_pos=3.0, vespo_k_neg=3.0,
               vespo_lambda_neg=2.0, importance_sampling_level="token", beta=0.0, kl_estimator="k3",
               use_bias_correction_kl=True, off_policy_mask_threshold=None) -> GRPOLossOutput:
    """VESPO (variational sequence-level soft policy optimisation, arXiv 2602.10693): ``-phi(w) A log pi`` per token
    with the detached gamma weight ``phi`` of the sequence ratio (:func:`vespo_gamma_weights`), averaged over every
    reply token of the batch. ``phi`` has its own sequence ratio, so ``importance_sampling_level`` only sets the
    ratio of the bias-corrected KL term (keep ``token``, as TRL advises)."""
    return _policy_loss(logps, old_logps, ref_logps, advantages, mask,
                        _vespo(vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg), _token_mean, beta,
                        kl_estimator, use_bias_correction_kl, importance_sampling_level, off_policy_mask_threshold)


#: loss_type (TRL 1.16's names) -> loss function
GRPO_LOSSES: dict[str, Callable[..., GRPOLossOutput]] = {
    "grpo": grpo_loss,
    "dr_grpo": dr_grpo_loss,
    "dapo": bnpo_loss,  # one process, the batch given: DAPO's normaliser is BNPO's (see the module docstring)
    "bnpo": bnpo_loss,
    "cispo": cispo_loss,
    "sapo": sapo_loss,
    "luspo": luspo_loss,
    "vespo": vespo_loss,
}


def grpo_loss_settings(loss_type: str) -> dict[str, object]:
    """The settings of a registered GRPO-family loss with their defaults, read from its signature.

    >>> grpo_loss_settings("sapo")["sapo_temperature_neg"]
    1.05
    """
    return loss_settings(GRPO_LOSSES[loss_type], len(GRPO_INPUTS))


# ---- advantages -----------------------------------------------------------------------------------------------------
def _nanstd(x: Tensor, dim: Optional[int] = None) -> Tensor:
    """Bessel-corrected standard deviation ignoring NaNs (NaN where fewer than two values)."""
    if dim is None:
        x, dim = x.reshape(-1), 0
    count = (~torch.isnan(x)).sum(dim, keepdim=True)
    var = torch.nanmean((x - torch.nanmean(x, dim, keepdim=True)) ** 2, dim, keepdim=True)
    var = torch.where(count > 1, var * count / (count - 1), torch.full_like(var, float("nan")))
    return var.sqrt().squeeze(dim)


def group_advantages(rewards: Tensor, k: int, scale_rewards: str = "group", eps: float = 1e-4) -> Tensor:
    """Advantages ``(N * k,)`` of rewards ``(N * k,)`` in groups of ``k`` replies per prompt (rows ``p*k .. p*k+k-1``),
    as TRL 1.16 forms them: ``(r - group mean) / (std + eps)``, where ``std`` is (Bessel-corrected)

    * ``group``: the group's own (GRPO, Shao et al. 2024; equals :func:`lightning_post.losses.rl.grpo_advantages`);
    * ``batch``: the whole batch's (PPO Lite, arXiv 2508.08221), the baseline still the group mean;
    * ``none``: no division (Dr. GRPO, which argues that the group std biases toward too easy and too hard prompts).

    A NaN reward (a reply no reward function could score) is left out of its group's mean and std and gets
    advantage 0. A group whose rewards are all equal gets advantage 0 (up to ``eps``). With ``k = 1`` ``group``
    scaling divides by ``eps`` alone, as TRL does.

    >>> group_advantages(torch.tensor([1.0, 3.0, 0.0, 0.0]), 2, "none")
    tensor([-1.,  1.,  0.,  0.])
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, not {scale_rewards!r}")
    if rewards.dim() != 1 or rewards.numel() % k:
        raise ValueError(f"rewards must be (N * k,) with k = {k}, got shape {tuple(rewards.shape)}")
    groups = rewards.view(-1, k)  # (N, k)
    advantages = (groups - torch.nanmean(groups, 1, keepdim=True)).reshape(-1)
    if scale_rewards == "group":
        std = _nanstd(groups, 1).repeat_interleave(k) if k > 1 else torch.zeros_like(rewards)
        advantages = advantages / (std + eps)
    elif scale_rewards == "batch":
        std = _nanstd(rewards) if rewards.numel() > 1 else torch.zeros((), dtype=rewards.dtype)
        advantages = advantages / (std + eps)
    return advantages.nan_to_num(nan=0.0)
