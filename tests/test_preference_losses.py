"""Preference losses against values derived by hand, their limits, and TRL 1.16's formulas (restated here)."""

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_post.losses.preference import (
    DPO_LOSSES, PAIR_INPUTS, REFERENCE_FREE, bradley_terry_loss, dpo_loss_settings, implicit_rewards,
)
from lightning_post.losses.settings import pick_settings

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


def trl_1_16(loss_type, pc, pr, rc, rr, beta, label_smoothing, gamma, tau=0.05):
    """TRL 1.16's formulas, restated from DPOTrainer._compute_loss (and CPOTrainer for simpo), with
    lc = pc - rc, lr = pr - rr, logits = lc - lr, ls = label_smoothing:
    sigmoid:      -logsigmoid(beta*logits)  (TRL 1.16 applies no label smoothing here; ours adds cDPO's when ls > 0,
                  -logsigmoid(beta*logits)*(1-ls) - logsigmoid(-beta*logits)*ls, TRL's formula before 1.0)
    robust:       (-logsigmoid(beta*logits)*(1-ls) + logsigmoid(-beta*logits)*ls) / (1-2*ls)
    hinge:        relu(1 - beta*logits)
    ipo:          (logits - 1/(2*beta))**2        (on per-token averages)
    exo_pair:     qw*(log qw - log1p(-ls)) + ql*(log ql - log ls), qw = sigmoid(beta*logits), ql = sigmoid(-beta*logits)
    nca_pair:     -logsigmoid(beta*lc) - 0.5*logsigmoid(-beta*lc) - 0.5*logsigmoid(-beta*lr)
    bco_pair:     -logsigmoid(beta*lc) - logsigmoid(-beta*lr)
    sppo_hard:    (lc - 0.5/beta)**2 + (lr + 0.5/beta)**2
    aot:          d = sort(pc - pr) - sort(rc - rr); -logsigmoid(beta*d)*(1-ls) - logsigmoid(-beta*d)*ls
    aot_unpaired: d = sort(lc) - sort(lr); same
    apo_zero:     1 - sigmoid(beta*lc) + sigmoid(beta*lr)
    apo_down:     sigmoid(beta*lc) + 1 - sigmoid(beta*(lc - lr))
    discopop:     x = beta*logits, m = sigmoid(x/tau); -logsigmoid(x)*(1-m) + exp(-x)*m
    sigmoid_norm: -logsigmoid(beta*logits)        (on per-token averages)
    orpo (experimental ORPOTrainer.odds_ratio_loss, on averages): log_odds = (pc - pr) - (log1mexp(pc) - log1mexp(pr)),
                  log1mexp(x) = log(1 - exp(x));
                  -beta*logsigmoid(log_odds)  (TRL subtracts beta*logsigmoid(log_odds) from its NLL)
    simpo (CPOTrainer, loss_type="simpo"): logits = pc - pr - gamma/beta;
                  -logsigmoid(beta*logits)*(1-ls) - logsigmoid(-beta*logits)*ls"""
    lc, lr = pc - rc, pr - rr
    logits = lc - lr
    ls = label_smoothing
    if loss_type in ("sigmoid", "sigmoid_norm"):
        return -F.logsigmoid(beta * logits)
    if loss_type == "robust":
        return (-F.logsigmoid(beta * logits) * (1 - ls) + F.logsigmoid(-beta * logits) * ls) / (1 - 2 * ls)
    if loss_type == "hinge":
        return torch.relu(1 - beta * logits)
    if loss_type == "ipo":
        return (logits - 1 / (2 * beta)) ** 2
    if loss_type == "exo_pair":
        eps = torch.tensor(ls, dtype=pc.dtype)
        qw, ql = torch.sigmoid(beta * logits), torch.sigmoid(-beta * logits)
        return (qw * (F.logsigmoid(beta * logits) - torch.log1p(-eps))
                + ql * (F.logsigmoid(-beta * logits) - torch.log(eps)))
    if loss_type == "nca_pair":
        return -F.logsigmoid(beta * lc) - 0.5 * F.logsigmoid(-beta * lc) - 0.5 * F.logsigmoid(-beta * lr)
    if loss_type == "bco_pair":
        return -F.logsigmoid(beta * lc) - F.logsigmoid(-beta * lr)
    if loss_type == "sppo_hard":
        return (lc - 0.5 / beta) ** 2 + (lr + 0.5 / beta) ** 2
    if loss_type in ("aot", "aot_unpaired"):
        if loss_type == "aot":
            d = torch.sort(pc - pr, dim=0)[0] - torch.sort(rc - rr, dim=0)[0]
        else:
            d = torch.sort(lc, dim=0)[0] - torch.sort(lr, dim=0)[0]
        return -F.logsigmoid(beta * d) * (1 - ls) - F.logsigmoid(-beta * d) * ls
    if loss_type == "apo_zero":
        return 1 - torch.sigmoid(beta * lc) + torch.sigmoid(beta * lr)
    if loss_type == "apo_down":
        return torch.sigmoid(beta * lc) + 1 - torch.sigmoid(beta * (lc - lr))
    if loss_type == "discopop":
        x = beta * logits
        m = torch.sigmoid(x / tau)
        return -F.logsigmoid(x) * (1 - m) + torch.exp(-x) * m
    if loss_type == "orpo":
        log_odds = (pc - pr) - (torch.log1p(-torch.exp(pc)) - torch.log1p(-torch.exp(pr)))
        return -beta * F.logsigmoid(log_odds)
    assert loss_type == "simpo", loss_type
    logits = (pc - pr) - gamma / beta
    return -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls


@pytest.mark.parametrize("loss_type", sorted(DPO_LOSSES))
def test_matches_trl_formula(loss_type):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-20 * torch.rand(64, generator=g, dtype=torch.float64) for _ in range(4))
    for beta, ls, gamma, tau in [(0.1, 0.0, 0.5, 0.05), (0.5, 0.1, 1.0, 0.05), (2.0, 0.3, 0.2, 0.5)]:
        if loss_type in ("sigmoid", "sigmoid_norm"):
            ls = 0.0  # TRL 1.16 ignores label smoothing for these (ours: cDPO, tested by hand above)
        if loss_type == "exo_pair" and ls == 0:
            ls = 1e-3
        fn = DPO_LOSSES[loss_type]  # each loss takes only the settings it declares, as DPOModule passes them
        ours = fn(pc, pr, rc, rr, **pick_settings(fn, len(PAIR_INPUTS), dict(beta=beta, label_smoothing=ls,
                                                                              gamma=gamma, tau=tau)))
        assert torch.allclose(ours, trl_1_16(loss_type, pc, pr, rc, rr, beta, ls, gamma, tau), atol=1e-6, rtol=0)


def sig(x):
    return 1 / (1 + math.exp(-x))


# The pairs above have log-ratios l_c = pc - rc = [1, 0], l_r = pr - rr = [-0.5, 1] and z = [1.5, -1]. beta = 1.
BY_HAND = {
    # -log s(l_c) - 1/2 log s(-l_c) - 1/2 log s(-l_r)
    "nca_pair": [sp(-1) + 0.5 * sp(1) + 0.5 * sp(-0.5), math.log(2) + 0.5 * math.log(2) + 0.5 * sp(1)],
    # -log s(l_c) - log s(-l_r)
    "bco_pair": [sp(-1) + sp(-0.5), math.log(2) + sp(1)],
    # sorted policy margins pc - pr = [2, -1] -> [-1, 2]; sorted reference margins [0.5, 0] -> [0, 0.5]; d = [-1, 1.5]
    "aot": [sp(1), sp(-1.5)],
    # sorted l_c = [0, 1], sorted l_r = [-0.5, 1]; d = [0.5, 0]
    "aot_unpaired": [sp(-0.5), math.log(2)],
    # 1 - s(l_c) + s(l_r)
    "apo_zero": [1 - sig(1) + sig(-0.5), 0.5 + sig(1)],
    # s(l_c) + 1 - s(z)
    "apo_down": [sig(1) + 1 - sig(1.5), 0.5 + 1 - sig(-1)],
    # x = z; m = s(x / 0.05) is s(30) ~ 1 and s(-20) ~ 0: almost e^-x for pair 0 and -log s(x) for pair 1
    "discopop": [(1 - sig(30)) * sp(-1.5) + sig(30) * math.exp(-1.5), (1 - sig(-20)) * sp(1) + sig(-20) * math.exp(1)],
    # on averages the caller passes, plain -log s(z)
    "sigmoid_norm": [sp(-1.5), sp(1)],
}


@pytest.mark.parametrize("loss_type", sorted(BY_HAND))
def test_new_losses_by_hand(loss_type):
    fn = DPO_LOSSES[loss_type]
    loss = fn(PC, PR, RC, RR, **pick_settings(fn, len(PAIR_INPUTS), dict(beta=1.0, tau=0.05)))
    assert loss.tolist() == pytest.approx(BY_HAND[loss_type], abs=1e-6)


def test_discopop_blend_by_hand():
    """DiscoPOP, beta = 1, tau = 0.05, on z = [1.5, -1] (the pairs above): m = sigma(z / tau) is sigma(30) = 1 - 9e-14
    and sigma(-20) = 2e-9, so the loss is e^-1.5 and -log sigma(-1) = log(1 + e) to 1e-8; at z = 0, m = 1/2 and the
    loss is the mean of -log sigma(0) = log 2 and e^0 = 1."""
    loss = DPO_LOSSES["discopop"](PC, PR, RC, RR, beta=1.0, tau=0.05)
    assert loss.tolist() == pytest.approx([math.exp(-1.5), math.log1p(math.e)], abs=1e-6)
    at_zero = DPO_LOSSES["discopop"](PC, PR, PC, PR, beta=1.0, tau=0.05)
    assert at_zero.tolist() == pytest.approx([(math.log(2) + 1) / 2] * 2, abs=1e-6)


def test_orpo_by_hand():
    """Average log-probs a_c = log 0.5, a_r = log 0.25: odds 1 and 1/3, log odds ratio = log 3;
    loss = -beta log sigma(log 3) = -beta log(3/4)."""
    pc, pr = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert DPO_LOSSES["orpo"](pc, pr, None, None, beta=0.2).item() == pytest.approx(-0.2 * math.log(0.75), abs=1e-7)
    assert "orpo" in REFERENCE_FREE


def test_sppo_hard_and_exo_pair_by_hand():
    """SPPO-hard, beta = 0.5 (so 1/(2 beta) = 1): (l_c - 1)^2 + (l_r + 1)^2 = [0 + 0.25, 1 + 4].
    EXO, beta = 1, eps = 0.1, pair 1 (z = -1): q_w = s(-1), q_l = s(1):
    q_w (log q_w - log 0.9) + q_l (log q_l - log 0.1)."""
    assert DPO_LOSSES["sppo_hard"](PC, PR, RC, RR, beta=0.5).tolist() == pytest.approx([0.25, 5.0], abs=1e-6)
    qw, ql = sig(-1), sig(1)
    expected = qw * (math.log(qw) - math.log(0.9)) + ql * (math.log(ql) - math.log(0.1))
    assert DPO_LOSSES["exo_pair"](PC, PR, RC, RR, beta=1.0, label_smoothing=0.1)[1].item() == pytest.approx(expected, abs=1e-6)
    # at z = 0 the model's pair distribution is [1/2, 1/2]: KL to [0.9, 0.1] = 1/2 log(1/2/0.9) + 1/2 log(1/2/0.1)
    zero = DPO_LOSSES["exo_pair"](PC, PR, PC, PR, beta=1.0, label_smoothing=0.1)
    assert zero.tolist() == pytest.approx([0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)] * 2, abs=1e-6)
    with pytest.raises(ValueError, match="exo_pair needs"):
        DPO_LOSSES["exo_pair"](PC, PR, RC, RR, label_smoothing=0.0)


def test_bradley_terry_by_hand():
    """r_c - r_r = 1: -log sigma(1) = log(1 + e^-1); with margin 1: log 2; centring 0.01 * (1 + 0)^2 added."""
    rc, rr = torch.tensor([1.0]), torch.tensor([0.0])
    assert bradley_terry_loss(rc, rr).item() == pytest.approx(sp(-1.0), abs=1e-7)
    assert bradley_terry_loss(rc, rr, margin=torch.tensor([1.0])).item() == pytest.approx(math.log(2), abs=1e-7)
    assert bradley_terry_loss(rc, rr, center_coef=0.01).item() == pytest.approx(sp(-1.0) + 0.01, abs=1e-7)
    # swapping chosen and rejected: loss(-d) - loss(d) = d
    assert (bradley_terry_loss(rr, rc) - bradley_terry_loss(rc, rr)).item() == pytest.approx(1.0, abs=1e-7)


def test_bradley_terry_soft_label_by_hand():
    """d = 1, label p = 0.75: -0.75 log sigma(1) - 0.25 log sigma(-1) = 0.75 sp(-1) + 0.25 sp(1); label 1 is the
    hard loss, label 0.5 is symmetric in d."""
    rc, rr = torch.tensor([1.0]), torch.tensor([0.0])
    got = bradley_terry_loss(rc, rr, label=torch.tensor([0.75])).item()
    assert got == pytest.approx(0.75 * sp(-1.0) + 0.25 * sp(1.0), abs=1e-7)
    assert bradley_terry_loss(rc, rr, label=torch.tensor([1.0])).item() == pytest.approx(sp(-1.0), abs=1e-7)
    half = torch.tensor([0.5])
    assert bradley_terry_loss(rc, rr, label=half).item() == pytest.approx(bradley_terry_loss(rr, rc, label=half).item())


def test_soft_labels_as_label_smoothing_by_hand():
    """Soft label p on the sigmoid DPO loss: -p log sigma(beta z) - (1 - p) log sigma(-beta z); with a further flip
    rate eps the flip probability is eps + (1 - p)(1 - 2 eps)."""
    from lightning_post.losses.preference import soft_label_smoothing

    flips = soft_label_smoothing(torch.tensor([1.0, 0.8, 0.5]), 0.0)
    torch.testing.assert_close(flips, torch.tensor([0.0, 0.2, 0.5]))
    assert soft_label_smoothing(torch.tensor([0.8]), 0.1).item() == pytest.approx(0.1 + 0.2 * 0.8)
    # z = (pc - rc) - (pr - rr) = (-1 - -2) - (-3 - -3) = 1; beta = 1
    args = [torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-3.0])]
    got = DPO_LOSSES["sigmoid"](*args, beta=1.0, label_smoothing=soft_label_smoothing(torch.tensor([0.8]), 0.0))
    assert got.item() == pytest.approx(0.8 * sp(-1.0) + 0.2 * sp(1.0), abs=1e-6)


# ---- settings: each loss declares exactly those it reads ------------------------------------------------------------
READS = {  # which of the shared settings each loss's formula uses (its docstring), written out by hand
    "sigmoid": {"beta", "label_smoothing"}, "robust": {"beta", "label_smoothing"}, "hinge": {"beta"}, "ipo": {"beta"},
    "simpo": {"beta", "label_smoothing", "gamma"}, "exo_pair": {"beta", "label_smoothing"}, "nca_pair": {"beta"},
    "bco_pair": {"beta"}, "sppo_hard": {"beta"}, "aot": {"beta", "label_smoothing"},
    "aot_unpaired": {"beta", "label_smoothing"}, "apo_zero": {"beta"}, "apo_down": {"beta"},
    "discopop": {"beta", "tau"}, "sigmoid_norm": {"beta"}, "orpo": {"beta"},
}


def test_every_loss_declares_exactly_the_settings_it_reads():
    assert set(READS) == set(DPO_LOSSES)
    for loss_type, reads in READS.items():
        assert set(dpo_loss_settings(loss_type)) == reads, loss_type


def test_a_misspelled_setting_is_an_error_not_swallowed():
    with pytest.raises(TypeError, match="label_smothing"):
        DPO_LOSSES["sigmoid"](PC, PR, RC, RR, beta=0.1, label_smothing=0.2)


def test_settings_are_read_from_the_signature():
    """simpo's defaults are those of its signature; a loss with ``**kwargs`` is refused (it would swallow a typo)."""
    from lightning_post.losses.settings import REQUIRED, loss_settings

    assert dpo_loss_settings("simpo") == {"beta": 2.0, "label_smoothing": 0.0, "gamma": 0.5}

    def needs_alpha(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1, *, alpha):
        return policy_chosen

    def loose(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1, **_):
        return policy_chosen

    assert loss_settings(needs_alpha, 4) == {"beta": 0.1, "alpha": REQUIRED}
    with pytest.raises(TypeError, match=r"loss loose takes \*\*_"):
        loss_settings(loose, 4)
