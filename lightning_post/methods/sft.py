"""SFTModule: instruction tuning with the loss on response tokens only."""

from __future__ import annotations

from typing import Optional

import torch
from torchmetrics import MeanMetric

from lightning_post.records.tokenize import IGNORE_INDEX
from lightning_post.losses.logps import sum_by_row
from lightning_post.losses.pcgrad import gradient_cosines, pcgrad
from lightning_post.methods.base import AccumulatingModule


class SFTModule(AccumulatingModule):
    """Supervised fine-tuning: mean token cross-entropy over every response token of the optimizer step.

    Logits are computed only at positions that predict a response token (the LM head is a large share of a small
    model's compute, and prompt positions carry no loss).
    """

    method = "sft"

    def __init__(
        self,
        *args,
        pcgrad: bool = False,
        task_grad_cosine: bool = False,
        exact_match_max_new_tokens: int = 16,
        logits_chunk_size: int = 1024,
        **kwargs,
    ):
        """
        Args:
            pcgrad: with multitask data, project each task's gradient off the task gradients it conflicts with
                before the step (PCGrad; one backward per task in the batch; one device).
            task_grad_cosine: with multitask data, log the cosine similarity of every two tasks' gradients
                (``train/grad_cosine/<a>/<b>``; also on with ``pcgrad``).
            exact_match_max_new_tokens: longest generated answer of exact-match (classification) validation.
            logits_chunk_size: response positions whose logits are computed at once (memory ``chunk * vocab``
                floats; with a frozen LM head, as with LoRA, the full logits never exist).
        """
        super().__init__(*args, **kwargs)
        self.val_loss, self.val_accuracy = MeanMetric(), MeanMetric()
        self.test_loss, self.test_accuracy = MeanMetric(), MeanMetric()
        self._task_loss: dict[str, list[torch.Tensor]] = {}  # stage -> [summed token loss, tokens] per task
        self.task_seen: Optional[torch.Tensor] = None  # rows trained on per task, since the start of the run

    def setting_rules(self) -> list[tuple[str, bool, str]]:
        hp = self.hparams
        return [("exact_match_max_new_tokens", hp.exact_match_max_new_tokens >= 1, ">= 1"),
                ("logits_chunk_size", hp.logits_chunk_size >= 1, ">= 1")]

    def response_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(N, V)`` at the N positions whose next token is a response token, and those tokens ``(N,)``."""
        hidden, targets, _ = self.labelled_hidden(batch)  # (N, H), (N,)
        return self.lm_head()(hidden), targets  # (N, V), (N,)

    def loss_units(self, batch: dict) -> torch.Tensor:
        return (batch["labels"][:, 1:] != IGNORE_INDEX).sum()

    def response_losses(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token losses ``(N,)``, arg-max predictions ``(N,)`` and targets ``(N,)`` at the response positions,
        computed chunk by chunk from the hidden states (the ``(N, V)`` logits never exist at once)."""
        hidden, targets, _ = self.labelled_hidden(batch)  # (N, H), (N,)
        losses, predictions = self.head_losses(hidden, targets, self.hparams.logits_chunk_size)
        return losses, predictions, targets

    def micro_step(self, micro_batch: dict) -> dict[str, torch.Tensor]:
        losses, predictions, targets = self.response_losses(micro_batch)
        correct = (predictions == targets).sum()
        out = {"loss_sum": losses.sum(), "correct_sum": correct}
        if "task" in micro_batch:
            out["task_rows_sum"] = torch.bincount(micro_batch["task"], minlength=len(self.task_names())).float()
        return out

    def task_names(self) -> list[str]:
        """Task names of multitask data (``MultiTaskDataModule``), else none."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return list(getattr(dm, "task_names", []))

    def step_metrics(self, totals: dict[str, torch.Tensor], units: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = totals["loss_sum"] / units.clamp(min=1)
        metrics = {
            "train/loss": loss,
            "train/perplexity": loss.exp(),
            "train/token_accuracy": totals["correct_sum"] / units.clamp(min=1),
            "train/response_tokens": units,
        }
        if "task_rows_sum" in totals:  # the realised mixture: each task's share of the rows trained on so far
            seen = totals["task_rows_sum"].cpu()
            self.task_seen = seen if self.task_seen is None else self.task_seen + seen
            for name, n in zip(self.task_names(), self.task_seen):
                metrics[f"data/task_share/{name}"] = n / self.task_seen.sum()
        return metrics

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.task_seen is not None:
            checkpoint["task_seen"] = self.task_seen

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.task_seen = checkpoint.get("task_seen")

    # ---- gradient surgery (multitask) --------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if "task" in batch and (self.hparams.pcgrad or self.hparams.task_grad_cosine):
            return self.surgery_step(batch)
        return super().training_step(batch, batch_idx)

    def surgery_step(self, batch: dict) -> torch.Tensor:
        """One optimizer step from per-task gradients.

        1. For each task in the batch, backpropagate its share of the step loss (its summed token loss over all of
           the step's response tokens), so the task gradients add up to the ordinary step gradient.
        2. Log the cosine similarity of every two task gradients.
        3. With ``pcgrad``, replace the sum by PCGrad's sum of projected gradients; else keep the plain sum (the
           update is then exactly the ordinary step's).
        4. Clip, step, schedule, log.
        """
        if self.trainer.world_size > 1:
            raise RuntimeError("pcgrad / task_grad_cosine run on one device; turn them off for multi-device runs")
        opt, sched = self.optimizers(), self.lr_schedulers()
        params = [p for p in self.parameters() if p.requires_grad]
        units = self.loss_units(batch).float()
        names = self.task_names()
        tasks = batch["task"].unique().tolist()
        grads, sums = [], {}
        # step 1: one gradient per task
        for t in tasks:
            rows = batch["task"] == t
            sub = {k: v[rows] for k, v in batch.items()}
            for mb in self.micro_batches(sub):
                out = self.micro_step(mb)
                self.manual_backward(out["loss_sum"] / units.clamp(min=1))
                for k, v in out.items():
                    sums[k] = sums.get(k, 0) + v.detach()
            grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().float()
                                    for p in params]))
            opt.zero_grad(set_to_none=True)
        stacked = torch.stack(grads)  # (K, D)
        # step 2: how the tasks' gradients relate
        metrics = self.step_metrics(sums, units)
        cos = gradient_cosines(stacked)
        for i, a in enumerate(tasks):
            for j in range(i + 1, len(tasks)):
                metrics[f"train/grad_cosine/{names[a]}/{names[tasks[j]]}"] = cos[i, j]
        metrics["train/grad_conflicts"] = (cos.triu(1) < 0).sum().float()
        # step 3: the update
        update = pcgrad(stacked) if self.hparams.pcgrad else stacked.sum(0)  # (D,)
        start = 0
        for p in params:
            p.grad = update[start:start + p.numel()].view_as(p).to(p.dtype)
            start += p.numel()
        # step 4
        metrics["train/grad_norm"] = self.optimizer_step(opt, sched)
        metrics["train/lr"] = torch.tensor(sched.get_last_lr()[0])
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=batch["input_ids"].shape[0])
        self.log("loss", metrics["train/loss"], prog_bar=True, logger=False, on_step=True, on_epoch=False)
        return metrics["train/loss"]

    # ---- evaluation --------------------------------------------------------------------------------------------
    def _eval_step(self, batch: dict, loss_metric: MeanMetric, acc_metric: MeanMetric, stage: str = "val") -> None:
        losses, predictions, targets = self.response_losses(batch)  # (N,) each
        loss_metric.update(losses)  # mean over every response token of the split
        acc_metric.update((predictions == targets).float())
        if "task" in batch:  # per task: summed token loss and token count
            select = batch["labels"][:, 1:] != IGNORE_INDEX  # (B, T-1)
            rows = select.nonzero()[:, 0]  # (N,)
            k = len(self.task_names())
            task_of_token = batch["task"][rows]  # (N,)
            acc = self._task_loss.setdefault(stage, [torch.zeros(k, device=losses.device),
                                                     torch.zeros(k, device=losses.device)])
            acc[0] += sum_by_row(losses.detach().float(), task_of_token, k)
            acc[1] += sum_by_row(torch.ones_like(losses, dtype=torch.float), task_of_token, k)

    def _eval_epoch_end(self, stage: str, loss_metric: MeanMetric, acc_metric: MeanMetric) -> None:
        loss = loss_metric.compute()
        metrics = {f"{stage}/loss": loss, f"{stage}/perplexity": loss.exp(),
                   f"{stage}/token_accuracy": acc_metric.compute()}
        if stage in self._task_loss:
            total, count = (self.trainer.strategy.reduce(x, reduce_op="sum") for x in self._task_loss.pop(stage))
            for name, s_, n in zip(self.task_names(), total, count):
                if n > 0:
                    metrics[f"{stage}/{name}/loss"] = s_ / n
            metrics.update(self.exact_match_metrics(stage))
        self.log_dict(metrics, prog_bar=stage == "val", sync_dist=False)
        loss_metric.reset()
        acc_metric.reset()

    def exact_match_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        """Exact-match accuracy of greedy answers on the held-out examples of classification tasks."""
        from lightning_post.data.multitask import exact_match

        sets = getattr(self.trainer.datamodule, "exact_match_sets", {}) or {}
        names, out = self.task_names(), {}
        size = getattr(self.trainer.datamodule.hparams, "eval_batch_size", 8)
        for t, examples in sets.items():
            hits = 0
            for start in range(0, len(examples), size):
                chunk = examples[start:start + size]
                answers = self.generate_from_ids([p for p, _ in chunk], self.hparams.exact_match_max_new_tokens)
                hits += sum(exact_match(a, ref) for a, (_, ref) in zip(answers, chunk))
            out[f"{stage}/{names[t]}/exact_match"] = torch.tensor(hits / max(1, len(examples)))
        return out

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_loss, self.val_accuracy, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val", self.val_loss, self.val_accuracy)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_loss, self.test_accuracy, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", self.test_loss, self.test_accuracy)
