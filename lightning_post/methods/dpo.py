"""DPOModule: direct preference optimisation and its loss family (IPO, hinge, robust, SimPO, ...)."""

from __future__ import annotations

import contextlib
import logging
from typing import NamedTuple, Optional

import torch
from torchmetrics import CatMetric
from tqdm.auto import tqdm

from lightning_post.data.collate import split_pairs
from lightning_post.losses.preference import DPO_LOSSES, LENGTH_NORMALISED, REFERENCE_FREE, implicit_rewards
from lightning_post.methods.base import PostTrainingModule
from lightning_post.models.loading import DEFAULT_MODEL, load_causal_lm
from lightning_post.models.peft import PeftSettings
from lightning_post.optim import OptimSettings

log = logging.getLogger(__name__)


class PairLogps(NamedTuple):
    """Log-probabilities of both replies of B pairs, each ``(B,)``, as the loss sees them (summed over reply tokens,
    or averaged for length-normalised losses)."""

    chosen: torch.Tensor
    rejected: torch.Tensor


def pair_logps(sums: torch.Tensor, counts: torch.Tensor, average: bool) -> PairLogps:
    """Split ``[chosen; rejected]`` row values ``(2B,)`` into a :class:`PairLogps`, averaged per token if asked."""
    values = sums / counts.clamp(min=1) if average else sums
    chosen, rejected = values.chunk(2)
    return PairLogps(chosen, rejected)


class DPOModule(PostTrainingModule):
    """Preference optimisation against a reference model, with the loss selected by ``loss_type``.

    Each step, for B pairs batched as ``[chosen; rejected]``:

    1. policy log-probabilities of both replies in one forward (summed over reply tokens; averaged for ``ipo`` and
       ``simpo``);
    2. reference log-probabilities: precomputed once per dataset, or a no-grad forward of the same network with its
       adapters disabled (LoRA), or of a frozen copy (full fine-tuning); none for reference-free losses (``simpo``);
    3. per-pair loss ``DPO_LOSSES[loss_type]``, times the pair's ``weight``, plus ``rpo_alpha`` times the chosen
       reply's mean token NLL (RPO, Pang et al. 2024).
    """

    method = "dpo"

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_MODEL,
        dtype: str = "float32",
        attn_implementation: Optional[str] = "sdpa",
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        peft: Optional[PeftSettings] = None,
        optim: OptimSettings = OptimSettings(),
        micro_batch_size: Optional[int] = None,
        gradient_clip_val: Optional[float] = 1.0,
        loss_type: str = "sigmoid",
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        simpo_gamma: float = 0.5,
        rpo_alpha: Optional[float] = None,
        reference_model: Optional[str] = None,
        precompute_ref_logps: bool = False,
    ):
        """
        Args:
            model_name_or_path: alias, local folder (e.g. an SFT export) or hub id of the policy's starting point.
            dtype: parameter dtype: ``float32``, ``bfloat16`` or ``float16``.
            attn_implementation: transformers attention: ``sdpa``, ``eager``, ``flash_attention_2``.
            gradient_checkpointing: recompute activations in backward to save memory.
            trust_remote_code: allow model code from the checkpoint folder (off unless asked).
            peft: parameter-efficient method (LoRA, ...); the reference is then the same network, adapters off.
            optim: optimizer and learning-rate schedule.
            micro_batch_size: pairs per forward/backward; the data batch is one optimizer step (``None`` = all).
            gradient_clip_val: clip the global gradient norm to this value (``null`` = no clipping).
            loss_type: a registered loss: ``sigmoid`` (DPO), ``robust``, ``hinge``, ``ipo``, ``simpo``.
            beta: inverse temperature of the implicit reward (IPO's tau; SimPO's beta, typically 2.0).
            label_smoothing: assumed label-flip rate for ``sigmoid`` (cDPO), ``robust`` and ``simpo``.
            simpo_gamma: SimPO's target reward margin.
            rpo_alpha: weight of an NLL term on the chosen reply (``null`` = none).
            reference_model: a different reference model (folder or id); ``null`` = the starting policy.
            precompute_ref_logps: compute reference log-probabilities once for every train/val pair at the start of
                ``fit`` and reuse them (saves a forward per step; costs one pass over the data).
        """
        super().__init__(
            model_name_or_path, dtype, attn_implementation, gradient_checkpointing, trust_remote_code, peft, optim,
            micro_batch_size, gradient_clip_val,
        )
        if loss_type not in DPO_LOSSES:
            raise ValueError(f"loss_type={loss_type!r} is unknown; choose one of {sorted(DPO_LOSSES)}")
        self.loss_fn = DPO_LOSSES[loss_type]
        self.reference_free = loss_type in REFERENCE_FREE
        self.average_logps = loss_type in LENGTH_NORMALISED
        self._frozen_reference: list[torch.nn.Module] = []  # a list hides it from state_dict and the optimizer
        self._ref_cache: dict[str, torch.Tensor] = {}  # split -> (n_pairs, 2) reference log-probs
        self.val_logps = tuple(CatMetric() for _ in range(4))  # policy chosen/rejected, reference chosen/rejected
        self.test_logps = tuple(CatMetric() for _ in range(4))
        self.val_pc, self.val_pr, self.val_rc, self.val_rr = self.val_logps
        self.test_pc, self.test_pr, self.test_rc, self.test_rr = self.test_logps

    # ---- reference ---------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        super().configure_model()
        hp = self.hparams
        if self.reference_free:
            return
        if hp.reference_model is not None:
            ref = load_causal_lm(hp.reference_model, hp.dtype, hp.attn_implementation, hp.trust_remote_code)
        elif self.peft is None:  # full fine-tuning: a frozen copy of the starting weights
            ref = load_causal_lm(hp.model_name_or_path, hp.dtype, hp.attn_implementation, hp.trust_remote_code)
        else:
            return  # LoRA: the same network with its adapters disabled
        self._frozen_reference = [ref.eval().requires_grad_(False)]

    def _reference_context(self):
        """Context in which ``forward_hidden`` computes the reference model's hidden states."""
        if self._frozen_reference:
            return _swap_model(self, self._frozen_reference[0].to(self.device))
        return self.model.disable_adapter()

    @torch.no_grad()
    def reference_logps(self, batch: dict) -> PairLogps:
        with self._reference_context():
            sums, counts = self.reply_logps(batch)
        return pair_logps(sums, counts, self.average_logps)

    def _cached_reference(self, batch: dict, split: str) -> Optional[PairLogps]:
        if self.reference_free:
            return None
        cache = self._ref_cache.get(split)
        if cache is None:
            return self.reference_logps(batch)
        values = cache.to(batch["index"].device)[batch["index"]]  # (B, 2)
        return PairLogps(values[:, 0], values[:, 1])

    def precompute_reference(self, split: str) -> None:
        """Reference log-probs of every pair of ``split``, in dataset order, kept for the rest of the run."""
        data = self.trainer.datamodule
        loader = data.eval_loader(split)
        out = torch.zeros(len(loader.dataset), 2)
        for batch in tqdm(loader, desc=f"reference log-probs ({split})", disable=not self.trainer.is_global_zero):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            ref = self.reference_logps(batch)
            out[batch["index"].cpu()] = torch.stack([ref.chosen, ref.rejected], 1).float().cpu()
        self._ref_cache[split] = out

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.hparams.precompute_ref_logps and not self.reference_free:
            for split in ("train", "val"):
                self.precompute_reference(split)

    # ---- training ----------------------------------------------------------------------------------------------
    def batch_items(self, batch: dict) -> int:
        return batch["index"].shape[0]

    def micro_batches(self, batch: dict) -> list[dict]:
        return split_pairs(batch, self.hparams.micro_batch_size or self.batch_items(batch))

    def loss_units(self, batch: dict) -> torch.Tensor:
        return torch.tensor(self.batch_items(batch), device=batch["input_ids"].device)

    def pair_losses(self, batch: dict, split: str) -> tuple[torch.Tensor, PairLogps, Optional[PairLogps]]:
        """Per-pair losses ``(B,)`` with the policy and reference log-probs they were computed from."""
        hp = self.hparams
        # the no-grad reference forward comes first: a second forward of the same (FSDP-wrapped) layers between the
        # policy forward and its backward would disturb their backward hooks
        ref = self._cached_reference(batch, split)
        sums, counts = self.reply_logps(batch)  # (2B,), (2B,)
        policy = pair_logps(sums, counts, self.average_logps)
        losses = self.loss_fn(
            policy.chosen, policy.rejected,
            ref.chosen if ref is not None else None, ref.rejected if ref is not None else None,
            beta=hp.beta, label_smoothing=hp.label_smoothing, gamma=hp.simpo_gamma,
        )
        losses = losses * batch["weight"]
        if hp.rpo_alpha:
            B = batch["index"].shape[0]
            losses = losses + hp.rpo_alpha * (-sums[:B] / counts[:B].clamp(min=1))  # chosen mean token NLL
        return losses, policy, ref

    def micro_step(self, micro_batch: dict) -> dict[str, torch.Tensor]:
        losses, policy, ref = self.pair_losses(micro_batch, "train")
        stats = preference_sums(policy, ref, self.hparams.beta)
        return {"loss_sum": losses.sum(), **stats}

    def step_metrics(self, totals: dict[str, torch.Tensor], units: torch.Tensor) -> dict[str, torch.Tensor]:
        n = units.clamp(min=1)
        out = {"train/loss": totals.pop("loss_sum") / n}
        out.update({f"train/{k.removesuffix('_sum')}": v / n for k, v in totals.items()})
        return out

    # ---- evaluation --------------------------------------------------------------------------------------------
    def _eval_step(self, batch: dict, split: str, metrics: tuple[CatMetric, ...]) -> None:
        ref = self._cached_reference(batch, split)
        policy = pair_logps(*self.reply_logps(batch), self.average_logps)
        zeros = torch.zeros_like(policy.chosen)
        for metric, value in zip(metrics, (policy.chosen, policy.rejected,
                                           ref.chosen if ref else zeros, ref.rejected if ref else zeros)):
            metric.update(value.float())

    def _eval_epoch_end(self, stage: str, metrics: tuple[CatMetric, ...]) -> dict[str, torch.Tensor]:
        pc, pr, rc, rr = (m.compute() for m in metrics)
        hp = self.hparams
        policy = PairLogps(pc, pr)
        ref = None if self.reference_free else PairLogps(rc, rr)
        loss = self.loss_fn(pc, pr, rc if ref else None, rr if ref else None, beta=hp.beta,
                            label_smoothing=hp.label_smoothing, gamma=hp.simpo_gamma).mean()
        n = pc.shape[0]
        values = {f"{stage}/loss": loss}
        values.update({f"{stage}/{k.removesuffix('_sum')}": v / n for k, v in preference_sums(policy, ref, hp.beta).items()})
        for k, v in values.items():
            self.log(k, v, prog_bar=k.endswith(("loss", "accuracies")))
        for m in metrics:
            m.reset()
        return values

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_logps)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val", self.val_logps)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_logps)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", self.test_logps)


def preference_sums(policy: PairLogps, ref: Optional[PairLogps], beta: float) -> dict[str, torch.Tensor]:
    """Summed (over pairs) statistics with TRL's metric names; divided by the pair count when logged.

    ``rewards/accuracies`` counts a tie (both implicit rewards equal, as at step 0) as half right.
    """
    r_c = implicit_rewards(policy.chosen.detach(), ref.chosen if ref is not None else None, beta)
    r_r = implicit_rewards(policy.rejected.detach(), ref.rejected if ref is not None else None, beta)
    return {
        "rewards/chosen_sum": r_c.sum(),
        "rewards/rejected_sum": r_r.sum(),
        "rewards/accuracies_sum": ((r_c > r_r).float() + 0.5 * (r_c == r_r).float()).sum(),
        "rewards/margins_sum": (r_c - r_r).sum(),
        "logps/chosen_sum": policy.chosen.detach().sum(),
        "logps/rejected_sum": policy.rejected.detach().sum(),
    }


@contextlib.contextmanager
def _swap_model(module: PostTrainingModule, other: torch.nn.Module):
    """Temporarily make ``module.model`` another network (the frozen reference) without registering it."""
    own = module.__dict__["_modules"]["model"]
    module.__dict__["_modules"]["model"] = other
    try:
        yield
    finally:
        module.__dict__["_modules"]["model"] = own
