"""RewardModule: a scalar reward model trained on preference pairs with the Bradley-Terry loss."""

from __future__ import annotations


import torch
from torchmetrics import CatMetric

from lightning_post.losses.preference import bradley_terry_loss
from lightning_post.methods.base import PairwiseModule, unwrap_peft
from lightning_post.models.attention import VARLEN_ATTENTION
from lightning_post.models.loading import resolve_model_path, torch_dtype


def reward_stats(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """Accuracy (ties count half), mean margin, and mean/std (population) of each side's rewards, under the names
    DPO, KTO and CAI log too (``rewards/accuracies``, ``rewards/margins``, ``rewards/chosen``, ...), so reward and
    preference runs compare side by side in MLflow.

    >>> {k: round(float(v), 3) for k, v in reward_stats(torch.tensor([1., 3.]), torch.tensor([0., 3.])).items()}
    {'rewards/accuracies': 0.75, 'rewards/margins': 0.5, 'rewards/chosen': 2.0, 'rewards/chosen_std': 1.0, 'rewards/rejected': 1.5, 'rewards/rejected_std': 1.5}
    """
    return {
        "rewards/accuracies": ((r_chosen > r_rejected).float() + 0.5 * (r_chosen == r_rejected).float()).mean(),
        "rewards/margins": (r_chosen - r_rejected).mean(),
        "rewards/chosen": r_chosen.mean(),
        "rewards/chosen_std": r_chosen.std(correction=0),
        "rewards/rejected": r_rejected.mean(),
        "rewards/rejected_std": r_rejected.std(correction=0),
    }


class RewardModule(PairwiseModule):
    """Bradley-Terry reward model: ``-log sigma(r(x, y_chosen) - r(x, y_rejected) - margin)`` per pair.

    The reward is a sequence-classification head (one output) on any causal LM, read at the last non-padding
    token exactly as transformers' ``AutoModelForSequenceClassification`` does, so the exported model scores
    ``(prompt, response)`` texts the same way outside lightning-post. Start from an SFT export by naming its
    ``export/model`` folder in ``model_name_or_path``.
    """

    method = "reward"
    peft_task = "SEQ_CLS"
    generates = False

    def __init__(
        self,
        *args,
        center_coef: float = 0.0,
        use_margin: bool = True,
        **kwargs,
    ):
        """
        Args:
            center_coef: weight of the reward-centring term ``(r_chosen + r_rejected)^2`` (Eisenstein et al. 2023).
            use_margin: subtract the records' ``margin`` field inside the loss (Llama 2); pairs without one use 0.
        """
        super().__init__(*args, **kwargs)
        self.val_rewards = (CatMetric(), CatMetric())
        self.eval_rewards: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # split -> (chosen, rejected) rewards
        self.test_rewards = (CatMetric(), CatMetric())
        self.val_chosen, self.val_rejected = self.val_rewards  # registered as children for device moves and DDP
        self.test_chosen, self.test_rejected = self.test_rewards

    def setting_rules(self) -> list[tuple[str, bool, str]]:
        return [("center_coef", self.hparams.center_coef >= 0, ">= 0")]

    def load_backbone(self) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        from lightning_post.models.attention import register as register_attention

        hp = self.hparams
        kwargs = {"dtype": torch_dtype(hp.dtype), "trust_remote_code": hp.trust_remote_code, "num_labels": 1}
        if hp.attn_implementation:
            kwargs["attn_implementation"] = hp.attn_implementation
        register_attention()
        model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(hp.model_name_or_path), **kwargs)
        if model.config.pad_token_id is None:  # the head reads the last non-pad token, so pad must be known
            from lightning_post.models.loading import load_tokenizer

            model.config.pad_token_id = load_tokenizer(hp.model_name_or_path, hp.trust_remote_code).pad_token_id
        return model

    def rewards(self, batch: dict) -> torch.Tensor:
        """Scalar reward of every row ``(R,)``: the score head at the row's last token that is not the pad token,
        transformers' sequence-classification rule (so an export scores exactly like the module). With
        ``sdpa_varlen`` the rows go through the decoder padding-free."""
        if self.model.config._attn_implementation not in VARLEN_ATTENTION:
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             position_ids=batch["position_ids"])
            return out.logits[:, 0].float()  # (R,)
        hidden = self.forward_hidden(batch)  # (R, T, H)
        ids = batch["input_ids"]
        not_pad = ((ids != self.model.config.pad_token_id) & batch["attention_mask"].bool()).int()  # (R, T)
        last = (torch.arange(ids.shape[1], device=ids.device) * not_pad).argmax(-1)  # (R,)
        score = unwrap_peft(self.model).score
        return score(hidden[torch.arange(ids.shape[0], device=ids.device), last])[:, 0].float()  # (R,)

    def pair_rewards(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rewards(batch).chunk(2)  # rows are [chosen; rejected]

    # ---- training ----------------------------------------------------------------------------------------------
    def micro_step(self, micro_batch: dict) -> dict[str, torch.Tensor]:
        r_c, r_r = self.pair_rewards(micro_batch)
        margin = micro_batch["margin"] if self.hparams.use_margin else None
        label = micro_batch.get("label")
        label = None if label is None or bool((label == 1).all()) else label
        losses = bradley_terry_loss(r_c, r_r, margin, self.hparams.center_coef, label) * micro_batch["weight"]
        r_c, r_r = r_c.detach(), r_r.detach()
        return {
            "loss_sum": losses.sum(),
            "correct_sum": ((r_c > r_r).float() + 0.5 * (r_c == r_r).float()).sum(),
            "margin_sum": (r_c - r_r).sum(),
            "chosen_sum": r_c.sum(),
            "chosen_sq_sum": (r_c**2).sum(),
            "rejected_sum": r_r.sum(),
            "rejected_sq_sum": (r_r**2).sum(),
        }

    def step_metrics(self, totals: dict[str, torch.Tensor], units: torch.Tensor) -> dict[str, torch.Tensor]:
        n = units.clamp(min=1)
        out = {
            "train/loss": totals["loss_sum"] / n,
            "train/rewards/accuracies": totals["correct_sum"] / n,
            "train/rewards/margins": totals["margin_sum"] / n,
        }
        for side in ("chosen", "rejected"):
            mean = totals[f"{side}_sum"] / n
            out[f"train/rewards/{side}"] = mean
            out[f"train/rewards/{side}_std"] = (totals[f"{side}_sq_sum"] / n - mean**2).clamp(min=0).sqrt()
        return out

    # ---- evaluation --------------------------------------------------------------------------------------------
    def _eval_step(self, batch: dict, metrics: tuple[CatMetric, CatMetric]) -> None:
        r_c, r_r = self.pair_rewards(batch)
        metrics[0].update(r_c)
        metrics[1].update(r_r)

    def _eval_epoch_end(self, stage: str, metrics: tuple[CatMetric, CatMetric]) -> dict[str, torch.Tensor]:
        r_c, r_r = metrics[0].compute(), metrics[1].compute()
        self.eval_rewards[stage] = (r_c.detach().float().cpu(), r_r.detach().float().cpu())  # for the plots
        stats = reward_stats(r_c, r_r)
        loss = bradley_terry_loss(r_c, r_r, None, self.hparams.center_coef).mean()
        values = {f"{stage}/loss": loss, **{f"{stage}/{k}": v for k, v in stats.items()}}
        for k, v in values.items():
            self.log(k, v, prog_bar=k.endswith(("accuracies", "loss")), sync_dist=False)
        metrics[0].reset()
        metrics[1].reset()
        return values

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_rewards)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val", self.val_rewards)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_rewards)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", self.test_rewards)

    # ---- scoring -----------------------------------------------------------------------------------------------
    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """Rewards of the rows of a scoring batch, with the record and side they belong to."""
        return {"record": batch["record"], "side": batch["side"], "score": self.rewards(batch).detach().cpu()}
