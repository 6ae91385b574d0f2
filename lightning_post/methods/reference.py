"""The reference model of DPO-style methods: the same network with adapters disabled (LoRA), or a frozen copy."""

from __future__ import annotations

import contextlib

import torch

from lightning_post.models.loading import load_causal_lm
from lightning_post.models.peft import disable_adapters


class ReferenceModelMixin:
    """For a :class:`~lightning_post.methods.base.PostTrainingModule` with hyperparameter ``reference_model``.

    Call :meth:`setup_reference` after the policy is loaded. Under LoRA the reference is the policy with its
    adapters disabled (no second copy); under full fine-tuning, or when ``reference_model`` names another model, a
    frozen copy kept in a list, so it is neither in ``state_dict`` nor seen by the optimizer.
    """

    _frozen_reference: list

    def setup_reference(self) -> None:
        hp = self.hparams
        self._frozen_reference = []
        if hp.reference_model is not None:
            ref = load_causal_lm(hp.reference_model, hp.dtype, hp.attn_implementation, hp.trust_remote_code)
        elif self.peft is None:  # full fine-tuning: a frozen copy of the starting weights
            ref = load_causal_lm(hp.model_name_or_path, hp.dtype, hp.attn_implementation, hp.trust_remote_code)
        else:
            return  # LoRA: the same network with its adapters disabled
        self._frozen_reference = [ref.eval().requires_grad_(False)]

    def _reference_context(self):
        """Context in which ``forward_hidden`` computes the reference model's hidden states."""
        if getattr(self, "_frozen_reference", None):
            return _swap_model(self, self._frozen_reference[0].to(self.device))
        return disable_adapters(self.model)

    @torch.no_grad()
    def reference_logps(self, batch: dict) -> torch.Tensor:
        """Reference log-probs of every row of ``batch``, summed over its labelled (reply) tokens ``(R,)``."""
        with self._reference_context():
            return self.reply_logps(batch)[0]


@contextlib.contextmanager
def _swap_model(module, other: torch.nn.Module):
    """Temporarily make ``module.model`` another network (the frozen reference) without registering it."""
    own = module.__dict__["_modules"]["model"]
    module.__dict__["_modules"]["model"] = other
    try:
        yield
    finally:
        module.__dict__["_modules"]["model"] = own
