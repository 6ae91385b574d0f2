"""Preference losses as pure functions: per-pair tensors in, unreduced per-pair losses out.

Notation, for a batch of pairs (all tensors ``(B,)``):

* ``policy_chosen``, ``policy_rejected``: log-probabilities of the chosen / rejected reply under the policy, summed
  over reply tokens (length-normalised where a loss says so);
* ``ref_chosen``, ``ref_rejected``: the same under the reference model;
* ``z = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)``, the difference of implicit rewards / beta.

Every loss is registered in :data:`DPO_LOSSES` and selected with ``loss_type`` in YAML; each takes the four
log-probability tensors (:data:`PAIR_INPUTS`), then exactly the settings it reads, by name and with a default
(``beta``, ``label_smoothing``, ``gamma``, ``tau``, or its own), and returns ``(B,)``. Its signature is its list of
settings (:func:`dpo_loss_settings`): DPOModule passes each loss those it declares and refuses a setting that no
selected loss reads. Further notation: ``l_c = policy_chosen - ref_chosen`` and ``l_r = policy_rejected -
ref_rejected`` (the log-ratios; ``z = l_c - l_r``).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from lightning_post.losses.settings import loss_settings


def _z(policy_chosen, policy_rejected, ref_chosen, ref_rejected):
    return (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)


def sigmoid_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1, label_smoothing=0.0):
    """DPO (Rafailov et al. 2023, eq. 7), with conservative label smoothing eps (cDPO, Mitchell 2023):
    ``-(1 - eps) log sigma(beta z) - eps log sigma(-beta z)``. Equals ``log 2`` when policy == reference."""
    logits = beta * _z(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def robust_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1, label_smoothing=0.0):
    """Robust DPO (Chowdhury et al. 2024), unbiased under label-flip rate eps < 1/2:
    ``(-(1 - eps) log sigma(beta z) + eps log sigma(-beta z)) / (1 - 2 eps)``."""
    if not 0 <= label_smoothing < 0.5:
        raise ValueError("robust DPO needs 0 <= label_smoothing < 0.5")
    logits = beta * _z(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return (-(1 - label_smoothing) * F.logsigmoid(logits) + label_smoothing * F.logsigmoid(-logits)) / (
        1 - 2 * label_smoothing
    )


def hinge_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    """Hinge loss on the normalised likelihood (SLiC, Zhao et al. 2023; RSO, Liu et al. 2024): ``max(0, 1 - beta z)``."""
    return torch.relu(1 - beta * _z(policy_chosen, policy_rejected, ref_chosen, ref_rejected))


def ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    """IPO (Azar et al. 2023, eq. 17): ``(z - 1 / (2 beta))^2``; ``beta`` is the paper's tau. Like TRL, the
    caller passes log-probabilities averaged over reply tokens for IPO."""
    return (_z(policy_chosen, policy_rejected, ref_chosen, ref_rejected) - 1 / (2 * beta)) ** 2


def simpo_loss(policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, beta=2.0, label_smoothing=0.0,
               gamma=0.5):
    """SimPO (Meng et al. 2024), reference-free: ``-log sigma(beta (avg_chosen - avg_rejected) - gamma)`` on
    log-probabilities averaged over reply tokens, with optional label smoothing as in cDPO. The reference
    arguments are ignored (no reference forward is needed)."""
    logits = beta * (policy_chosen - policy_rejected) - gamma
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def exo_pair_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1, label_smoothing=1e-3):
    """EXO-pref (Ji et al. 2024, eq. 16): reverse KL from the model's pair distribution ``q = softmax(beta [l_c, l_r])``
    to the target ``p = [1 - eps, eps]``: ``q_w (log q_w - log(1 - eps)) + q_l (log q_l - log eps)``, with
    ``q_w = sigma(beta z)``, ``q_l = sigma(-beta z)``. Needs ``eps = label_smoothing > 0`` (TRL suggests 1e-3)."""
    if not 0 < label_smoothing < 1:
        raise ValueError("exo_pair needs 0 < label_smoothing < 1 (e.g. 1e-3): it is the target's mass on the rejected reply")
    logits = beta * _z(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    eps = torch.as_tensor(label_smoothing, dtype=logits.dtype)
    log_qw, log_ql = F.logsigmoid(logits), F.logsigmoid(-logits)
    return log_qw.exp() * (log_qw - torch.log1p(-eps)) + log_ql.exp() * (log_ql - torch.log(eps))


def nca_pair_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    """NCA for pairs (Chen et al. 2024, eq. 11): ``-log sigma(beta l_c) - 1/2 log sigma(-beta l_c)
    - 1/2 log sigma(-beta l_r)``: absolute rewards, so the chosen likelihood is not pushed down with the rejected."""
    rc, rr = beta * (policy_chosen - ref_chosen), beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(rc) - 0.5 * F.logsigmoid(-rc) - 0.5 * F.logsigmoid(-rr)


def bco_pair_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    """BCO on pairs (Jung et al. 2024), as TRL 1.16 computes it (no reward shift): a binary classifier of
    chosen-vs-rejected rewards, ``-log sigma(beta l_c) - log sigma(-beta l_r)``."""
    return -F.logsigmoid(beta * (policy_chosen - ref_chosen)) - F.logsigmoid(-beta * (policy_rejected - ref_rejected))


def sppo_hard_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    """SPPO with hard win probabilities (Wu et al. 2024, eq. 4.7 with P = 1 for the winner, 0 for the loser):
    ``(l_c - 1/(2 beta))^2 + (l_r + 1/(2 beta))^2``."""
    half = 0.5 / beta
    return (policy_chosen - ref_chosen - half) ** 2 + (policy_rejected - ref_rejected + half) ** 2


def _smoothed_sigmoid(delta, beta, label_smoothing):
    return -F.logsigmoid(beta * delta) * (1 - label_smoothing) - F.logsigmoid(-beta * delta) * label_smoothing


def aot_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1, label_smoothing=0.0):
    """AOT, paired (Melnyk et al. 2024): distributional dominance via optimal transport in 1D, i.e. sorting: the
    sorted policy margins ``pc - pr`` against the sorted reference margins ``rc - rr``, then the (smoothed) DPO
    sigmoid on their difference. Couples the pairs of a batch (rank ``i`` of one sort against rank ``i`` of the
    other), so it depends on the batch composition."""
    policy = torch.sort(policy_chosen - policy_rejected, dim=0).values
    ref = torch.sort(ref_chosen - ref_rejected, dim=0).values
    return _smoothed_sigmoid(policy - ref, beta, label_smoothing)


def aot_unpaired_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1, label_smoothing=0.0):
    """AOT, unpaired (Melnyk et al. 2024): sorted chosen log-ratios ``l_c`` against sorted rejected log-ratios
    ``l_r``, then the (smoothed) DPO sigmoid on their difference; usable when chosen and rejected are not paired."""
    delta = torch.sort(policy_chosen - ref_chosen, dim=0).values - torch.sort(policy_rejected - ref_rejected, dim=0).values
    return _smoothed_sigmoid(delta, beta, label_smoothing)


def apo_zero_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    """APO-zero (D'Oosterlinck et al. 2024, eq. 7), for chosen replies better than the model's own:
    ``(1 - sigma(beta l_c)) + sigma(beta l_r)``: raise the chosen likelihood, lower the rejected."""
    return 1 - torch.sigmoid(beta * (policy_chosen - ref_chosen)) + torch.sigmoid(beta * (policy_rejected - ref_rejected))


def apo_down_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    """APO-down (D'Oosterlinck et al. 2024, eq. 8), for chosen replies worse than the model's own:
    ``sigma(beta l_c) + (1 - sigma(beta (l_c - l_r)))``: lower both, the rejected more."""
    lc, lr = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    return torch.sigmoid(beta * lc) + 1 - torch.sigmoid(beta * (lc - lr))


def discopop_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1, tau=0.05):
    """DiscoPOP / log-ratio modulated loss (Chris Lu et al. 2024, eq. 5): with ``x = beta z`` and
    ``m = sigma(x / tau)``, ``(1 - m) (-log sigma(x)) + m exp(-x)``: logistic for negative margins, exponential
    for positive ones. ``tau`` = 0.05 in the paper."""
    x = beta * _z(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    m = torch.sigmoid(x / tau)
    return -F.logsigmoid(x) * (1 - m) + torch.exp(-x) * m


def sigmoid_norm_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    """DPO on length-normalised log-ratios (TRL's ``sigmoid_norm``): ``-log sigma(beta z)`` where the caller passes
    log-probabilities averaged over each reply's tokens (like ``ipo``), so ``z`` is a per-token margin."""
    return -F.logsigmoid(beta * _z(policy_chosen, policy_rejected, ref_chosen, ref_rejected))


def orpo_loss(policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, beta=0.1):
    """ORPO's odds-ratio term (Hong et al. 2024, eq. 6-7), reference-free, on per-token average log-probs ``a``:
    ``log odds(y) = a - log(1 - e^a)``; loss ``-beta log sigma(log odds(y_c) - log odds(y_r))`` (``beta`` is the
    paper's lambda). ORPO is this plus the SFT loss on the chosen reply: in DPOModule, ``loss_type: orpo`` with
    ``rpo_alpha: 1.0``."""
    log_odds = (policy_chosen - policy_rejected) - (
        torch.log(-torch.expm1(policy_chosen)) - torch.log(-torch.expm1(policy_rejected))
    )
    return -beta * F.logsigmoid(log_odds)


#: loss_type -> loss function.
DPO_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "sigmoid": sigmoid_loss,
    "robust": robust_loss,
    "hinge": hinge_loss,
    "ipo": ipo_loss,
    "simpo": simpo_loss,
    "exo_pair": exo_pair_loss,
    "nca_pair": nca_pair_loss,
    "bco_pair": bco_pair_loss,
    "sppo_hard": sppo_hard_loss,
    "aot": aot_loss,
    "aot_unpaired": aot_unpaired_loss,
    "apo_zero": apo_zero_loss,
    "apo_down": apo_down_loss,
    "discopop": discopop_loss,
    "sigmoid_norm": sigmoid_norm_loss,
    "orpo": orpo_loss,
}
#: the tensors every DPO-family loss takes first, each ``(B,)``; its further arguments are its settings
PAIR_INPUTS = ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")


def dpo_loss_settings(loss_type: str) -> dict[str, object]:
    """The settings of a registered loss with their defaults, read from its signature.

    >>> dpo_loss_settings("simpo")
    {'beta': 2.0, 'label_smoothing': 0.0, 'gamma': 0.5}
    """
    return loss_settings(DPO_LOSSES[loss_type], len(PAIR_INPUTS))


#: losses that need no reference model forward
REFERENCE_FREE = frozenset({"simpo", "orpo"})
#: losses defined on log-probabilities averaged over reply tokens rather than summed
LENGTH_NORMALISED = frozenset({"ipo", "simpo", "sigmoid_norm", "orpo"})


def implicit_rewards(policy_logps: torch.Tensor, ref_logps: Optional[torch.Tensor], beta: float) -> torch.Tensor:
    """DPO's implicit reward ``beta (log pi(y|x) - log pi_ref(y|x))`` (``beta log pi`` when reference-free)."""
    return beta * (policy_logps - (ref_logps if ref_logps is not None else 0.0))


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: Optional[torch.Tensor] = None,
                       center_coef: float = 0.0, label: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Reward-model loss ``-log sigma(r_chosen - r_rejected - margin)`` (Bradley & Terry 1952; margin as in
    Llama 2), plus ``center_coef * (r_chosen + r_rejected)^2`` to keep rewards centred at zero (Eisenstein et al.
    2023). With soft labels ``p = label`` (the probability that chosen is better) it is the cross-entropy
    ``-p log sigma(d) - (1 - p) log sigma(-d)``. Per pair, ``(B,)``."""
    diff = r_chosen - r_rejected - (margin if margin is not None else 0.0)
    nll = -F.logsigmoid(diff) if label is None else -label * F.logsigmoid(diff) - (1 - label) * F.logsigmoid(-diff)
    return nll + center_coef * (r_chosen + r_rejected) ** 2


#: losses whose ``label_smoothing`` is a label-flip probability, so a per-pair tensor of them is a soft label
SOFT_LABEL_LOSSES = ("sigmoid", "simpo", "aot", "aot_unpaired")


def soft_label_smoothing(label: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Per-pair flip probability ``(B,)`` of soft labels ``label`` (P(chosen is better)) with a further uniform
    flip rate ``label_smoothing`` on top: ``eps + (1 - label)(1 - 2 eps)``. Hard labels (1) give ``eps``.

    >>> soft_label_smoothing(torch.tensor([1.0, 0.75, 0.5]), 0.1)
    tensor([0.1000, 0.3000, 0.5000])
    """
    return label_smoothing + (1 - label) * (1 - 2 * label_smoothing)
