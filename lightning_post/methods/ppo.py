"""PPOModule: on-policy RLHF (PPO with a value head and GAE, or critic-free RLOO / GRPO) with a KL penalty against a
reference model, over prompts from :class:`~lightning_post.data.prompts.PromptDataModule`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
from torchmetrics import CatMetric, SumMetric

from lightning_post.losses.rl import (
    ESTIMATORS, GROUP_ADVANTAGES, KL_ESTIMATORS, adaptive_kl_coef, clipped_policy_loss, clipped_value_loss, gae,
    masked_mean, token_rewards, whiten,
)
from lightning_post.methods.base import PostTrainingModule, unwrap_peft
from lightning_post.methods.reference import ReferenceModelMixin
from lightning_post.methods.rollout import Rollout, RolloutEngine, Sampling
from lightning_post.models.loading import load_causal_lm
from lightning_post.models.peft import apply_peft
from lightning_post.scoring.rewards import RewardModelScorer, load_function
from lightning_post.tracking import mlflow_logger

log = logging.getLogger(__name__)


def _looks_local(path: str) -> bool:
    """A folder path rather than a hub id (``org/name``)."""
    return path.startswith((".", "/", "~")) or path.count("/") >= 2


class ValueModel(torch.nn.Module):
    """A separate critic: its own decoder (with its own adapters under PEFT) and a scalar head."""

    def __init__(self, decoder: torch.nn.Module, hidden_size: int, dtype: torch.dtype):
        super().__init__()
        self.decoder = decoder
        self.head = torch.nn.Linear(hidden_size, 1, dtype=dtype)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)


class PPOModule(ReferenceModelMixin, PostTrainingModule):
    """RLHF by PPO (Schulman et al. 2017; Ziegler et al. 2019; Ouyang et al. 2022), RLOO or GRPO.

    Each training step takes one batch of prompts and:

    1. rollout: samples ``samples_per_prompt`` replies per prompt (KV cache, ``temperature``, ``top_p``,
       ``max_new_tokens``); each reply ends at its first EOS;
    2. score: the reward model (``reward_model``, e.g. a RewardModule export) or ``reward_fn`` gives one score per
       reply; replies without EOS lose ``missing_eos_penalty``;
    3. KL: log-probs of the policy (at sampling time) and of the reference (adapters disabled under LoRA, else a
       frozen copy) give a per-token KL estimate (``kl_estimator``: k1 or k3);
    4. values: a value head on the policy's hidden states (``value_model: shared``) or on a separate critic;
    5. advantages: ``gae`` -- per-token rewards ``-kl_coef * KL`` plus the score on the last token, GAE(``gamma``,
       ``lam``); ``rloo`` / ``grpo`` -- sequence reward ``score - kl_coef * sum KL`` against the other samples of the
       same prompt; whitened over real reply tokens when ``whiten_advantages``;
    6. optimise: ``ppo_epochs`` passes over ``num_minibatches`` shuffled minibatches, each one optimizer update of
       the clipped policy loss (+ ``vf_coef`` x clipped value loss);
    7. KL control: with ``target_kl`` the coefficient adapts (Ziegler et al. 2019), else it stays fixed.

    Every optimizer update counts as a trainer step: ``max_steps`` = rollouts x ppo_epochs x num_minibatches.
    Validation answers held-out prompts (greedy unless ``val_do_sample``) and logs their mean score and KL.
    """

    supports_sharding = False  # generation on one process / several trained networks: not under FSDP2 yet

    method = "ppo"

    def __init__(
        self,
        *args,
        estimator: str = "gae",
        samples_per_prompt: int = 1,
        reward_model: Optional[str] = None,
        reward_template: str = "chat",
        reward_fn: Optional[str] = None,
        reward_fn_kwargs: Optional[dict] = None,
        missing_eos_penalty: Optional[float] = None,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        kl_coef: float = 0.05,
        kl_estimator: str = "k1",
        target_kl: Optional[float] = None,
        kl_horizon: int = 10000,
        gamma: float = 1.0,
        lam: float = 0.95,
        cliprange: float = 0.2,
        cliprange_value: float = 0.2,
        vf_coef: float = 0.1,
        value_model: str = "shared",
        ppo_epochs: int = 1,
        num_minibatches: int = 1,
        whiten_advantages: bool = True,
        reference_model: Optional[str] = None,
        val_do_sample: bool = False,
        log_rollouts_every_n_steps: int = 10,
        log_val_answers: bool = True,
        **kwargs,
    ):
        """
        Args:
            estimator: ``gae`` (PPO with a value model), ``rloo`` or ``grpo`` (critic-free; need
                ``samples_per_prompt`` >= 2).
            samples_per_prompt: replies sampled per prompt in each rollout.
            reward_model: folder of a sequence-classification reward model (e.g. a RewardModule ``export/model``).
            reward_template: template the reward model was trained with (how a prompt and reply are formatted).
            reward_fn: instead of a reward model, a Python function ``package.module:function`` (see
                :mod:`lightning_post.scoring.rewards`).
            reward_fn_kwargs: extra keyword arguments for ``reward_fn``.
            missing_eos_penalty: subtracted from the score of replies that hit ``max_new_tokens`` without EOS.
            max_new_tokens: longest sampled reply.
            temperature: sampling temperature (log-probs are computed at the same temperature).
            top_p: nucleus sampling threshold (1 = off).
            kl_coef: weight of the KL penalty (the starting value when ``target_kl`` is set).
            kl_estimator: ``k1`` (``log pi - log pi_ref``) or ``k3`` (non-negative, unbiased).
            target_kl: per-reply KL the adaptive controller aims for (``null`` = fixed ``kl_coef``).
            kl_horizon: horizon of the adaptive controller, in replies.
            gamma: discount factor of GAE.
            lam: lambda of GAE.
            cliprange: PPO's clipping range of the probability ratio.
            cliprange_value: clipping range of the value update.
            vf_coef: weight of the value loss.
            value_model: ``shared`` (a head on the policy's hidden states) or ``separate`` (its own decoder).
            ppo_epochs: passes over each rollout.
            num_minibatches: optimizer updates per pass.
            whiten_advantages: normalise advantages to zero mean, unit variance over real reply tokens.
            reference_model: a different reference (folder or id); ``null`` = the starting policy.
            val_do_sample: sample (instead of greedy) replies to held-out prompts in validation.
            log_rollouts_every_n_steps: log a rollout's prompts, replies and scores to MLflow every N steps (0 = off).
            log_val_answers: log every validation's held-out answers, scores and KL to MLflow
                (``val_answers/step<N>.json``), so runs compare prompt by prompt.
        """
        super().__init__(*args, **kwargs)
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator {estimator!r} is unknown; choose from {list(ESTIMATORS)}")
        if estimator in GROUP_ADVANTAGES and samples_per_prompt < 2:
            raise ValueError(f"estimator {estimator!r} compares samples of a prompt: set samples_per_prompt >= 2")
        if (reward_model is None) == (reward_fn is None):
            raise ValueError("give exactly one of reward_model (a folder) or reward_fn ('package.module:function')")
        if kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator {kl_estimator!r} is unknown; choose from {list(KL_ESTIMATORS)}")
        if value_model not in ("shared", "separate"):
            raise ValueError(f"value_model must be 'shared' or 'separate', got {value_model!r}")
        if reward_model is not None and _looks_local(reward_model) and not Path(reward_model).expanduser().exists():
            raise ValueError(f"reward_model folder {reward_model!r} does not exist. Train one with: lightning-post fit "
                             "--config configs/reward/default.yaml --export.dirpath exports/reward")
        self.reward_function = load_function(reward_fn) if reward_fn is not None else None
        self.kl_value = kl_coef
        self.value_head: Optional[torch.nn.Module] = None
        self.critic: Optional[ValueModel] = None
        self._scorer: Optional[RewardModelScorer] = None
        # sampling, scoring and reply log-probs (steps 1-3) are the rollout part's, shared with other on-policy methods
        self.rollouts = RolloutEngine(self, self.score_texts, Sampling(max_new_tokens, temperature, top_p))
        self.val_scores, self.val_kl, self.val_length = CatMetric(), CatMetric(), CatMetric()
        self.val_eos = SumMetric()
        self._val_rows: list[dict] = []

    def setting_rules(self) -> list[tuple[str, bool, str]]:
        hp = self.hparams
        return [("samples_per_prompt", hp.samples_per_prompt >= 1, ">= 1"),
                ("max_new_tokens", hp.max_new_tokens >= 1, ">= 1"), ("temperature", hp.temperature > 0, "> 0"),
                ("top_p", 0 < hp.top_p <= 1, "in (0, 1]"), ("kl_coef", hp.kl_coef >= 0, ">= 0"),
                ("target_kl", hp.target_kl is None or hp.target_kl > 0, "> 0 or null"),
                ("kl_horizon", hp.kl_horizon >= 1, ">= 1"), ("gamma", 0 <= hp.gamma <= 1, "in [0, 1]"),
                ("lam", 0 <= hp.lam <= 1, "in [0, 1]"), ("cliprange", hp.cliprange > 0, "> 0"),
                ("cliprange_value", hp.cliprange_value > 0, "> 0"), ("vf_coef", hp.vf_coef >= 0, ">= 0"),
                ("ppo_epochs", hp.ppo_epochs >= 1, ">= 1"), ("num_minibatches", hp.num_minibatches >= 1, ">= 1"),
                ("log_rollouts_every_n_steps", hp.log_rollouts_every_n_steps >= 0, ">= 0 (0 = off)")]

    @property
    def uses_critic(self) -> bool:
        return self.hparams.estimator == "gae"

    def configure_model(self) -> None:
        if self.model is not None:
            return
        super().configure_model()
        self.setup_reference()
        hp = self.hparams
        config = unwrap_peft(self.model).config
        dtype = next(self.model.parameters()).dtype
        if self.uses_critic and hp.value_model == "shared":
            self.value_head = torch.nn.Linear(config.hidden_size, 1, dtype=dtype)
            torch.nn.init.zeros_(self.value_head.weight)  # V = 0 at the start: the first advantages are the rewards
            torch.nn.init.zeros_(self.value_head.bias)
        elif self.uses_critic:
            lm = load_causal_lm(hp.model_name_or_path, hp.dtype, hp.attn_implementation, hp.trust_remote_code)
            decoder = apply_peft(lm, self.peft, "CAUSAL_LM") if self.peft is not None else lm
            self.critic = ValueModel(decoder, config.hidden_size, dtype).train()
        if hp.reward_model is not None:
            self._scorer = RewardModelScorer(hp.reward_model, hp.reward_template, hp.dtype,
                                             hp.micro_batch_size or 8, hp.trust_remote_code)

    # ---- checkpoints: the adaptive KL coefficient continues where it was ----------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ppo_kl_coef"] = self.kl_value

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.kl_value = checkpoint.get("ppo_kl_coef", self.kl_value)

    # ---- forward passes ------------------------------------------------------------------------------------------
    def values_of(self, seq: dict, hidden: torch.Tensor, R: int) -> torch.Tensor:
        """Value estimates ``(n, R)`` of the states before each reply token."""
        if self.critic is None:
            return self.value_head(hidden).squeeze(-1).float()
        decoder = unwrap_peft(self.critic.decoder).get_decoder()
        out = decoder(input_ids=seq["input_ids"], attention_mask=seq["attention_mask"],
                      position_ids=seq["position_ids"]).last_hidden_state[:, -R - 1:-1]
        return self.critic.head(out).squeeze(-1).float()

    def _chunks(self, n: int) -> list[torch.Tensor]:
        return list(torch.arange(n, device=self.device).split(self.hparams.micro_batch_size or n))

    # ---- step 2: score ---------------------------------------------------------------------------------------------
    def score_texts(self, records: list[dict], texts: list[str], ids: list[list[int]]) -> torch.Tensor:
        """Scores of decoded replies by the reward model or the reward function (the rollout part calls this)."""
        if self._scorer is not None:
            return self._scorer.score(records, texts, self.device)
        requests = [r["prompt"][-1]["content"] for r in records]
        return self.reward_function(prompts=requests, completions=texts, completion_ids=ids,
                                    **(self.hparams.reward_fn_kwargs or {}))

    # ---- steps 1-5: experience -----------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, batch: dict) -> Rollout:
        hp = self.hparams
        k = hp.samples_per_prompt
        # step 1: rollout
        replies = self.rollouts.sample(batch, k, do_sample=True)
        seq, response, mask = replies.seq, replies.response, replies.mask
        # step 2: score
        scores = self.rollouts.score(replies)
        has_eos = (response == self.tokenizer.eos_token_id).any(1)
        if hp.missing_eos_penalty is not None:
            scores = scores - hp.missing_eos_penalty * (~has_eos).float()
        # steps 3-4: log-probs of policy and reference, values
        R = response.shape[1]
        logps, ref_logps, entropy, values = [], [], [], []
        for idx in self._chunks(response.shape[0]):
            part = {key: v[idx] for key, v in seq.items()}
            lp, ent, hidden = self.rollouts.response_logps(part, response[idx], need_entropy=True)
            logps.append(lp)
            entropy.append(ent)
            if self.uses_critic:
                values.append(self.values_of(part, hidden, R))
            with self._reference_context():
                ref_logps.append(self.rollouts.response_logps(part, response[idx])[0])
        logps, ref_logps, entropy = torch.cat(logps), torch.cat(ref_logps), torch.cat(entropy)
        kl = KL_ESTIMATORS[hp.kl_estimator](logps, ref_logps) * mask  # (N, R)
        # step 5: advantages
        if self.uses_critic:
            values = torch.cat(values) * mask
            rewards = token_rewards(scores, kl, mask, self.kl_value)
            advantages, returns = gae(rewards, values, mask, hp.gamma, hp.lam)
        else:
            values = returns = None
            sequence_reward = scores - self.kl_value * kl.sum(1)  # (N,)
            advantages = GROUP_ADVANTAGES[hp.estimator](sequence_reward, k)[:, None] * mask  # (N, R)
        if hp.whiten_advantages:
            advantages = whiten(advantages, mask)
        return Rollout(seq, response, mask, logps, ref_logps, values, advantages, returns, scores, entropy, kl)

    # ---- step 6: optimise ----------------------------------------------------------------------------------------
    def minibatch_update(self, ro: Rollout, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimizer update on the rollout rows ``rows``; losses are token means over the minibatch."""
        hp = self.hparams
        opt, sched = self.optimizers(), self.lr_schedulers()
        tokens = ro.mask[rows].sum().clamp(min=1)
        micro = list(rows.split(hp.micro_batch_size or len(rows)))
        stats: dict[str, torch.Tensor] = {}
        for j, idx in enumerate(micro):
            part = {key: v[idx] for key, v in ro.seq.items()}
            mask = ro.mask[idx]
            share = mask.sum() / tokens  # this micro-batch's share of the minibatch's tokens
            with self._sync_context(last=j == len(micro) - 1):
                logps, _, hidden = self.rollouts.response_logps(part, ro.response[idx])
                pg_loss, pg_stats = clipped_policy_loss(logps, ro.logps[idx], ro.advantages[idx], mask, hp.cliprange)
                loss = pg_loss
                parts = {"policy_loss": pg_loss, **pg_stats}
                if self.uses_critic:
                    values = self.values_of(part, hidden, ro.response.shape[1])
                    vf_loss, vf_clipfrac = clipped_value_loss(values, ro.values[idx], ro.returns[idx], mask,
                                                              hp.cliprange_value)
                    loss = loss + hp.vf_coef * vf_loss
                    parts.update(value_loss=vf_loss, value_clipfrac=vf_clipfrac)
                self.manual_backward(loss * share)
            for name, value in {"loss": loss, **parts}.items():
                stats[name] = stats.get(name, 0) + value.detach() * share
        stats["grad_norm"] = self.optimizer_step(opt, sched)
        return stats

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        strategy = self.trainer.strategy
        ro = self.rollout(batch)  # steps 1-5
        # step 6: ppo_epochs x num_minibatches updates over shuffled rows
        n = ro.response.shape[0]
        updates = []
        for _ in range(hp.ppo_epochs):
            order = torch.randperm(n, device=self.device)
            for rows in order.chunk(hp.num_minibatches):
                updates.append(self.minibatch_update(ro, rows))
        # step 7: adapt the KL coefficient to the rollout's KL per reply (over every device)
        kl_per_reply = strategy.reduce(ro.kl.sum(1).mean(), reduce_op="mean")
        kl_coef_used = self.kl_value
        if hp.target_kl is not None:
            self.kl_value = adaptive_kl_coef(self.kl_value, float(kl_per_reply), hp.target_kl, hp.kl_horizon,
                                             n * self.trainer.world_size)
        metrics = self.rollout_metrics(ro, kl_per_reply, kl_coef_used)
        for name in updates[0]:
            metrics[f"ppo/{name}" if name not in ("loss", "grad_norm") else f"train/{name}"] = \
                torch.stack([u[name] for u in updates]).mean()
        metrics = {k: strategy.reduce(v.float(), reduce_op="mean") for k, v in metrics.items()}
        metrics["train/lr"] = torch.tensor(self.lr_schedulers().get_last_lr()[0])
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=n)
        self.log("loss", metrics["train/loss"], prog_bar=True, logger=False, on_step=True, on_epoch=False)
        self.log("score", metrics["objective/scores"], prog_bar=True, logger=False, on_step=True, on_epoch=False)
        self.maybe_log_rollout(ro, batch)
        return metrics["train/loss"]

    def rollout_metrics(self, ro: Rollout, kl_per_reply: torch.Tensor, kl_coef: float) -> dict[str, torch.Tensor]:
        m = {
            "objective/scores": ro.scores.mean(),
            "objective/kl": kl_per_reply,
            "objective/non_score_reward": -kl_coef * kl_per_reply,
            "objective/rlhf_reward": ro.scores.mean() - kl_coef * kl_per_reply,
            "objective/entropy": masked_mean(ro.entropy, ro.mask),
            "objective/length": ro.mask.sum(1).float().mean(),
            "objective/eos_rate": (ro.response == self.tokenizer.eos_token_id).any(1).float().mean(),
            "ppo/advantages": masked_mean(ro.advantages, ro.mask),
            "ppo/kl_coef": torch.tensor(kl_coef),
        }
        if ro.returns is not None:
            m["ppo/returns"] = masked_mean(ro.returns, ro.mask)
            m["ppo/values"] = masked_mean(ro.values, ro.mask)
        return {k: v.to(self.device) for k, v in m.items()}

    def maybe_log_rollout(self, ro: Rollout, batch: dict) -> None:
        every = self.hparams.log_rollouts_every_n_steps
        logger = mlflow_logger(self.trainer)
        if not every or logger is None or not self.trainer.is_global_zero or self.trainer.global_step % every:
            return
        k = self.hparams.samples_per_prompt
        tok = self.tokenizer
        replies = [tok.decode(r[: int(m.sum())], skip_special_tokens=True) for r, m in zip(ro.response, ro.mask)]
        prompts = [rec["prompt"][-1]["content"] for rec in batch["records"] for _ in range(k)]
        step = self.trainer.global_step
        table = {"step": [step] * len(replies), "prompt": prompts, "response": replies,
                 "score": [float(s) for s in ro.scores]}
        logger.experiment.log_table(logger.run_id, data=table, artifact_file=f"rollouts/step{step:06d}.json")

    # ---- validation: held-out prompts ------------------------------------------------------------------------------
    @torch.no_grad()
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        sampled = self.hparams.val_do_sample
        replies = self.rollouts.sample(batch, 1, do_sample=sampled)
        seq, response, mask, records = replies
        scores = self.rollouts.score(replies)
        temperature = None if sampled else 1.0  # greedy answers: KL between the models themselves
        logps = self.rollouts.response_logps(seq, response, temperature=temperature)[0]
        with self._reference_context():
            ref = self.rollouts.response_logps(seq, response, temperature=temperature)[0]
        kl = ((logps - ref) * mask).sum(1)
        self.val_scores.update(scores)
        self.val_kl.update(kl)
        if self.hparams.log_val_answers:
            tok = self.tokenizer
            for rec, row, m, score, k in zip(records, response, mask, scores.tolist(), kl.tolist()):
                self._val_rows.append({"prompt": rec["prompt"][-1]["content"], "prompt_key": rec["raw_prompt"],
                                       "response": tok.decode(row[: int(m.sum())], skip_special_tokens=True),
                                       "score": score, "kl": k, "length": int(m.sum())})
        self.val_length.update(mask.sum(1).float())
        self.val_eos.update((response == self.tokenizer.eos_token_id).any(1).float().sum())

    def on_validation_epoch_end(self) -> None:
        scores, kl, length = self.val_scores.compute(), self.val_kl.compute(), self.val_length.compute()
        self.log_dict({"val/scores": scores.mean(), "val/scores_std": scores.std() if scores.numel() > 1 else
                       torch.tensor(0.0), "val/kl": kl.mean(), "val/length": length.mean(),
                       "val/eos_rate": self.val_eos.compute() / max(1, scores.numel())}, prog_bar=True)
        for m in (self.val_scores, self.val_kl, self.val_length, self.val_eos):
            m.reset()
        self.log_val_answers()

    def log_val_answers(self) -> None:
        """Held-out answers with their scores as an MLflow table, ``val_answers/step<N>.json`` (this process's
        prompts; under DDP those of rank 0), so two validations of the same prompts compare prompt by prompt."""
        rows, self._val_rows = self._val_rows, []
        logger = mlflow_logger(self.trainer) if self._trainer is not None else None
        if not rows or logger is None or not self.trainer.is_global_zero or self.trainer.sanity_checking:
            return
        table = {key: [r[key] for r in rows] for key in rows[0]}
        table["step"] = [self.trainer.global_step] * len(rows)
        logger.experiment.log_table(logger.run_id, data=table,
                                    artifact_file=f"val_answers/step{self.trainer.global_step:06d}.json")
