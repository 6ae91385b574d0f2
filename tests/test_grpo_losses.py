"""The GRPO loss family and group advantages against values derived by hand (the derivations are in each test's
docstring), and their limits. ``benchmarks/grpo_losses/grpo_losses.py`` compares them with TRL's own code.

The shared example: two replies, three token slots, the second reply padded after two tokens.

* mask ``[[1, 1, 1], [1, 1, 0]]``, advantages ``A = [+1, -1]``;
* importance ratios ``r = pi / pi_old``: reply 1 ``[1, 1.5, 0.5]``, reply 2 ``[0.5, 1.1]`` (padding: 3, junk);
* policy log-probs ``[[-1, -2, -0.5], [-1, -0.5, -3]]`` (old = policy - log r).

The clipped surrogate ``L = -min(r A, clip(r, 0.8, 1.2) A)`` (epsilon 0.2) per token:

* reply 1 (A = +1): ``[-1, -1.2 (r = 1.5 clipped high), -0.5 (r = 0.5 below the range but A > 0: not clipped)]``,
  sum -2.7, mean -0.9;
* reply 2 (A = -1): ``[0.8 (r = 0.5 clipped low), 1.1]``, sum 1.9, mean 0.95.

So 1 of 5 reply tokens is clipped low and 1 of 5 high; the mean ratio is (1 + 1.5 + 0.5 + 0.5 + 1.1) / 5 = 0.92.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from lightning_post.losses.grpo import (
    GRPO_INPUTS, GRPO_LOSSES, group_advantages, grpo_loss_settings, log_importance_weights, vespo_gamma_weights,
)
from lightning_post.losses.rl import grpo_advantages
from lightning_post.losses.settings import loss_settings

T = torch.tensor
D = torch.float64
MASK = T([[1, 1, 1], [1, 1, 0]])
A = T([1.0, -1.0], dtype=D)
RATIO = T([[1.0, 1.5, 0.5], [0.5, 1.1, 3.0]], dtype=D)
LOGPS = T([[-1.0, -2.0, -0.5], [-1.0, -0.5, -3.0]], dtype=D)
OLD = LOGPS - RATIO.log()
KL3_LOG2 = 1 - math.log(2)  # k3 where pi_ref = 2 pi: (2 - 1) - log 2


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def run(loss_type, logps=LOGPS, old=OLD, ref=None, advantages=A, mask=MASK, **settings):
    """The loss output and the gradient with respect to the policy's log-probs."""
    logps = logps.clone().requires_grad_(True)
    out = GRPO_LOSSES[loss_type](logps, old, ref, advantages, mask, **settings)
    out.loss.backward()
    return out, logps.grad


def close(actual, expected):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=D), torch.as_tensor(expected, dtype=D))


# ---- the registry ---------------------------------------------------------------------------------------------------
def test_registry_has_every_trl_loss_type_and_each_names_its_settings():
    """TRL 1.16's GRPOConfig.loss_type values, each a function whose signature is its settings list."""
    assert set(GRPO_LOSSES) == {"grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"}
    for name, fn in GRPO_LOSSES.items():
        assert list(inspect.signature(fn).parameters)[:5] == list(GRPO_INPUTS)
        settings = loss_settings(fn, len(GRPO_INPUTS))
        assert settings == grpo_loss_settings(name)
        shared = {"importance_sampling_level", "beta", "kl_estimator", "use_bias_correction_kl",
                  "off_policy_mask_threshold"}
        assert shared <= set(settings), name
    assert grpo_loss_settings("dr_grpo")["max_completion_length"] == 512
    assert grpo_loss_settings("grpo")["epsilon_low"] == grpo_loss_settings("grpo")["epsilon_high"] == 0.2
    assert grpo_loss_settings("cispo") == {"epsilon_high": 5.0, "importance_sampling_level": "token", "beta": 0.0,
                                           "kl_estimator": "k3", "use_bias_correction_kl": True,
                                           "off_policy_mask_threshold": None}
    assert grpo_loss_settings("luspo")["importance_sampling_level"] == "sequence"
    assert "epsilon_low" not in grpo_loss_settings("sapo") and "delta" not in grpo_loss_settings("vespo")


# ---- the clipped family: one surrogate, four normalisers ------------------------------------------------------------
@pytest.mark.parametrize("loss_type, expected", [
    ("grpo", (-0.9 + 0.95) / 2),          # each reply's token mean, then the mean over replies
    ("bnpo", (-2.7 + 1.9) / 5),           # over the 5 reply tokens of the batch
    ("dapo", (-2.7 + 1.9) / 5),           # the same here: one process, the batch given
    ("dr_grpo", (-2.7 + 1.9) / (2 * 4)),  # B * max_completion_length = 2 * 4
    ("luspo", (-2.7 + 1.9) / 2),          # each reply's token sum, then the mean (token-level ratio here)
])
def test_clipped_losses_by_hand(loss_type, expected):
    """The module docstring's per-token surrogate, with each loss type's normaliser; clip shares 1/5 low, 1/5 high."""
    settings = {"max_completion_length": 4} if loss_type == "dr_grpo" else {}
    if loss_type == "luspo":
        settings["importance_sampling_level"] = "token"
    out, _ = run(loss_type, **settings)
    close(out.loss, expected)
    close(out.clip_low, 0.2)
    close(out.clip_high, 0.2)
    close(out.weight, 0.92)
    assert out.kl is None


def test_dr_grpo_divides_by_batch_times_max_completion_length_whatever_the_reply_lengths():
    """Doubling max_completion_length halves the loss; a third reply of only padding changes the constant to 3 * L
    (sum -0.8 over 3 * 4) but adds nothing to the sum."""
    close(run("dr_grpo", max_completion_length=4)[0].loss, -0.1)
    close(run("dr_grpo", max_completion_length=8)[0].loss, -0.05)
    logps, old = torch.cat([LOGPS, LOGPS[:1]]), torch.cat([OLD, OLD[:1]])
    mask, adv = torch.cat([MASK, torch.zeros(1, 3, dtype=MASK.dtype)]), torch.cat([A, T([5.0], dtype=D)])
    close(run("dr_grpo", logps, old, advantages=adv, mask=mask, max_completion_length=4)[0].loss, -0.8 / 12)


@pytest.mark.parametrize("loss_type, expected", [
    ("grpo", -(1 - 1) / 2),                     # -mean_i A_i
    ("bnpo", -(3 * 1 - 2 * 1) / 5),             # -sum_i n_i A_i / sum_i n_i
    ("dapo", -(3 * 1 - 2 * 1) / 5),
    ("dr_grpo", -(3 * 1 - 2 * 1) / (2 * 10)),   # -sum_i n_i A_i / (B L), L = 10
    ("luspo", -(3 * 1 - 2 * 1) / 2),            # -mean_i n_i A_i
])
def test_on_policy_without_kl_is_minus_the_mean_advantage_in_each_normalisation(loss_type, expected):
    """Ratio 1 everywhere, beta 0: every token's loss is -A_i; and the gradient is the plain policy gradient
    -A_i / (normaliser) per reply token (grpo: -A_i / (n_i B)), 0 on padding."""
    out, grad = run(loss_type, LOGPS, LOGPS, max_completion_length=10) if loss_type == "dr_grpo" else \
        run(loss_type, LOGPS, LOGPS)
    close(out.loss, expected)
    close(out.clip_low + out.clip_high, 0.0)
    if loss_type == "grpo":
        close(grad, T([[-1 / 6] * 3, [1 / 4, 1 / 4, 0.0]], dtype=D))


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo", "luspo"])
def test_clipping_engages_exactly_beyond_one_plus_minus_epsilon(loss_type):
    """Token ratios just inside and just outside [1 - 0.1, 1 + 0.3] (clip-higher): the gradient through a ratio is 0
    exactly where the clip holds it (r > 1.3 with A > 0, r < 0.9 with A < 0) and non-zero just inside; outside on
    the other side (r < 0.9 with A > 0) the clip does not apply."""
    tiny = 1e-6
    ratio = T([[1.3 - tiny, 1.3 + tiny, 0.9 - tiny], [0.9 + tiny, 0.9 - tiny, 1.3 + tiny]], dtype=D)
    mask = torch.ones(2, 3, dtype=torch.long)
    settings = {"epsilon_low": 0.1, "epsilon_high": 0.3, "importance_sampling_level": "token"}
    out, grad = run(loss_type, LOGPS, LOGPS - ratio.log(), advantages=A, mask=mask, **settings)
    assert (grad != 0).tolist() == [[True, False, True], [True, False, True]]
    close(out.clip_high, 1 / 6)
    close(out.clip_low, 1 / 6)


def test_delta_caps_the_unclipped_ratio_two_sided():
    """INTELLECT-2: A = -1, r = 3: PPO's loss is -min(-3, -1.2) = 3 (unbounded in r); with delta 1.5 it is
    -min(-1.5, -1.2) = 1.5, and the clip share still counts r = 3 > 1.2 only for A > 0 (here 0)."""
    logps, old = T([[-1.0]], dtype=D), T([[-1.0 - math.log(3)]], dtype=D)
    one = torch.ones(1, 1, dtype=torch.long)
    close(run("grpo", logps, old, advantages=T([-1.0], dtype=D), mask=one)[0].loss, 3.0)
    out, grad = run("grpo", logps, old, advantages=T([-1.0], dtype=D), mask=one, delta=1.5)
    close(out.loss, 1.5)
    close(grad, [[0.0]])


# ---- GSPO: one ratio per reply --------------------------------------------------------------------------------------
def test_sequence_ratio_is_exp_of_the_mean_token_log_ratio_over_the_reply():
    """Reply 1: exp((log 1 + log 1.5 + log 0.5) / 3) = 0.75^(1/3); reply 2: exp((log 0.5 + log 1.1) / 2) =
    0.55^(1/2); the padded slot's junk ratio 3 does not count."""
    seq = log_importance_weights(LOGPS, OLD, MASK.to(D), "sequence")
    assert seq.shape == (2, 1)
    close(seq.exp().squeeze(1), [0.75 ** (1 / 3), 0.55 ** 0.5])
    close(log_importance_weights(LOGPS, OLD, MASK.to(D), "token"), RATIO.log())
    with pytest.raises(ValueError, match="importance_sampling_level"):
        log_importance_weights(LOGPS, OLD, MASK.to(D), "tokens")


def test_gspo_by_hand():
    """s1 = 0.75^(1/3) = 0.9086 lies in [0.8, 1.2], A = +1: -s1 on each of 3 tokens; s2 = 0.55^(1/2) = 0.7416 < 0.8,
    A = -1: clipped, -min(-s2, -0.8) = 0.8 on each of 2 tokens. grpo: (-s1 + 0.8) / 2; dapo: (-3 s1 + 1.6) / 5;
    luspo: (-3 s1 + 1.6) / 2. Clip shares are per reply: 1 of 2 low."""
    s1 = 0.75 ** (1 / 3)
    for loss_type, expected in [("grpo", (-s1 + 0.8) / 2), ("dapo", (-3 * s1 + 1.6) / 5),
                                ("luspo", (-3 * s1 + 1.6) / 2)]:
        out, _ = run(loss_type, importance_sampling_level="sequence")
        close(out.loss, expected)
        close(out.clip_low, 0.5)
        close(out.clip_high, 0.0)
    close(run("luspo")[0].loss, (-3 * s1 + 1.6) / 2)  # luspo's default level is the sequence


# ---- the KL term ----------------------------------------------------------------------------------------------------
def test_kl_in_loss_k3_and_k1_on_policy():
    """pi_ref = 2 pi on every token, on-policy: k3 = 1 - log 2 and k1 = -log 2 per token, so grpo's loss is
    -mean(A) + beta * kl = 0 + 0.1 (1 - log 2), or 0.1 * (-log 2) with k1. The k3 gradient on-policy with the
    (differentiable) bias-correction ratio is k3 + (1 - pi_ref / pi) = (1 - log 2) - 1 per token, scaled by
    beta / (n_i B); without the correction it is 1 - 2 = -1."""
    ref = LOGPS + math.log(2)
    out, grad = run("grpo", LOGPS, LOGPS, ref, beta=0.1)
    close(out.loss, 0.1 * KL3_LOG2)
    close(out.kl, KL3_LOG2)
    scale = T([[1 / 6] * 3, [1 / 4, 1 / 4, 0.0]], dtype=D)
    policy_grad = -A[:, None] * scale  # the on-policy policy-gradient part
    close(grad, policy_grad + 0.1 * (KL3_LOG2 - 1) * scale)
    grad_plain = run("grpo", LOGPS, LOGPS, ref, beta=0.1, use_bias_correction_kl=False)[1]
    close(grad_plain, policy_grad + 0.1 * -1 * scale)
    out_k1 = run("grpo", LOGPS, LOGPS, ref, beta=0.1, kl_estimator="k1")[0]
    close(out_k1.loss, 0.1 * -math.log(2))
    close(out_k1.kl, -math.log(2))


def test_bias_corrected_kl_is_weighted_by_the_ratio():
    """The shared example with pi_ref = 2 pi: the KL term per token is (1 - log 2) * r, reply means
    (1 - log 2) * 1.0 and (1 - log 2) * 0.8, so grpo = 0.025 + 0.1 (1 - log 2) 0.9, and the logged kl is the token
    mean (1 - log 2) * 0.92; uncorrected: 0.025 + 0.1 (1 - log 2)."""
    ref = LOGPS + math.log(2)
    out = run("grpo", ref=ref, beta=0.1)[0]
    close(out.loss, 0.025 + 0.1 * KL3_LOG2 * 0.9)
    close(out.kl, KL3_LOG2 * 0.92)
    close(run("grpo", ref=ref, beta=0.1, use_bias_correction_kl=False)[0].loss, 0.025 + 0.1 * KL3_LOG2)
    assert run("grpo", ref=ref)[0].kl is not None  # logged with beta 0 when a reference is given
    with pytest.raises(ValueError, match="needs ref_logps"):
        run("grpo", beta=0.1)
    with pytest.raises(ValueError, match="kl_estimator"):
        run("grpo", ref=ref, beta=0.1, kl_estimator="k2")


def test_off_policy_mask_drops_drifted_replies_with_negative_advantage():
    """Reply 2 (A = -1) drifted by mean(log pi_old - log pi) = -(log 0.5 + log 1.1) / 2 = 0.2989: a threshold of
    0.2 drops it (grpo = (-0.9 + 0) / 2), 0.5 keeps it; reply 1 (A = +1) is always kept."""
    close(run("grpo", off_policy_mask_threshold=0.2)[0].loss, -0.45)
    close(run("grpo", off_policy_mask_threshold=0.5)[0].loss, 0.025)


# ---- CISPO, SAPO, VESPO ---------------------------------------------------------------------------------------------
def test_cispo_by_hand():
    """-sg(min(r, eps)) A log pi per token over 5 tokens. eps 1.2: reply 1 -[1 (-1), 1.2 (-2), 0.5 (-0.5)] =
    [1, 2.4, 0.25], reply 2 +[0.5 (-1), 1.1 (-0.5)] = [-0.5, -0.55]: (3.65 - 1.05) / 5 = 0.52; 1 of 5 clipped
    high; the gradient is -sg(min(r, eps)) A / 5 (r = 1.5 contributes -1.2 / 5, not 0 as PPO's clip would).
    Default eps 5: reply 1 [1, 3, 0.25]: (4.25 - 1.05) / 5 = 0.64, nothing capped."""
    out, grad = run("cispo", epsilon_high=1.2)
    close(out.loss, 0.52)
    close(out.clip_high, 0.2)
    close(out.clip_low, 0.0)
    close(grad, T([[-1.0, -1.2, -0.5], [0.5, 1.1, 0.0]], dtype=D) / 5)
    out = run("cispo")[0]
    close(out.loss, 0.64)
    close(out.clip_high, 0.0)


def test_sapo_by_hand_and_its_on_policy_gradient_is_the_policy_gradient():
    """-(4 / tau) sigmoid(tau (r - 1)) A, tau = 1 for A > 0, 1.05 otherwise. Reply 1: -4 [s(0), s(0.5), s(-0.5)],
    sum -4 (0.5 + 1) = -6 (s(x) + s(-x) = 1), mean -2. Reply 2: (4 / 1.05) [s(-0.525), s(0.105)] / 2. grpo
    normalisation: mean of the two. On-policy d/dr at r = 1 is 4 s'(0) = 1, the unclipped objective's slope."""
    reply2 = 4 / 1.05 * (sigmoid(-0.525) + sigmoid(0.105)) / 2
    out = run("sapo")[0]
    close(out.loss, (-2 + reply2) / 2)
    close(out.clip_low + out.clip_high, 0.0)
    swapped = run("sapo", sapo_temperature_pos=1.05, sapo_temperature_neg=1.0)[0]
    reply1 = -4 / 1.05 * (sigmoid(0.0) + sigmoid(1.05 * 0.5) + sigmoid(-1.05 * 0.5)) / 3
    close(swapped.loss, (reply1 + 4 * (sigmoid(-0.5) + sigmoid(0.1)) / 2) / 2)
    close(run("sapo", LOGPS, LOGPS)[1], run("grpo", LOGPS, LOGPS)[1])


def test_vespo_by_hand():
    """w = product of token ratios: 0.75 and 0.55. phi = exp(lambda + k log w - lambda w): reply 1 (A >= 0, k 2,
    lambda 3) e^(3 - 2.25) 0.75^2 = 1.19081; reply 2 (k 3, lambda 2) e^(2 - 1.1) 0.55^3 = 0.40922. Loss
    -phi A log pi per token over 5: (1.19081 * 3.5 - 0.40922 * 1.5) / 5; gradient -phi A / 5; the logged weight is
    the mean phi over replies. On-policy w = 1, phi = 1."""
    phi1, phi2 = math.exp(0.75) * 0.75 ** 2, math.exp(0.9) * 0.55 ** 3
    out, grad = run("vespo")
    close(out.loss, (phi1 * 3.5 - phi2 * 1.5) / 5)
    close(grad, T([[-phi1] * 3, [phi2, phi2, 0.0]], dtype=D) / 5)
    close(out.weight, (phi1 + phi2) / 2)
    phi = vespo_gamma_weights(A[:, None], torch.zeros(2, 3, dtype=D), MASK.to(D))
    close(phi, [[1.0], [1.0]])


# ---- every loss ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_type", sorted(GRPO_LOSSES))
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_padding_never_leaks_into_the_loss_its_gradient_or_its_statistics(loss_type, level):
    """Junk in the padded slot of every input (policy, old, reference, per-token advantage) changes nothing."""
    ref = LOGPS + 0.3
    adv = A[:, None].expand(2, 3).clone()
    junk = torch.zeros(2, 3, dtype=D)
    junk[1, 2] = 7.0
    settings = {"importance_sampling_level": level, "beta": 0.05, "off_policy_mask_threshold": 0.1}
    clean, clean_grad = run(loss_type, ref=ref, advantages=adv, **settings)
    dirty, dirty_grad = run(loss_type, LOGPS + junk, OLD - junk, ref + junk, adv + junk, **settings)
    for a, b in zip(clean, dirty):
        close(a, b)
    close(clean_grad, dirty_grad)
    assert dirty_grad[1, 2] == 0


def test_per_sequence_and_per_token_advantages_agree_when_the_token_advantages_are_constant():
    for loss_type in GRPO_LOSSES:
        per_token = run(loss_type, advantages=A[:, None].expand(2, 3))[0]
        close(per_token.loss, run(loss_type)[0].loss)


# ---- group advantages -----------------------------------------------------------------------------------------------
def test_group_advantages_by_hand():
    """Rewards [1, 0, 0, 0 | 1, 1, 1, 1], k = 4. Group 1: mean 0.25, unbiased std sqrt((0.5625 + 3 * 0.0625) / 3)
    = 0.5; group 2: all equal, advantage 0. batch: the whole batch's std, mean 5/8, sum of squares 5 (3/8)^2 +
    3 (5/8)^2 = 1.875, std sqrt(1.875 / 7), the baseline still the group mean. none: r - group mean."""
    rewards = T([1.0, 0, 0, 0, 1, 1, 1, 1])
    centred = T([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])
    close(group_advantages(rewards, 4, "group"), centred / (0.5 + 1e-4))
    close(group_advantages(rewards, 4, "batch"), centred / (math.sqrt(1.875 / 7) + 1e-4))
    close(group_advantages(rewards, 4, "none"), centred)
    close(group_advantages(rewards, 4), grpo_advantages(rewards, 4))


def test_group_advantages_leave_out_unscored_replies():
    """[1, NaN, 0, 0]: the group is [1, 0, 0], mean 1/3, unbiased std sqrt((4/9 + 1/9 + 1/9) / 2) = sqrt(1/3); the
    NaN reply's advantage is 0. k = 1 with group scaling: r - r = 0."""
    adv = group_advantages(T([1.0, float("nan"), 0, 0]), 4, "group")
    close(adv, T([2 / 3, 0, -1 / 3, -1 / 3]) / (math.sqrt(1 / 3) + 1e-4))
    close(group_advantages(T([1.0, 2.0]), 1, "group"), [0.0, 0.0])
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(T([1.0, 2.0]), 2, "std")
    with pytest.raises(ValueError, match="N \\* k"):
        group_advantages(T([1.0, 2.0, 3.0]), 2)
