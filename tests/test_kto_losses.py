"""KTO losses against values derived by hand, their limits, and TRL 1.16's formulas (restated)."""

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_post.losses.kto import KTO_LOSSES, kto_kl_estimate

# r = policy - ref = [1, -2, 0.5]; the first and last are desirable
POLICY, REF = torch.tensor([-4.0, -7.0, -2.5]), torch.tensor([-5.0, -5.0, -3.0])
DESIRABLE = torch.tensor([True, False, True])


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_kto_by_hand():
    """beta = 1, z0 = 0.5, w_D = 1, w_U = 2: desirable 1 - s(r - z0) = 1 - s(0.5) and 1 - s(0);
    undesirable 2 (1 - s(z0 - r)) = 2 (1 - s(2.5))."""
    loss = KTO_LOSSES["kto"](POLICY, REF, DESIRABLE, torch.tensor(0.5), beta=1.0, undesirable_weight=2.0)
    assert loss.tolist() == pytest.approx([1 - sig(0.5), 2 * (1 - sig(2.5)), 0.5], abs=1e-7)


def test_kto_is_half_the_weight_when_policy_is_reference():
    loss = KTO_LOSSES["kto"](REF, REF, DESIRABLE, kto_kl_estimate(REF, REF), beta=0.1, desirable_weight=1.33)
    assert loss.tolist() == pytest.approx([0.665, 0.5, 0.665], abs=1e-7)


def test_kl_estimate_is_clamped_and_carries_no_gradient():
    p = torch.tensor([-3.0, -5.0], requires_grad=True)
    z0 = kto_kl_estimate(p, torch.tensor([-4.0, -5.0]))
    assert z0.item() == 0.5 and not z0.requires_grad
    assert kto_kl_estimate(torch.tensor([-6.0]), torch.tensor([-4.0])).item() == 0.0


def test_apo_zero_unpaired_by_hand():
    """beta = 1: desirable 1 - s(r), undesirable s(r): [1 - s(1), s(-2), 1 - s(0.5)]."""
    loss = KTO_LOSSES["apo_zero_unpaired"](POLICY, REF, DESIRABLE, None, beta=1.0)
    assert loss.tolist() == pytest.approx([1 - sig(1), sig(-2), 1 - sig(0.5)], abs=1e-7)


def trl_1_16(loss_type, policy, ref, desirable, kl, beta, w_d, w_u):
    """TRL 1.16 KTOTrainer._compute_loss, restated (chosen = desirable, rejected = undesirable):
    kl = (KL_logps - ref_KL_logps).mean().clamp(min=0)   (detached)
    kto:               chosen 1 - sigmoid(beta*(chosen_logratios - kl)); rejected 1 - sigmoid(beta*(kl - rejected_logratios))
    apo_zero_unpaired: chosen 1 - sigmoid(beta*chosen_logratios);        rejected sigmoid(beta*rejected_logratios)
    losses = cat(desirable_weight * chosen_losses, undesirable_weight * rejected_losses)"""
    lr = policy - ref
    c, r = lr[desirable], lr[~desirable]
    if loss_type == "kto":
        chosen, rejected = 1 - F.sigmoid(beta * (c - kl)), 1 - F.sigmoid(beta * (kl - r))
    else:
        chosen, rejected = 1 - F.sigmoid(beta * c), F.sigmoid(beta * r)
    return torch.cat([w_d * chosen, w_u * rejected])


@pytest.mark.parametrize("loss_type", sorted(KTO_LOSSES))
def test_matches_trl_formula(loss_type):
    g = torch.Generator().manual_seed(0)
    policy, ref, kl_p, kl_r = (-30 * torch.rand(64, generator=g, dtype=torch.float64) for _ in range(4))
    desirable = torch.rand(64, generator=g) < 0.4
    z0 = kto_kl_estimate(kl_p, kl_r)
    assert z0 == (kl_p - kl_r).mean().clamp(min=0)
    for beta, w_d, w_u in [(0.1, 1.0, 1.0), (0.5, 1.33, 1.0), (2.0, 1.0, 0.7)]:
        ours = KTO_LOSSES[loss_type](policy, ref, desirable, z0, beta=beta, desirable_weight=w_d, undesirable_weight=w_u)
        ours = torch.cat([ours[desirable], ours[~desirable]])  # TRL orders desirable first
        assert torch.allclose(ours, trl_1_16(loss_type, policy, ref, desirable, z0, beta, w_d, w_u), atol=1e-6, rtol=0)
