"""Preference losses against values derived by hand, their limits, and TRL 1.16's formulas (restated here)."""

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_post.losses.preference import DPO_LOSSES, REFERENCE_FREE, bradley_terry_loss, implicit_rewards

# Two pairs. Pair 0: z = (-5 - -7) - (-6 - -6.5) = 2 - 0.5 = 1.5. Pair 1: z = (-3 - -2) - (-3 - -3) = -1.
PC, PR = torch.tensor([-5.0, -3.0]), torch.tensor([-7.0, -2.0])
RC, RR = torch.tensor([-6.0, -3.0]), torch.tensor([-6.5, -3.0])
Z = torch.tensor([1.5, -1.0])


def sp(x):  # softplus(x) = log(1 + e^x) = -log sigma(-x)
    return math.log1p(math.exp(x))


def test_sigmoid_by_hand():
    """beta = 0.1: loss = -log sigma(0.15) = log(1 + e^-0.15) and -log sigma(-0.1) = log(1 + e^0.1)."""
    loss = DPO_LOSSES["sigmoid"](PC, PR, RC, RR, beta=0.1)
    assert loss.tolist() == pytest.approx([sp(-0.15), sp(0.1)], abs=1e-7)
    assert sp(-0.15) == pytest.approx(0.6209570, abs=1e-6)  # e^-0.15 = 0.860708, ln 1.860708


def test_sigmoid_with_label_smoothing_by_hand():
    """eps = 0.2, beta = 0.1, z = 1.5: 0.8 log(1 + e^-0.15) + 0.2 log(1 + e^0.15)."""
    loss = DPO_LOSSES["sigmoid"](PC, PR, RC, RR, beta=0.1, label_smoothing=0.2)
    assert loss[0].item() == pytest.approx(0.8 * sp(-0.15) + 0.2 * sp(0.15), abs=1e-7)


def test_robust_by_hand():
    """eps = 0.2: (0.8 log(1 + e^-0.15) - 0.2 log(1 + e^0.15)) / 0.6."""
    loss = DPO_LOSSES["robust"](PC, PR, RC, RR, beta=0.1, label_smoothing=0.2)
    assert loss[0].item() == pytest.approx((0.8 * sp(-0.15) - 0.2 * sp(0.15)) / 0.6, abs=1e-7)
    with pytest.raises(ValueError):
        DPO_LOSSES["robust"](PC, PR, RC, RR, label_smoothing=0.5)


def test_hinge_by_hand():
    """beta = 0.5: max(0, 1 - 0.75) = 0.25 and max(0, 1 + 0.5) = 1.5; beta = 1: max(0, 1 - 1.5) = 0."""
    assert DPO_LOSSES["hinge"](PC, PR, RC, RR, beta=0.5).tolist() == pytest.approx([0.25, 1.5])
    assert DPO_LOSSES["hinge"](PC, PR, RC, RR, beta=1.0)[0].item() == 0.0


def test_ipo_by_hand():
    """beta = 0.25: 1/(2 beta) = 2, so (1.5 - 2)^2 = 0.25 and (-1 - 2)^2 = 9."""
    assert DPO_LOSSES["ipo"](PC, PR, RC, RR, beta=0.25).tolist() == pytest.approx([0.25, 9.0])


def test_simpo_by_hand_and_reference_free():
    """beta = 2, gamma = 0.5, avg log-probs -1.0 vs -1.5: -log sigma(2 * 0.5 - 0.5) = log(1 + e^-0.5)."""
    loss = DPO_LOSSES["simpo"](torch.tensor([-1.0]), torch.tensor([-1.5]), None, None, beta=2.0, gamma=0.5)
    assert loss.item() == pytest.approx(sp(-0.5), abs=1e-7)
    assert "simpo" in REFERENCE_FREE


@pytest.mark.parametrize("loss_type", ["sigmoid", "robust"])
def test_log2_when_policy_equals_reference(loss_type):
    """Step 0 of DPO: policy == reference, z = 0, loss = -log sigma(0) = log 2 for any beta (and any smoothing)."""
    lp = torch.tensor([-12.3, -4.0, -7.7])
    for eps in (0.0, 0.1):
        loss = DPO_LOSSES[loss_type](lp, lp - 1, lp, lp - 1, beta=0.3, label_smoothing=eps)
        assert torch.allclose(loss, torch.full((3,), math.log(2)), atol=1e-7)


def test_swapping_chosen_and_rejected_flips_the_margin():
    beta = 0.1
    margin = implicit_rewards(PC, RC, beta) - implicit_rewards(PR, RR, beta)
    swapped = implicit_rewards(PR, RR, beta) - implicit_rewards(PC, RC, beta)
    assert torch.equal(swapped, -margin)
    assert torch.allclose(margin, beta * Z)
    # for the sigmoid loss the swap maps z to -z: loss(-z) - loss(z) = beta z (since softplus(x) - softplus(-x) = x)
    a = DPO_LOSSES["sigmoid"](PC, PR, RC, RR, beta=beta)
    b = DPO_LOSSES["sigmoid"](PR, PC, RR, RC, beta=beta)
    assert torch.allclose(b - a, beta * Z, atol=1e-6)


def trl_1_16(loss_type, pc, pr, rc, rr, beta, label_smoothing, gamma):
    """TRL 1.16's formulas, restated from its documented DPO/CPO losses:
    logits = (pc - pr) - (rc - rr)
    sigmoid: -logsigmoid(beta*logits)*(1-ls) - logsigmoid(-beta*logits)*ls
    robust:  (-logsigmoid(beta*logits)*(1-ls) + logsigmoid(-beta*logits)*ls) / (1-2*ls)
    hinge:   relu(1 - beta*logits)
    ipo:     (logits - 1/(2*beta))**2
    simpo (CPOTrainer, loss_type="simpo"): logits = pc - pr - gamma/beta;
             -logsigmoid(beta*logits)*(1-ls) - logsigmoid(-beta*logits)*ls"""
    logits = (pc - pr) - (rc - rr)
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    if loss_type == "robust":
        return (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
                + F.logsigmoid(-beta * logits) * label_smoothing) / (1 - 2 * label_smoothing)
    if loss_type == "hinge":
        return torch.relu(1 - beta * logits)
    if loss_type == "ipo":
        return (logits - 1 / (2 * beta)) ** 2
    logits = (pc - pr) - gamma / beta
    return -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing


@pytest.mark.parametrize("loss_type", sorted(DPO_LOSSES))
def test_matches_trl_formula(loss_type):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-20 * torch.rand(64, generator=g, dtype=torch.float64) for _ in range(4))
    for beta, ls, gamma in [(0.1, 0.0, 0.5), (0.5, 0.1, 1.0), (2.0, 0.3, 0.2)]:
        ours = DPO_LOSSES[loss_type](pc, pr, rc, rr, beta=beta, label_smoothing=ls, gamma=gamma)
        assert torch.allclose(ours, trl_1_16(loss_type, pc, pr, rc, rr, beta, ls, gamma), atol=1e-6, rtol=0)


def test_bradley_terry_by_hand():
    """r_c - r_r = 1: -log sigma(1) = log(1 + e^-1); with margin 1: log 2; centring 0.01 * (1 + 0)^2 added."""
    rc, rr = torch.tensor([1.0]), torch.tensor([0.0])
    assert bradley_terry_loss(rc, rr).item() == pytest.approx(sp(-1.0), abs=1e-7)
    assert bradley_terry_loss(rc, rr, margin=torch.tensor([1.0])).item() == pytest.approx(math.log(2), abs=1e-7)
    assert bradley_terry_loss(rc, rr, center_coef=0.01).item() == pytest.approx(sp(-1.0) + 0.01, abs=1e-7)
    # swapping chosen and rejected: loss(-d) - loss(d) = d
    assert (bradley_terry_loss(rr, rc) - bradley_terry_loss(rc, rr)).item() == pytest.approx(1.0, abs=1e-7)
