"""KTO (Ethayarajh et al. 2024): preference learning from unpaired desirable / undesirable examples.

Per example (tensors ``(N,)``): ``r = log pi(y|x) - log pi_ref(y|x)`` summed over the reply; ``desirable`` marks the
thumbs-up examples; ``z0`` is the reference point, a batch estimate of ``KL(pi || pi_ref)``
(:func:`kto_kl_estimate`), treated as a constant (no gradient flows through it).
"""

from __future__ import annotations

from typing import Callable

import torch

from lightning_post.losses.settings import loss_settings


def kto_kl_estimate(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point ``z0 = max(0, mean_i [log pi(y_j|x_i) - log pi_ref(y_j|x_i)])`` over mismatched
    pairs ``(x_i, y_j)`` of the batch (paper, sec. 4.1), detached.

    >>> kto_kl_estimate(torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -5.0]))
    tensor(0.5000)
    >>> kto_kl_estimate(torch.tensor([-6.0]), torch.tensor([-4.0]))  # a negative estimate is clamped to 0
    tensor(0.)
    """
    return (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


def kto_loss(policy_logps, ref_logps, desirable, z0, beta=0.1, desirable_weight=1.0,
             undesirable_weight=1.0) -> torch.Tensor:
    """KTO (paper eq. 8, as TRL 1.16's ``loss_type="kto"``): with ``r`` the log-ratio,
    desirable ``w_D (1 - sigma(beta (r - z0)))``, undesirable ``w_U (1 - sigma(beta (z0 - r)))``; per example ``(N,)``.
    At ``r = z0`` every example costs half its weight."""
    r = policy_logps - ref_logps
    return torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))),
    )


def apo_zero_unpaired_loss(policy_logps, ref_logps, desirable, z0=None, beta=0.1, desirable_weight=1.0,
                           undesirable_weight=1.0) -> torch.Tensor:
    """Unpaired APO-zero (D'Oosterlinck et al. 2024; TRL 1.16's ``apo_zero_unpaired``): desirable
    ``w_D (1 - sigma(beta r))``, undesirable ``w_U sigma(beta r)``; needs no reference point."""
    r = policy_logps - ref_logps
    return torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * r)),
                       undesirable_weight * torch.sigmoid(beta * r))


#: loss_type -> loss over unpaired examples.
KTO_LOSSES: dict[str, Callable[..., torch.Tensor]] = {"kto": kto_loss, "apo_zero_unpaired": apo_zero_unpaired_loss}
#: the tensors every KTO loss takes first (``z0`` a scalar, ignored by losses without a reference point); its
#: further arguments are its settings
UNPAIRED_INPUTS = ("policy_logps", "ref_logps", "desirable", "z0")


def kto_loss_settings(loss_type: str) -> dict[str, object]:
    """The settings of a registered KTO loss with their defaults, read from its signature.

    >>> kto_loss_settings("kto")
    {'beta': 0.1, 'desirable_weight': 1.0, 'undesirable_weight': 1.0}
    """
    return loss_settings(KTO_LOSSES[loss_type], len(UNPAIRED_INPUTS))
#: losses that need the KL reference point z0 (the others skip the mismatched-pair forward)
NEEDS_KL = frozenset({"kto"})
