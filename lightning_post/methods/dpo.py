"""DPOModule: direct preference optimisation and its loss family (IPO, hinge, robust, SimPO, ...)."""

from __future__ import annotations

import inspect
import logging
from typing import NamedTuple, Optional, Union

import torch
from torchmetrics import CatMetric
from tqdm.auto import tqdm

from lightning_post.errors import ConfigError
from lightning_post.losses.preference import (
    DPO_LOSSES, LENGTH_NORMALISED, PAIR_INPUTS, REFERENCE_FREE, SOFT_LABEL_LOSSES, dpo_loss_settings,
    implicit_rewards, soft_label_smoothing,
)
from lightning_post.losses.settings import REQUIRED, pick_settings
from lightning_post.methods.base import PairwiseModule
from lightning_post.methods.reference import ReferenceModelMixin

log = logging.getLogger(__name__)


class PairLogps(NamedTuple):
    """Log-probabilities of both replies of B pairs, each ``(B,)``: summed over reply tokens, or averaged per token
    for length-normalised losses."""

    chosen: torch.Tensor
    rejected: torch.Tensor


def pair_logps(sums: torch.Tensor, counts: torch.Tensor, average: bool) -> PairLogps:
    """Split ``[chosen; rejected]`` row values ``(2B,)`` into a :class:`PairLogps`, averaged per token if asked."""
    values = sums / counts.clamp(min=1) if average else sums
    chosen, rejected = values.chunk(2)
    return PairLogps(chosen, rejected)


def combined_preference_loss(
    loss_types: list[str], loss_weights: list[float], policy_sums: torch.Tensor, ref_sums: Optional[torch.Tensor],
    counts: torch.Tensor, **settings,
) -> torch.Tensor:
    """``sum_k w_k loss_k`` per pair ``(B,)`` (MPO-style mixtures), each loss fed the log-probs it is defined on:
    summed over reply tokens, or per-token averages for :data:`LENGTH_NORMALISED` losses, and the ``settings`` its
    signature declares. ``policy_sums``, ``ref_sums`` and ``counts`` are ``[chosen; rejected]`` rows ``(2B,)``."""
    total = 0.0
    for name, weight in zip(loss_types, loss_weights):
        average = name in LENGTH_NORMALISED
        policy = pair_logps(policy_sums, counts, average)
        ref = pair_logps(ref_sums, counts, average) if ref_sums is not None and name not in REFERENCE_FREE else None
        fn = DPO_LOSSES[name]
        total = total + weight * fn(policy.chosen, policy.rejected, ref.chosen if ref else None,
                                    ref.rejected if ref else None, **pick_settings(fn, len(PAIR_INPUTS), settings))
    return total


#: DPOModule's arguments that are loss settings, with the name the losses' signatures give them
LOSS_KNOBS = {"beta": "beta", "label_smoothing": "label_smoothing", "simpo_gamma": "gamma", "discopop_tau": "tau"}


def loss_setting_values(loss_types: list[str], knobs: dict[str, tuple[float, float]],
                        extra: Optional[dict[str, float]]) -> dict[str, float]:
    """The settings the losses ``loss_types`` are called with, by their names in the losses' signatures: the
    module's arguments ``knobs`` (``argument -> (value, default)``, see :data:`LOSS_KNOBS`) and ``extra`` (the
    ``loss_settings`` of losses with settings of their own).

    Raises :class:`ConfigError` for an argument set away from its default that no selected loss reads (``beta``
    excepted: the logged implicit rewards use it), a ``loss_settings`` name that no selected loss declares (a
    misspelling) or that an argument sets, and a setting without default that a selected loss is not given.
    """
    declared = {t: dpo_loss_settings(t) for t in loss_types}
    read = {name for settings in declared.values() for name in settings}
    chosen = ", ".join(loss_types)

    def readers(name: str) -> str:
        found = [t for t in sorted(DPO_LOSSES) if name in dpo_loss_settings(t)]
        return f" (a setting of {', '.join(found)})" if found else ""

    values: dict[str, float] = {}
    for knob, (value, default) in knobs.items():
        name = LOSS_KNOBS[knob]
        values[name] = value
        if knob != "beta" and name not in read and value != default:
            raise ConfigError(f"model.{knob}", f"{value} is not used by loss_type {chosen}{readers(name)}")
    for name, value in (extra or {}).items():
        knob = next((k for k, n in LOSS_KNOBS.items() if n == name), None)
        if knob is not None:
            raise ConfigError(f"model.loss_settings.{name}", f"set it as model.{knob}")
        if name not in read:
            raise ConfigError(f"model.loss_settings.{name}", f"not a setting of loss_type {chosen}{readers(name)}; "
                              f"it reads {', '.join(sorted(read))}")
        values[name] = value
    for loss_type, settings in declared.items():
        missing = [n for n, d in settings.items() if d is REQUIRED and n not in values]
        if missing:
            raise ConfigError(f"model.loss_settings.{missing[0]}", f"loss_type {loss_type} needs it (no default)")
    return values


def selected_losses(module: type, hparams) -> tuple[list[str], list[float], dict[str, float]]:
    """The losses a DPO-family module's arguments select (``hparams``: its ``loss_type``, ``loss_weights``,
    ``loss_settings`` and the :data:`LOSS_KNOBS`, whose defaults are read from ``module``'s signature), their weights
    and the settings they are called with (:func:`loss_setting_values`). ``ValueError`` for an unknown loss, a weight
    count that does not match, or ``exo_pair`` without ``label_smoothing``."""
    loss_types = [hparams["loss_type"]] if isinstance(hparams["loss_type"], str) else list(hparams["loss_type"])
    unknown = [t for t in loss_types if t not in DPO_LOSSES]
    if unknown or not loss_types:
        names = ", ".join(map(repr, unknown)) or "[]"
        raise ValueError(f"loss_type {names} is unknown; choose from {sorted(DPO_LOSSES)}")
    weights = hparams["loss_weights"]
    loss_weights = list(weights) if weights is not None else [1.0] * len(loss_types)
    if len(loss_weights) != len(loss_types):
        raise ValueError(f"loss_weights has {len(loss_weights)} values for {len(loss_types)} losses")
    if "exo_pair" in loss_types and not hparams["label_smoothing"] > 0:
        raise ValueError("loss_type exo_pair needs label_smoothing > 0 (e.g. 1e-3)")
    signature = inspect.signature(module.__init__).parameters
    knobs = {k: (hparams[k], signature[k].default) for k in LOSS_KNOBS}
    return loss_types, loss_weights, loss_setting_values(loss_types, knobs, hparams["loss_settings"])


def loss_setting_rules(hp) -> list[tuple[str, bool, str]]:
    """The ``setting_rules`` of a DPO-family module's loss arguments (``loss_type`` and the :data:`LOSS_KNOBS`)."""
    types = [hp.loss_type] if isinstance(hp.loss_type, str) else list(hp.loss_type)
    return [("beta", hp.beta > 0, "> 0 (a negative beta trains toward the rejected replies)"),
            ("label_smoothing", 0 <= hp.label_smoothing < 0.5, "in [0, 0.5)"),
            ("simpo_gamma", hp.simpo_gamma >= 0, ">= 0"), ("discopop_tau", hp.discopop_tau > 0, "> 0"),
            ("loss_type", bool(types), "a loss name or a non-empty list of them")]

class DPOModule(ReferenceModelMixin, PairwiseModule):
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
        *args,
        loss_type: Union[str, list[str]] = "sigmoid",
        loss_weights: Optional[list[float]] = None,
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        simpo_gamma: float = 0.5,
        discopop_tau: float = 0.05,
        loss_settings: Optional[dict[str, float]] = None,
        rpo_alpha: Optional[float] = None,
        reference_model: Optional[str] = None,
        precompute_ref_logps: bool = False,
        **kwargs,
    ):
        """
        Args:
            loss_type: a registered loss (``sigmoid`` = DPO, ``robust``, ``hinge``, ``ipo``, ``simpo``, ``exo_pair``,
                ``nca_pair``, ``bco_pair``, ``sppo_hard``, ``aot``, ``aot_unpaired``, ``apo_zero``, ``apo_down``,
                ``discopop``, ``sigmoid_norm``), or a list of them to combine (MPO-style).
            loss_weights: weight of each loss in a list (``null`` = 1 each).
            beta: inverse temperature of the implicit reward (IPO's tau; SimPO's beta, typically 2.0).
            label_smoothing: assumed label-flip rate for ``sigmoid`` (cDPO), ``robust``, ``simpo``, ``aot*``; the
                target's mass on the rejected reply for ``exo_pair`` (must be > 0 there, e.g. 1e-3).
            simpo_gamma: SimPO's target reward margin.
            discopop_tau: temperature of DiscoPOP's blend between its logistic and exponential parts.
            loss_settings: settings of losses that have their own, by the name in the loss's signature (a loss
                ``my_loss(..., beta, alpha=0.3)`` takes ``{alpha: 0.5}``); a name that no selected loss declares is
                an error.
            rpo_alpha: weight of an NLL term on the chosen reply (``null`` = none).
            reference_model: a different reference model (folder or id); ``null`` = the starting policy.
            precompute_ref_logps: compute reference log-probabilities once for every train/val pair at the start of
                ``fit`` and reuse them (saves a forward per step; costs one pass over the data).
        """
        super().__init__(*args, **kwargs)
        self.loss_types, self.loss_weights, self.loss_kwargs = selected_losses(DPOModule, self.hparams)
        self.reference_free = all(t in REFERENCE_FREE for t in self.loss_types)
        # metrics show the log-probs as the first loss sees them
        self.average_logps = self.loss_types[0] in LENGTH_NORMALISED
        self._frozen_reference: list[torch.nn.Module] = []  # a list hides it from state_dict and the optimizer
        self._ref_cache: dict[str, torch.Tensor] = {}  # split -> (n_pairs, 2) reference log-probs
        self.eval_rewards: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # split -> (chosen, rejected) rewards
        self.val_logps = tuple(CatMetric() for _ in range(3))  # policy sums, reference sums, reply token counts
        self.test_logps = tuple(CatMetric() for _ in range(3))
        self.val_policy, self.val_ref, self.val_counts = self.val_logps  # registered as children (device, sync)
        self.test_policy, self.test_ref, self.test_counts = self.test_logps

    def setting_rules(self) -> list[tuple[str, bool, str]]:
        hp = self.hparams
        return [*loss_setting_rules(hp), ("rpo_alpha", hp.rpo_alpha is None or hp.rpo_alpha >= 0, ">= 0 or null")]

    # ---- reference ---------------------------------------------------------------------------------------------

    def configure_model(self) -> None:
        if self.model is not None:
            return
        super().configure_model()
        self._frozen_reference = []
        if not self.reference_free:
            self.setup_reference()

    def _cached_reference(self, batch: dict, split: str) -> Optional[torch.Tensor]:
        if self.reference_free:
            return None
        cache = self._ref_cache.get(split)
        if cache is None:
            return self.reference_logps(batch)
        values = cache.to(batch["index"].device)[batch["index"]]  # (B, 2)
        return torch.cat([values[:, 0], values[:, 1]])  # (2B,)

    def precompute_reference(self, split: str) -> None:
        """Reference log-probs of every pair of ``split``, in dataset order, kept for the rest of the run."""
        data = self.trainer.datamodule
        loader = data.eval_loader(split)
        out = torch.zeros(len(loader.dataset), 2)
        for batch in tqdm(loader, desc=f"reference log-probs ({split})", disable=not self.trainer.is_global_zero):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            ref = self.reference_logps(batch).chunk(2)
            out[batch["index"].cpu()] = torch.stack(ref, 1).float().cpu()
        self._ref_cache[split] = out

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.hparams.precompute_ref_logps and not self.reference_free:
            for split in ("train", "val"):
                self.precompute_reference(split)

    # ---- training ----------------------------------------------------------------------------------------------
    def _settings(self, label: Optional[torch.Tensor] = None) -> dict:
        """Loss settings; soft labels (records' ``label`` < 1) become per-pair label-flip probabilities."""
        hp = self.hparams
        smoothing = hp.label_smoothing
        if label is not None and not bool((label == 1).all()):
            unsupported = [t for t in self.loss_types if t not in SOFT_LABEL_LOSSES]
            if unsupported:
                raise ValueError(f"the data has soft labels (field 'label' < 1), which loss_type {unsupported} cannot "
                                 f"use; choose from {list(SOFT_LABEL_LOSSES)} or drop the labels")
            smoothing = soft_label_smoothing(label, hp.label_smoothing)
        return {**self.loss_kwargs, "label_smoothing": smoothing}

    def pair_losses(self, batch: dict, split: str) -> tuple[torch.Tensor, PairLogps, Optional[PairLogps]]:
        """Per-pair losses ``(B,)`` with the policy and reference log-probs (as the first loss sees them)."""
        hp = self.hparams
        # the no-grad reference forward comes first: a second forward of the same (FSDP-wrapped) layers between the
        # policy forward and its backward would disturb their backward hooks
        ref_sums = self._cached_reference(batch, split)  # (2B,) or None
        sums, counts = self.reply_logps(batch)  # (2B,), (2B,)
        losses = combined_preference_loss(self.loss_types, self.loss_weights, sums, ref_sums, counts,
                                          **self._settings(batch.get("label")))
        losses = losses * batch["weight"]
        if hp.rpo_alpha:
            B = batch["index"].shape[0]
            losses = losses + hp.rpo_alpha * (-sums[:B] / counts[:B].clamp(min=1))  # chosen mean token NLL
        policy = pair_logps(sums, counts, self.average_logps)
        ref = pair_logps(ref_sums, counts, self.average_logps) if ref_sums is not None else None
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
        sums, counts = self.reply_logps(batch)
        for metric, value in zip(metrics, (sums, ref if ref is not None else torch.zeros_like(sums), counts)):
            metric.update(torch.stack(value.float().chunk(2), 1))  # (B, 2): chosen, rejected

    def _eval_epoch_end(self, stage: str, metrics: tuple[CatMetric, ...]) -> dict[str, torch.Tensor]:
        # each (N, 2) -> [chosen; rejected] rows (2N,)
        sums, ref_sums, counts = (torch.cat([v[:, 0], v[:, 1]]) for v in (m.compute() for m in metrics))
        ref_sums = None if self.reference_free else ref_sums
        loss = combined_preference_loss(self.loss_types, self.loss_weights, sums, ref_sums, counts,
                                        **self._settings()).mean()
        policy = pair_logps(sums, counts, self.average_logps)
        ref = pair_logps(ref_sums, counts, self.average_logps) if ref_sums is not None else None
        n = policy.chosen.shape[0]
        # per-pair implicit rewards beta * (log pi - log pi_ref), kept for the reward-distribution plot
        self.eval_rewards[stage] = tuple(
            implicit_rewards(getattr(policy, side).detach(), getattr(ref, side) if ref is not None else None,
                             self.hparams.beta).cpu() for side in ("chosen", "rejected"))
        values = {f"{stage}/loss": loss}
        values.update({f"{stage}/{k.removesuffix('_sum')}": v / n
                       for k, v in preference_sums(policy, ref, self.hparams.beta).items()})
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
