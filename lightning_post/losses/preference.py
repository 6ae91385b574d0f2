"""Preference losses as pure functions: per-pair tensors in, unreduced per-pair losses out.

Notation, for a batch of pairs (all tensors ``(B,)``):

* ``policy_chosen``, ``policy_rejected``: log-probabilities of the chosen / rejected reply under the policy, summed
  over reply tokens (length-normalised where a loss says so);
* ``ref_chosen``, ``ref_rejected``: the same under the reference model;
* ``z = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)``, the difference of implicit rewards / beta.

Every loss is registered in :data:`DPO_LOSSES` and selected with ``loss_type`` in YAML; each has the signature
``(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, label_smoothing, gamma) -> (B,)``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F


def _z(policy_chosen, policy_rejected, ref_chosen, ref_rejected):
    return (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)


def sigmoid_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1, label_smoothing=0.0, gamma=0.0):
    """DPO (Rafailov et al. 2023, eq. 7), with conservative label smoothing eps (cDPO, Mitchell 2023):
    ``-(1 - eps) log sigma(beta z) - eps log sigma(-beta z)``. Equals ``log 2`` when policy == reference."""
    logits = beta * _z(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def robust_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1, label_smoothing=0.0, gamma=0.0):
    """Robust DPO (Chowdhury et al. 2024), unbiased under label-flip rate eps < 1/2:
    ``(-(1 - eps) log sigma(beta z) + eps log sigma(-beta z)) / (1 - 2 eps)``."""
    if not 0 <= label_smoothing < 0.5:
        raise ValueError("robust DPO needs 0 <= label_smoothing < 0.5")
    logits = beta * _z(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return (-(1 - label_smoothing) * F.logsigmoid(logits) + label_smoothing * F.logsigmoid(-logits)) / (
        1 - 2 * label_smoothing
    )


def hinge_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1, label_smoothing=0.0, gamma=0.0):
    """Hinge loss on the normalised likelihood (SLiC, Zhao et al. 2023; RSO, Liu et al. 2024): ``max(0, 1 - beta z)``."""
    return torch.relu(1 - beta * _z(policy_chosen, policy_rejected, ref_chosen, ref_rejected))


def ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1, label_smoothing=0.0, gamma=0.0):
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


#: loss_type -> loss function.
DPO_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "sigmoid": sigmoid_loss,
    "robust": robust_loss,
    "hinge": hinge_loss,
    "ipo": ipo_loss,
    "simpo": simpo_loss,
}
#: losses that need no reference model forward
REFERENCE_FREE = frozenset({"simpo"})
#: losses defined on log-probabilities averaged over reply tokens rather than summed
LENGTH_NORMALISED = frozenset({"ipo", "simpo"})


def implicit_rewards(policy_logps: torch.Tensor, ref_logps: Optional[torch.Tensor], beta: float) -> torch.Tensor:
    """DPO's implicit reward ``beta (log pi(y|x) - log pi_ref(y|x))`` (``beta log pi`` when reference-free)."""
    return beta * (policy_logps - (ref_logps if ref_logps is not None else 0.0))


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: Optional[torch.Tensor] = None,
                       center_coef: float = 0.0) -> torch.Tensor:
    """Reward-model loss ``-log sigma(r_chosen - r_rejected - margin)`` (Bradley & Terry 1952; margin as in
    Llama 2), plus ``center_coef * (r_chosen + r_rejected)^2`` to keep rewards centred at zero (Eisenstein et al.
    2023). Per pair, ``(B,)``."""
    diff = r_chosen - r_rejected - (margin if margin is not None else 0.0)
    return -F.logsigmoid(diff) + center_coef * (r_chosen + r_rejected) ** 2
