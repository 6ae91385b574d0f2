"""RL maths against values derived by hand (the derivations are in each test's docstring)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_post.losses.rl import (
    adaptive_kl_coef, clipped_policy_loss, clipped_value_loss, entropy_from_logits, gae, grpo_advantages, kl_k1,
    kl_k3, rloo_advantages, token_rewards, whiten,
)

T = torch.tensor


def test_gae_by_hand_and_padding_does_not_leak():
    """gamma 0.9, lambda 0.8 (gamma*lambda = 0.72). Row 1: r = [1, 0, 2], V = [0.5, 1, 0.25]:
    delta_2 = 2 - 0.25 = 1.75 = A_2; delta_1 = 0 + 0.9*0.25 - 1 = -0.775, A_1 = -0.775 + 0.72*1.75 = 0.485;
    delta_0 = 1 + 0.9*1 - 0.5 = 1.4, A_0 = 1.4 + 0.72*0.485 = 1.7492; returns = A + V.
    Row 2 ends after two tokens (junk 9 and 5 in the padding): A_1 = 2 - 1 = 1, A_0 = 1 + 0.9 - 0.5 + 0.72 = 2.12."""
    rewards = T([[1.0, 0.0, 2.0], [1.0, 2.0, 5.0]])
    values = T([[0.5, 1.0, 0.25], [0.5, 1.0, 9.0]])
    mask = T([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, T([[1.7492, 0.485, 1.75], [2.12, 1.0, 0.0]]))
    torch.testing.assert_close(ret, T([[2.2492, 1.485, 2.0], [2.62, 2.0, 0.0]]))


def test_gae_with_gamma_lambda_one_and_no_values_is_reward_to_go():
    rewards = torch.randn(4, 7)
    mask = torch.ones(4, 7)
    adv, ret = gae(rewards, torch.zeros(4, 7), mask, gamma=1.0, lam=1.0)
    to_go = rewards.flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(adv, to_go)
    torch.testing.assert_close(ret, to_go)


def test_gae_with_lambda_zero_is_the_one_step_td_error():
    rewards, values, mask = torch.randn(3, 5), torch.randn(3, 5), torch.ones(3, 5)
    adv, _ = gae(rewards, values, mask, gamma=0.5, lam=0.0)
    next_values = torch.cat([values[:, 1:], torch.zeros(3, 1)], 1)
    torch.testing.assert_close(adv, rewards + 0.5 * next_values - values)


def test_whitening_ignores_padding():
    """Entries 1, 2, 3, 4: mean 2.5, unbiased variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3."""
    x = T([[1.0, 2.0, 3.0], [4.0, 100.0, -50.0]])
    mask = T([[1, 1, 1], [1, 0, 0]])
    want = (T([[1.0, 2.0, 3.0], [4.0, 2.5, 2.5]]) - 2.5) / math.sqrt(5 / 3)
    got = whiten(x, mask, eps=0.0)
    torch.testing.assert_close(got, want * mask)
    other_padding = whiten(T([[1.0, 2.0, 3.0], [4.0, -7.0, 1e6]]), mask, eps=0.0)
    torch.testing.assert_close(got, other_padding)
    torch.testing.assert_close(whiten(x, mask, shift_mean=False, eps=0.0), (want + 2.5) * mask)


def test_kl_estimators_by_hand():
    """pi = 0.5, pi_ref = 0.25: k1 = log 2; k3 with r = pi_ref / pi = 0.5: (0.5 - 1) - log 0.5 = 0.19315.
    Both are 0 where the two agree; k3 is never negative."""
    logp, ref = T([math.log(0.5), math.log(0.3)]), T([math.log(0.25), math.log(0.3)])
    torch.testing.assert_close(kl_k1(logp, ref), T([math.log(2), 0.0]))
    torch.testing.assert_close(kl_k3(logp, ref), T([-0.5 + math.log(2), 0.0]))
    a, b = torch.randn(1000), torch.randn(1000)
    assert (kl_k3(a, b) >= 0).all()


def test_k1_and_k3_are_unbiased_estimates_of_the_same_kl():
    """Sampled from pi, both estimators average to KL(pi || pi_ref) (here over a 3-token vocabulary)."""
    pi, ref = T([0.6, 0.3, 0.1]), T([0.2, 0.5, 0.3])
    exact = (pi * (pi / ref).log()).sum()
    g = torch.Generator().manual_seed(0)
    tokens = torch.multinomial(pi, 200_000, replacement=True, generator=g)
    logp, ref_logp = pi.log()[tokens], ref.log()[tokens]
    assert kl_k1(logp, ref_logp).mean().item() == pytest.approx(exact.item(), abs=0.01)
    assert kl_k3(logp, ref_logp).mean().item() == pytest.approx(exact.item(), abs=0.01)


def test_token_rewards_put_the_score_on_the_last_reply_token():
    """kl_coef 0.5: every reply token gets -0.5 kl; scores 1 and 2 land on the last unmasked token."""
    kl = T([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    mask = T([[1, 1, 1], [1, 1, 0]])
    got = token_rewards(T([1.0, 2.0]), kl, mask, kl_coef=0.5)
    torch.testing.assert_close(got, T([[-0.05, -0.1, -0.15 + 1.0], [-0.2, -0.25 + 2.0, 0.0]]))


def test_clipped_policy_loss_by_hand():
    """cliprange 0.2. Token 1: ratio 1.5, A = 2: max(-3, -2.4) = -2.4 (clipped). Token 2: ratio 0.5, A = -1:
    max(0.5, 0.8) = 0.8 (clipped). Token 3: ratio 1.1, A = 1: -1.1 both. Token 4 is padding.
    Mean (-2.4 + 0.8 - 1.1) / 3 = -0.9; clipfrac 2/3; approx_kl = mean(log r)^2 / 2."""
    old = torch.zeros(1, 4)
    logp = T([[math.log(1.5), math.log(0.5), math.log(1.1), 5.0]])
    adv = T([[2.0, -1.0, 1.0, 100.0]])
    mask = T([[1, 1, 1, 0]])
    loss, stats = clipped_policy_loss(logp, old, adv, mask, cliprange=0.2)
    assert loss.item() == pytest.approx(-0.9, abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)
    want_kl = (math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.1) ** 2) / 2 / 3
    assert stats["approx_kl"].item() == pytest.approx(want_kl, abs=1e-6)


def test_policy_loss_at_ratio_one_is_minus_the_mean_advantage_and_its_gradient_is_the_policy_gradient():
    logp = torch.zeros(2, 3, requires_grad=True)
    adv = T([[1.0, -2.0, 0.5], [3.0, 0.0, 0.0]])
    mask = T([[1, 1, 1], [1, 0, 0]])
    loss, _ = clipped_policy_loss(logp, logp.detach(), adv, mask, cliprange=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(-(1 - 2 + 0.5 + 3) / 4)
    torch.testing.assert_close(logp.grad, -adv * mask / 4)


def test_clipped_value_loss_by_hand():
    """V = 2, V_old = 1, R = 3, c = 0.5: clipped V = 1.5; max((2-3)^2, (1.5-3)^2) / 2 = 2.25 / 2 = 1.125.
    V = 2.8, V_old = 3, R = 3, c = 0.5: unclipped (0.04) wins; mean (1.125 + 0.02) / 2 = 0.5725, clipped share 1/2."""
    loss, frac = clipped_value_loss(T([[2.0, 2.8]]), T([[1.0, 3.0]]), T([[3.0, 3.0]]), T([[1, 1]]), 0.5)
    assert loss.item() == pytest.approx(0.5725, abs=1e-6)
    assert frac.item() == 0.5


def test_adaptive_kl_coefficient_closed_form():
    """Ziegler et al.: error clipped to +-0.2; coef * (1 + error * n / horizon). kl 12 vs target 6: error 0.2 ->
    0.1 * (1 + 0.2 * 256 / 10000); kl 5.4: error -0.1 -> 0.1 * (1 - 0.1 * 256 / 10000); kl on target: unchanged."""
    assert adaptive_kl_coef(0.1, 12.0, 6.0, 10000, 256) == pytest.approx(0.1 * 1.00512)
    assert adaptive_kl_coef(0.1, 5.4, 6.0, 10000, 256) == pytest.approx(0.1 * 0.99744)
    assert adaptive_kl_coef(0.1, 6.0, 6.0, 10000, 256) == pytest.approx(0.1)


def test_rloo_and_grpo_by_hand():
    """k = 3. Scores (1, 2, 3): leave-one-out baselines 2.5, 2, 1.5 -> (-1.5, 0, 1.5); scores (0, 0, 6): baselines
    3, 3, 0 -> (-3, -3, 6). GRPO: group (1, 2, 3) has mean 2, std 1 -> (-1, 0, 1) / (1 + eps)."""
    scores = T([1.0, 2.0, 3.0, 0.0, 0.0, 6.0])
    torch.testing.assert_close(rloo_advantages(scores, 3), T([-1.5, 0.0, 1.5, -3.0, -3.0, 6.0]))
    got = grpo_advantages(scores, 3, eps=1e-4)
    torch.testing.assert_close(got[:3], T([-1.0, 0.0, 1.0]) / 1.0001)
    torch.testing.assert_close(got[3:], (T([0.0, 0.0, 6.0]) - 2.0) / (math.sqrt(12.0) + 1e-4))
    with pytest.raises(ValueError):
        rloo_advantages(scores, 1)


def test_entropy_of_uniform_and_one_hot():
    logits = torch.stack([torch.zeros(8), T([0.0] + [-1e9] * 7)])
    torch.testing.assert_close(entropy_from_logits(logits), T([math.log(8), 0.0]))
