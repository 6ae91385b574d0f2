"""KTOModule: learning from unpaired desirable / undesirable examples (thumbs up / down) against a reference."""

from __future__ import annotations

import inspect
from typing import Optional

import torch
from torchmetrics import SumMetric

from lightning_post.data.collate import split_batch
from lightning_post.errors import ConfigError
from lightning_post.losses.kto import KTO_LOSSES, NEEDS_KL, kto_kl_estimate, kto_loss_settings
from lightning_post.methods.base import AccumulatingModule
from lightning_post.methods.reference import ReferenceModelMixin

KL_PREFIX = "kl_"


def kl_rows(batch: dict) -> dict:
    """The mismatched ``prompt_i + completion_j`` rows of an unpaired batch, as a batch of their own."""
    return {k[len(KL_PREFIX):]: v for k, v in batch.items() if k.startswith(KL_PREFIX)}


class KTOModule(ReferenceModelMixin, AccumulatingModule):
    """KTO (Ethayarajh et al. 2024) over batches from :class:`~lightning_post.data.unpaired.UnpairedDataModule`.

    Each optimizer step:

    1. the reference point ``z0``: log-ratios ``log pi - log pi_ref`` of the batch's mismatched rows
       ``prompt_i + completion_{i+1}``, averaged over every device, clamped at 0, without gradient (computed once for
       the whole step, so accumulation does not change it);
    2. per micro-batch, the log-ratio ``r`` of each example's completion (reference without gradient);
    3. per example ``KTO_LOSSES[loss_type]``: desirable ``w_D (1 - sigma(beta (r - z0)))``, undesirable
       ``w_U (1 - sigma(beta (z0 - r)))``; the step loss is their mean.
    """

    method = "kto"

    def __init__(
        self,
        *args,
        loss_type: str = "kto",
        beta: float = 0.1,
        desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0,
        reference_model: Optional[str] = None,
        **kwargs,
    ):
        """
        Args:
            loss_type: ``kto`` or ``apo_zero_unpaired`` (no reference point).
            beta: inverse temperature of the implicit reward.
            desirable_weight: weight of desirable examples (the paper keeps ``w_D n_D / (w_U n_U)`` in [1, 4/3]).
            undesirable_weight: weight of undesirable examples.
            reference_model: a different reference model (folder or id); ``null`` = the starting policy.
        """
        super().__init__(*args, **kwargs)
        if loss_type not in KTO_LOSSES:
            raise ValueError(f"loss_type {loss_type!r} is unknown; choose from {sorted(KTO_LOSSES)}")
        self.loss_fn = KTO_LOSSES[loss_type]
        # each setting goes to the loss only if its signature declares it; one set away from its default that the
        # loss does not read is refused (beta excepted: the logged implicit rewards use it)
        declared, signature = kto_loss_settings(loss_type), inspect.signature(KTOModule.__init__).parameters
        for name in ("desirable_weight", "undesirable_weight"):
            if name not in declared and self.hparams[name] != signature[name].default:
                raise ConfigError(f"model.{name}", f"{self.hparams[name]} is not used by loss_type {loss_type}")
        self.loss_kwargs = {k: self.hparams[k] for k in ("beta", "desirable_weight", "undesirable_weight")
                            if k in declared}
        self.needs_kl = loss_type in NEEDS_KL
        self._frozen_reference: list[torch.nn.Module] = []
        self._z0 = torch.tensor(0.0)
        names = ("loss", "count", "chosen", "n_chosen", "rejected", "n_rejected", "correct")
        self.val_sums = {n: SumMetric() for n in names}
        self.test_sums = {n: SumMetric() for n in names}
        self.pair_sums = {n: SumMetric() for n in ("pairs", "correct", "margin")}
        for n in names:  # registered as children: moved to the device and summed over processes
            setattr(self, f"val_{n}", self.val_sums[n])
            setattr(self, f"test_{n}", self.test_sums[n])
        for n, m in self.pair_sums.items():
            setattr(self, f"val_pairs_{n}", m)

    def setting_rules(self) -> list[tuple[str, bool, str]]:
        hp = self.hparams
        return [("beta", hp.beta > 0, "> 0"), ("desirable_weight", hp.desirable_weight > 0, "> 0"),
                ("undesirable_weight", hp.undesirable_weight > 0, "> 0")]

    def configure_model(self) -> None:
        if self.model is not None:
            return
        super().configure_model()
        self.setup_reference()

    # ---- the reference point -----------------------------------------------------------------------------------
    @torch.no_grad()
    def reference_point(self, batch: dict) -> torch.Tensor:
        """``z0`` from the batch's mismatched rows, averaged over every device (step 1)."""
        if not self.needs_kl:
            return torch.tensor(0.0, device=self.device)
        rows = kl_rows(batch)
        policy = self.reply_logps(rows)[0]
        ref = self.reference_logps(rows)
        strategy = self.trainer.strategy if self._trainer is not None else None
        total, count = (policy - ref).sum(), torch.tensor(float(policy.shape[0]), device=policy.device)
        if strategy is not None:
            total, count = strategy.reduce(total, reduce_op="sum"), strategy.reduce(count, reduce_op="sum")
        return kto_kl_estimate(total / count, torch.zeros((), device=total.device))

    def prepare_step(self, batch: dict) -> None:
        self._z0 = self.reference_point(batch)

    # ---- training ----------------------------------------------------------------------------------------------
    def micro_batches(self, batch: dict) -> list[dict]:
        own = {k: v for k, v in batch.items() if not k.startswith(KL_PREFIX)}  # KL rows were used in prepare_step
        return split_batch(own, self.hparams.micro_batch_size or own["input_ids"].shape[0])

    def loss_units(self, batch: dict) -> torch.Tensor:
        return torch.tensor(batch["input_ids"].shape[0], device=batch["input_ids"].device)

    def example_losses(self, batch: dict, z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example losses ``(B,)`` and log-ratios ``r`` ``(B,)`` (steps 2-3)."""
        ref = self.reference_logps(batch)
        policy = self.reply_logps(batch)[0]
        losses = self.loss_fn(policy, ref, batch["desirable"], z0, **self.loss_kwargs)
        return losses, (policy - ref).detach()

    def micro_step(self, micro_batch: dict) -> dict[str, torch.Tensor]:
        losses, r = self.example_losses(micro_batch, self._z0)
        d = micro_batch["desirable"]
        beta = self.hparams.beta
        return {
            "loss_sum": losses.sum(),
            "chosen_sum": beta * r[d].sum(), "n_chosen_sum": d.sum().float(),
            "rejected_sum": beta * r[~d].sum(), "n_rejected_sum": (~d).sum().float(),
        }

    def step_metrics(self, totals: dict[str, torch.Tensor], units: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "train/loss": totals["loss_sum"] / units.clamp(min=1),
            "train/kl": self._z0,
            "train/rewards/chosen": totals["chosen_sum"] / totals["n_chosen_sum"].clamp(min=1),
            "train/rewards/rejected": totals["rejected_sum"] / totals["n_rejected_sum"].clamp(min=1),
        }

    # ---- evaluation --------------------------------------------------------------------------------------------
    def _eval_step(self, batch: dict, sums: dict) -> None:
        z0 = self.reference_point(batch)
        losses, r = self.example_losses(batch, z0)
        d, beta = batch["desirable"], self.hparams.beta
        # an example is "right" when its implicit reward is on its label's side of the reference point; a tie (as
        # before training, when r = z0 = 0) counts half, as in DPOModule
        correct = torch.where(d, r > z0, r < z0).float() + 0.5 * (r == z0).float()
        for name, value in (("loss", losses.sum()), ("count", float(d.shape[0])), ("chosen", beta * r[d].sum()),
                            ("n_chosen", d.sum().float()), ("rejected", beta * r[~d].sum()),
                            ("n_rejected", (~d).sum().float()), ("correct", correct.sum())):
            sums[name].update(value)

    def _eval_epoch_end(self, stage: str, sums: dict) -> None:
        v = {n: m.compute() for n, m in sums.items()}
        self.log_dict({
            f"{stage}/loss": v["loss"] / v["count"].clamp(min=1),
            f"{stage}/rewards/chosen": v["chosen"] / v["n_chosen"].clamp(min=1),
            f"{stage}/rewards/rejected": v["rejected"] / v["n_rejected"].clamp(min=1),
            f"{stage}/rewards/accuracies": v["correct"] / v["count"].clamp(min=1),
        }, prog_bar=stage == "val")
        for m in sums.values():
            m.reset()

    def _pair_step(self, batch: dict) -> None:
        """Held-out preference pairs ``[chosen; rejected]``: is the chosen reply's implicit reward the higher?"""
        r = self.reply_logps(batch)[0] - self.reference_logps(batch)
        n = r.shape[0] // 2
        margin = self.hparams.beta * (r[:n] - r[n:])
        # a tie counts half (before training the policy is the reference and every pair ties), as in DPOModule
        correct = (margin > 0).float() + 0.5 * (margin == 0).float()
        for name, value in (("pairs", float(n)), ("correct", correct.sum()), ("margin", margin.sum())):
            self.pair_sums[name].update(value)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if "desirable" in batch:
            self._eval_step(batch, self.val_sums)
        else:  # the second validation loader: pairs (UnpairedDataModule.val_pair_files)
            self._pair_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val", self.val_sums)
        if self.pair_sums["pairs"].update_count:
            v = {n: m.compute() for n, m in self.pair_sums.items()}
            self.log_dict({"val/pairs/accuracies": v["correct"] / v["pairs"].clamp(min=1),
                           "val/pairs/margins": v["margin"] / v["pairs"].clamp(min=1)}, prog_bar=True)
            for m in self.pair_sums.values():
                m.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_sums)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", self.test_sums)
