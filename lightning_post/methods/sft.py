"""SFTModule: instruction tuning with the loss on response tokens only."""

from __future__ import annotations

from typing import Optional

import torch
from torchmetrics import MeanMetric

from lightning_post.data.tokenize import IGNORE_INDEX
from lightning_post.losses.sft import token_cross_entropy
from lightning_post.methods.base import AccumulatingModule
from lightning_post.models.loading import DEFAULT_MODEL
from lightning_post.models.peft import PeftSettings
from lightning_post.optim import OptimSettings


class SFTModule(AccumulatingModule):
    """Supervised fine-tuning: mean token cross-entropy over every response token of the optimizer step.

    Logits are computed only at positions that predict a response token (the LM head is a large share of a small
    model's compute, and prompt positions carry no loss).
    """

    method = "sft"

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
    ):
        """
        Args:
            model_name_or_path: alias (``smollm2-135m-instruct``, ``tiny-llama``), local folder or hub id.
            dtype: parameter dtype: ``float32``, ``bfloat16`` or ``float16``.
            attn_implementation: transformers attention: ``sdpa``, ``eager``, ``flash_attention_2``.
            gradient_checkpointing: recompute activations in backward to save memory.
            trust_remote_code: allow model code from the checkpoint folder (off unless asked).
            peft: parameter-efficient method (LoRA, ...); omit for full fine-tuning.
            optim: optimizer and learning-rate schedule.
            micro_batch_size: rows per forward/backward; the data batch is one optimizer step (``None`` = all).
            gradient_clip_val: clip the global gradient norm to this value (``null`` = no clipping).
        """
        super().__init__(
            model_name_or_path, dtype, attn_implementation, gradient_checkpointing, trust_remote_code, peft, optim,
            micro_batch_size, gradient_clip_val,
        )
        self.val_loss, self.val_accuracy = MeanMetric(), MeanMetric()
        self.test_loss, self.test_accuracy = MeanMetric(), MeanMetric()

    def response_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(N, V)`` at the N positions whose next token is a response token, and those tokens ``(N,)``."""
        targets = batch["labels"][:, 1:]  # (B, T-1): token t+1 is predicted at position t
        select = targets != IGNORE_INDEX  # (B, T-1)
        hidden = self.forward_hidden(batch)[:, :-1][select]  # (N, H)
        return self.lm_head()(hidden), targets[select]  # (N, V), (N,)

    def loss_units(self, batch: dict) -> torch.Tensor:
        return (batch["labels"][:, 1:] != IGNORE_INDEX).sum()

    def micro_step(self, micro_batch: dict) -> dict[str, torch.Tensor]:
        logits, targets = self.response_logits(micro_batch)
        losses = token_cross_entropy(logits, targets)
        correct = (logits.detach().argmax(-1) == targets).sum()
        return {"loss_sum": losses.sum(), "correct_sum": correct}

    def step_metrics(self, totals: dict[str, torch.Tensor], units: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = totals["loss_sum"] / units.clamp(min=1)
        return {
            "train/loss": loss,
            "train/perplexity": loss.exp(),
            "train/token_accuracy": totals["correct_sum"] / units.clamp(min=1),
            "train/response_tokens": units,
        }

    # ---- evaluation --------------------------------------------------------------------------------------------
    def _eval_step(self, batch: dict, loss_metric: MeanMetric, acc_metric: MeanMetric) -> None:
        logits, targets = self.response_logits(batch)
        loss_metric.update(token_cross_entropy(logits, targets))  # mean over every response token of the split
        acc_metric.update((logits.argmax(-1) == targets).float())

    def _eval_epoch_end(self, stage: str, loss_metric: MeanMetric, acc_metric: MeanMetric) -> None:
        loss = loss_metric.compute()
        self.log_dict(
            {f"{stage}/loss": loss, f"{stage}/perplexity": loss.exp(), f"{stage}/token_accuracy": acc_metric.compute()},
            prog_bar=stage == "val",
        )
        loss_metric.reset()
        acc_metric.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_loss, self.val_accuracy)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val", self.val_loss, self.val_accuracy)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_loss, self.test_accuracy)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", self.test_loss, self.test_accuracy)
