"""PPOModule: on-policy RLHF (PPO with a value head and GAE, or critic-free RLOO / GRPO) with a KL penalty against a
reference model, over prompts from :class:`~lightning_post.data.prompts.PromptDataModule`."""

from __future__ import annotations

import inspect
import logging
from typing import Optional, Union

import torch
from torchmetrics import CatMetric, SumMetric

from lightning_post.errors import ConfigError
from lightning_post.losses.grpo import GRPO_LOSSES, SCALE_REWARDS, group_advantages, grpo_loss_settings
from lightning_post.losses.rl import (
    ESTIMATORS, GROUP_ADVANTAGES, KL_ESTIMATORS, adaptive_kl_coef, clipped_policy_loss, clipped_value_loss, gae,
    masked_mean, token_rewards, whiten,
)
from lightning_post.methods.base import unwrap_peft
from lightning_post.methods.collapse import STATISTICS, reply_statistics
from lightning_post.methods.reference import ReferenceModelMixin
from lightning_post.methods.rollout import OnPolicyModule, Rollout
from lightning_post.models.loading import load_causal_lm
from lightning_post.models.peft import apply_peft
from lightning_post.tracking import mlflow_logger

log = logging.getLogger(__name__)


#: GRPO-family losses that average over every reply token of the minibatch; the others average per reply, so a
#: micro-batch's loss weighs by its share of the minibatch's replies instead of its tokens
TOKEN_MEAN_LOSSES = frozenset({"bnpo", "dapo", "cispo", "vespo"})
#: rollouts in a row whose groups dynamic sampling all dropped before the run stops (its rewards never differ)
NO_SIGNAL_PATIENCE = 8


def informative_groups(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``(N,)`` bool: True for the rows of groups of ``k`` replies (rows ``p*k .. p*k+k-1``) whose scores are not all
    equal. An equal group has advantage 0 under every group baseline: DAPO's dynamic sampling (Yu et al. 2025) and
    OpenRLHF's dynamic filtering drop it.

    >>> informative_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5]), 2)
    tensor([False, False,  True,  True, False, False])
    """
    groups = scores.view(-1, k)  # (P, k)
    return (groups.amax(1) != groups.amin(1)).repeat_interleave(k)


def grpo_setting_values(loss_type: str, settings: Optional[dict], max_new_tokens: int) -> dict:
    """The settings ``GRPO_LOSSES[loss_type]`` is called with: ``settings`` (PPOModule's ``loss_settings``), and
    ``max_completion_length`` (``dr_grpo``) the rollout's ``max_new_tokens`` unless given. :class:`ConfigError` for a
    name the loss does not declare (naming the losses that do), a negative ``beta``, and values the loss refuses
    (tried once on a one-token batch, so a wrong ``importance_sampling_level`` stops the run before it starts)."""
    declared = grpo_loss_settings(loss_type)
    for name in settings or {}:
        if name not in declared:
            found = [t for t in sorted(GRPO_LOSSES) if name in grpo_loss_settings(t)]
            also = f" (a setting of {', '.join(found)})" if found else ""
            raise ConfigError(f"model.loss_settings.{name}",
                              f"not a setting of loss_type {loss_type}{also}; it reads {', '.join(declared)}")
    values = dict(settings or {})
    if "max_completion_length" in declared:
        values.setdefault("max_completion_length", max_new_tokens)
    if values.get("beta", 0.0) < 0:
        raise ConfigError("model.loss_settings.beta", f"must be >= 0, got {values['beta']}")
    zero = torch.zeros(1, 1)
    try:
        GRPO_LOSSES[loss_type](zero, zero, zero, zero[:, 0], torch.ones(1, 1), **values)
    except (TypeError, ValueError) as e:
        raise ConfigError("model.loss_settings", f"loss_type {loss_type}: {e}") from None
    return values


class ValueModel(torch.nn.Module):
    """A separate critic: its own decoder (with its own adapters under PEFT) and a scalar head."""

    def __init__(self, decoder: torch.nn.Module, hidden_size: int, dtype: torch.dtype):
        super().__init__()
        self.decoder = decoder
        self.head = torch.nn.Linear(hidden_size, 1, dtype=dtype)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)


class PPOModule(ReferenceModelMixin, OnPolicyModule):
    """RLHF by PPO (Schulman et al. 2017; Ziegler et al. 2019; Ouyang et al. 2022), RLOO or GRPO.

    Each training step takes one batch of prompts and:

    1. rollout: samples ``samples_per_prompt`` replies per prompt (KV cache, ``temperature``, ``top_p``,
       ``max_new_tokens``); each reply ends at its first EOS;
    2. score: the reward model (``reward_model``, e.g. a RewardModule export), ``reward_fn`` or the weighted sum of
       ``reward_funcs`` gives one score per reply; replies without EOS lose ``missing_eos_penalty``;
    3. KL: log-probs of the policy (at sampling time) and of the reference (adapters disabled under LoRA, else a
       frozen copy) give a per-token KL estimate (``kl_estimator``: k1 or k3);
    4. values: a value head on the policy's hidden states (``value_model: shared``) or on a separate critic;
    5. advantages: ``gae`` -- per-token rewards ``-kl_coef * KL`` plus the score on the last token, GAE(``gamma``,
       ``lam``); ``rloo`` / ``grpo`` -- sequence reward ``score - kl_coef * sum KL`` against the other samples of the
       same prompt (with a ``loss_type``: scaled by ``scale_rewards``); whitened over real reply tokens when
       ``whiten_advantages``; with ``drop_equal_groups`` the groups whose scores are all equal are left out;
    6. optimise: ``ppo_epochs`` passes over ``num_minibatches`` shuffled minibatches of the kept rows, each one
       optimizer update of the clipped policy loss (+ ``vf_coef`` x clipped value loss) or of the GRPO-family
       ``loss_type`` (its KL term weighted by ``loss_settings.beta``);
    7. KL control: with ``target_kl`` the coefficient adapts (Ziegler et al. 2019), else it stays fixed.

    Every optimizer update counts as a trainer step: ``max_steps`` = rollouts x ppo_epochs x num_minibatches.
    Validation answers held-out prompts (greedy unless ``val_do_sample``) and logs their mean score and KL. Every
    rollout's reply length, EOS rate and distinct-n are watched by the collapse guard (``collapse_share``).
    """

    supports_sharding = False  # generation on one process / several trained networks: not under FSDP2 yet

    method = "ppo"

    def __init__(
        self,
        *args,
        estimator: str = "gae",
        samples_per_prompt: int = 1,
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
        whiten_advantages: Optional[bool] = None,
        loss_type: Optional[str] = None,
        loss_settings: Optional[dict[str, Union[bool, int, float, str, None]]] = None,
        scale_rewards: str = "group",
        drop_equal_groups: bool = False,
        track_kl: bool = True,
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
            whiten_advantages: normalise advantages to zero mean, unit variance over real reply tokens (``null``:
                yes with PPO's clipped loss, no with a ``loss_type``, whose advantages ``scale_rewards`` scales).
            loss_type: ``null`` (PPO's clipped loss, ``cliprange``) or a GRPO-family loss of
                :data:`~lightning_post.losses.grpo.GRPO_LOSSES` (``grpo``, ``dr_grpo``, ``dapo``, ``bnpo``, ``cispo``,
                ``sapo``, ``luspo``, ``vespo``; TRL's names), with ``estimator: grpo`` or ``rloo``.
            loss_settings: the loss's settings by the names in its signature (``epsilon_low``, ``epsilon_high``,
                ``importance_sampling_level``, ``beta``, ``kl_estimator``, ...; ``max_completion_length`` defaults to
                ``max_new_tokens``); ``beta > 0`` puts the KL in the loss and needs ``kl_coef: 0``.
            scale_rewards: with a ``loss_type``, what a reply's reward minus its group mean is divided by: ``group``
                (the group's std), ``batch`` (the rollout's std) or ``none`` (Dr. GRPO).
            drop_equal_groups: dynamic sampling (DAPO): leave the groups whose scores are all equal out of the update
                (no resampling); the share dropped is logged as ``train/groups/dropped_share``.
            track_kl: log ``objective/kl``, the rollouts' drift from the reference, also when no KL term needs the
                reference (``kl_coef`` 0, ``target_kl`` null, no in-loss ``beta``). ``false`` skips the reference's
                forward pass then, and when each rollout makes one on-policy update (``ppo_epochs`` 1,
                ``num_minibatches`` 1, no critic) the sampling-time forward too: the update's own log-probs,
                detached, are the old ones (as TRL does), and ``objective/entropy`` is that of the replies trained on.
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
        if kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator {kl_estimator!r} is unknown; choose from {list(KL_ESTIMATORS)}")
        if value_model not in ("shared", "separate"):
            raise ValueError(f"value_model must be 'shared' or 'separate', got {value_model!r}")
        self.loss_values = self.check_loss_choice()  # the GRPO-family loss's settings (None: PPO's clipped loss)
        self.no_signal = 0  # rollouts in a row without a group to train on
        self.kl_value = kl_coef
        self.value_head: Optional[torch.nn.Module] = None
        self.critic: Optional[ValueModel] = None
        # sampling, scoring and reply log-probs (steps 1-3) are the rollout part's (``self.rollouts``, from
        # OnPolicyModule), shared with other on-policy methods
        self.val_scores, self.val_kl, self.val_length = CatMetric(), CatMetric(), CatMetric()
        self.val_eos = SumMetric()
        self.val_rewards = CatMetric()  # (n, reward functions + 1): each function's scores and the total
        self._val_rows: list[dict] = []

    def setting_rules(self) -> list[tuple[str, bool, str]]:
        hp = self.hparams
        return [*super().setting_rules(), ("samples_per_prompt", hp.samples_per_prompt >= 1, ">= 1"),
                ("kl_coef", hp.kl_coef >= 0, ">= 0"),
                ("target_kl", hp.target_kl is None or hp.target_kl > 0, "> 0 or null"),
                ("kl_horizon", hp.kl_horizon >= 1, ">= 1"), ("gamma", 0 <= hp.gamma <= 1, "in [0, 1]"),
                ("lam", 0 <= hp.lam <= 1, "in [0, 1]"), ("cliprange", hp.cliprange > 0, "> 0"),
                ("cliprange_value", hp.cliprange_value > 0, "> 0"), ("vf_coef", hp.vf_coef >= 0, ">= 0"),
                ("ppo_epochs", hp.ppo_epochs >= 1, ">= 1"), ("num_minibatches", hp.num_minibatches >= 1, ">= 1"),
                ("log_rollouts_every_n_steps", hp.log_rollouts_every_n_steps >= 0, ">= 0 (0 = off)"),
                ("scale_rewards", hp.scale_rewards in SCALE_REWARDS, " or ".join(SCALE_REWARDS))]

    def check_loss_choice(self) -> Optional[dict]:
        """Refuse knobs that the chosen loss does not read; the settings a GRPO-family ``loss_type`` is called with
        (None for PPO's clipped loss)."""
        hp = self.hparams
        if hp.drop_equal_groups and hp.estimator not in GROUP_ADVANTAGES:
            raise ConfigError("model.drop_equal_groups", f"drops groups of replies to a prompt: it needs estimator "
                              f"{' or '.join(GROUP_ADVANTAGES)}, got {hp.estimator}")
        default = {name: p.default for name, p in inspect.signature(PPOModule.__init__).parameters.items()}
        if hp.loss_type is None:
            for name in ("loss_settings", "scale_rewards"):
                if (value := hp[name]) != default[name]:
                    raise ConfigError(f"model.{name}", f"{value} is read only with a loss_type "
                                      f"(one of {', '.join(GRPO_LOSSES)})")
            return None
        if hp.loss_type not in GRPO_LOSSES:
            raise ConfigError("model.loss_type", f"{hp.loss_type!r} is unknown; choose from {', '.join(GRPO_LOSSES)} "
                              "or null (PPO's clipped loss)")
        if hp.estimator not in GROUP_ADVANTAGES:
            raise ConfigError("model.loss_type", f"{hp.loss_type} needs group advantages: estimator "
                              f"{' or '.join(GROUP_ADVANTAGES)}, got {hp.estimator}")
        if hp.cliprange != default["cliprange"]:
            raise ConfigError("model.cliprange", f"not read by loss_type {hp.loss_type}: its clip range is "
                              "loss_settings.epsilon_low / epsilon_high")
        values = grpo_setting_values(hp.loss_type, hp.loss_settings, hp.max_new_tokens)
        beta = values.get("beta", 0.0)
        if beta and hp.kl_coef:
            raise ConfigError("model.kl_coef", f"{hp.kl_coef} puts the KL in the reward and loss_settings.beta = "
                              f"{beta} puts it in the loss: set one of them to 0")
        if beta and hp.target_kl is not None:
            raise ConfigError("model.target_kl", "adapts kl_coef (the KL reward penalty), while loss_settings.beta "
                              "puts a fixed KL weight in the loss: set target_kl: null")
        return values

    def check_strategy(self) -> None:
        super().check_strategy()
        if self.hparams.drop_equal_groups and self._trainer is not None and self._trainer.world_size > 1:
            raise ConfigError("model.drop_equal_groups", "runs on one process only: processes that keep different "
                              "numbers of groups would make different numbers of updates")

    @property
    def uses_critic(self) -> bool:
        return self.hparams.estimator == "gae"

    @property
    def needs_kl(self) -> bool:
        """Whether the training itself reads the reference's log-probs (a KL reward penalty or an in-loss KL)."""
        hp = self.hparams
        return bool(hp.kl_coef or hp.target_kl is not None or (self.loss_values or {}).get("beta", 0.0))

    @property
    def lean_rollout(self) -> bool:
        """Rollouts that only sample and score: no KL is needed or tracked, and each rollout makes one on-policy
        update without a critic, so the update's own log-probs (detached) are the old ones."""
        hp = self.hparams
        return (not hp.track_kl and not self.needs_kl and not self.uses_critic and hp.ppo_epochs == 1
                and hp.num_minibatches == 1)

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

    # ---- checkpoints: the adaptive KL coefficient and the collapse guard's start continue where they were --------
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

    # ---- steps 1-5: experience -----------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, batch: dict) -> Rollout:
        hp = self.hparams
        k = hp.samples_per_prompt
        # step 1: rollout
        replies = self.rollouts.sample(batch, k, do_sample=True)
        seq, response, mask = replies.seq, replies.response, replies.mask
        # step 2: score (the reward model, reward_fn or reward_funcs; less missing_eos_penalty)
        scores = self.judge(replies)
        reward_parts = self.reward_parts if self.rewards is not None else {}
        # steps 3-4: log-probs of policy and reference, values (none of them in a lean rollout)
        R = response.shape[1]
        logps, ref_logps, entropy, values = [], [], [], []
        track = hp.track_kl or self.needs_kl
        for idx in [] if self.lean_rollout else self._chunks(response.shape[0]):
            part = {key: v[idx] for key, v in seq.items()}
            lp, ent, hidden = self.rollouts.response_logps(part, response[idx], need_entropy=True)
            logps.append(lp)
            entropy.append(ent)
            if self.uses_critic:
                values.append(self.values_of(part, hidden, R))
            if track:
                with self._reference_context():
                    ref_logps.append(self.rollouts.response_logps(part, response[idx])[0])
        logps, entropy = (torch.cat(logps), torch.cat(entropy)) if logps else (None, None)
        ref_logps = torch.cat(ref_logps) if ref_logps else None
        no_kl = torch.zeros_like(mask, dtype=torch.float)
        kl = KL_ESTIMATORS[hp.kl_estimator](logps, ref_logps) * mask if track else no_kl  # (N, R)
        # step 5: advantages (of the kept groups alone with dynamic sampling)
        kept = informative_groups(scores, k) if hp.drop_equal_groups else torch.ones_like(scores, dtype=torch.bool)
        if self.uses_critic:
            values = torch.cat(values) * mask
            rewards = token_rewards(scores, kl, mask, self.kl_value)
            advantages, returns = gae(rewards, values, mask, hp.gamma, hp.lam)
        else:
            values = returns = None
            sequence_reward = scores - self.kl_value * kl.sum(1)  # (N,)
            advantages = torch.zeros_like(sequence_reward)
            advantages[kept] = self.sequence_advantages(sequence_reward[kept])
            advantages = advantages[:, None] * mask  # (N, R)
        whitened = hp.loss_type is None if hp.whiten_advantages is None else hp.whiten_advantages
        if whitened:
            advantages = whiten(advantages, mask * kept[:, None])
        return Rollout(seq, response, mask, logps, ref_logps, values, advantages, returns, scores, entropy, kl,
                       reward_parts, kept)

    def sequence_advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """Advantages ``(n,)`` of sequence rewards ``(n,)`` in groups of ``samples_per_prompt``: the estimator's
        (:data:`GROUP_ADVANTAGES`) with PPO's loss; with a ``loss_type``, the reward minus its group mean scaled by
        ``scale_rewards`` (:func:`group_advantages`), times ``k / (k - 1)`` for ``rloo``, whose leave-one-out
        baseline gives ``s - (sum - s) / (k - 1) = k / (k - 1) (s - mean)``."""
        hp = self.hparams
        k = hp.samples_per_prompt
        if hp.loss_type is None:
            return GROUP_ADVANTAGES[hp.estimator](rewards, k)
        advantages = group_advantages(rewards, k, hp.scale_rewards)
        return advantages * (k / (k - 1)) if hp.estimator == "rloo" else advantages

    # ---- step 6: optimise ----------------------------------------------------------------------------------------
    def minibatch_update(self, ro: Rollout, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimizer update on the rollout rows ``rows``; losses are token means over the minibatch."""
        hp = self.hparams
        opt, sched = self.optimizers(), self.lr_schedulers()
        tokens = ro.mask[rows].sum().clamp(min=1)
        per_token = hp.loss_type is None or hp.loss_type in TOKEN_MEAN_LOSSES
        micro = list(rows.split(hp.micro_batch_size or len(rows)))
        stats: dict[str, torch.Tensor] = {}
        for j, idx in enumerate(micro):
            part = {key: v[idx] for key, v in ro.seq.items()}
            mask = ro.mask[idx]
            # this micro-batch's share of the minibatch: of its tokens, or of its replies for the losses that
            # average per reply, so the shares add up to the minibatch's loss
            share = mask.sum() / tokens if per_token else torch.tensor(len(idx) / len(rows), device=self.device)
            with self._sync_context(last=j == len(micro) - 1):
                lean = ro.logps is None  # a lean rollout: this forward's log-probs, detached, are the old ones
                logps, entropy, hidden = self.rollouts.response_logps(part, ro.response[idx], need_entropy=lean)
                loss, parts = self.policy_loss(logps, ro, idx)
                if lean:
                    parts["objective/entropy"] = masked_mean(entropy, mask)
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

    def policy_loss(self, logps: torch.Tensor, ro: Rollout, idx: torch.Tensor
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The policy loss of the rollout rows ``idx`` whose log-probs under the current policy are ``logps``
        ``(n, R)``, and its statistics: PPO's clipped loss, or the ``loss_type`` of the GRPO family against the
        log-probs at sampling time (``old_logps``) and the reference's, with the clip ratios and in-loss KL TRL logs."""
        hp = self.hparams
        mask = ro.mask[idx]
        old = logps.detach() if ro.logps is None else ro.logps[idx]  # a lean rollout: on-policy by construction
        if hp.loss_type is None:
            loss, stats = clipped_policy_loss(logps, old, ro.advantages[idx], mask, hp.cliprange)
            return loss, {"policy_loss": loss, **stats}
        advantages = ro.advantages[idx][:, 0]  # (n,) one per reply, equal over its tokens (the first is never padding)
        ref = old if ro.ref_logps is None else ro.ref_logps[idx]  # no reference: no in-loss KL (beta 0) reads it
        out = GRPO_LOSSES[hp.loss_type](logps, old, ref, advantages, mask, **self.loss_values)
        return out.loss, {"policy_loss": out.loss, "train/clip_ratio/low": out.clip_low,
                          "train/clip_ratio/high": out.clip_high, "train/kl": out.kl, "ppo/loss_weight": out.weight}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        strategy = self.trainer.strategy
        ro = self.rollout(batch)  # steps 1-5
        # step 6: ppo_epochs x num_minibatches updates over shuffled rows (of the kept groups; none: no update)
        n = ro.response.shape[0]
        kept = ro.kept.nonzero()[:, 0]  # (n_kept,)
        updates = []
        for _ in range(hp.ppo_epochs if len(kept) else 0):
            order = kept[torch.randperm(len(kept), device=self.device)]
            for rows in order.chunk(hp.num_minibatches):
                updates.append(self.minibatch_update(ro, rows))
        # step 7: adapt the KL coefficient to the rollout's KL per reply (over every device)
        kl_per_reply = strategy.reduce(ro.kl.sum(1).mean(), reduce_op="mean")
        kl_coef_used = self.kl_value
        if hp.target_kl is not None:
            self.kl_value = adaptive_kl_coef(self.kl_value, float(kl_per_reply), hp.target_kl, hp.kl_horizon,
                                             n * self.trainer.world_size)
        metrics = self.rollout_metrics(ro, kl_per_reply, kl_coef_used)
        for name in updates[0] if updates else ():
            metric = name if "/" in name else f"train/{name}" if name in ("loss", "grad_norm") else f"ppo/{name}"
            metrics[metric] = torch.stack([u[name] for u in updates]).mean()
        metrics = {k: strategy.reduce(v.float(), reduce_op="mean") for k, v in metrics.items()}
        metrics["train/lr"] = torch.tensor(self.lr_schedulers().get_last_lr()[0])
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=n)
        if updates:
            self.log("loss", metrics["train/loss"], prog_bar=True, logger=False, on_step=True, on_epoch=False)
        self.log("score", metrics["objective/scores"], prog_bar=True, logger=False, on_step=True, on_epoch=False)
        self.maybe_log_rollout(ro, batch)
        self.watch_collapse({name: float(metrics[f"objective/{name}"]) for name in STATISTICS})
        self.watch_signal(bool(updates))
        return metrics.get("train/loss")

    def watch_signal(self, updated: bool) -> None:
        """Dynamic sampling left no group to train on: one warning line (the step made no update, so it does not
        count toward ``max_steps``); after :data:`NO_SIGNAL_PATIENCE` such rollouts in a row the run stops, as
        rewards that never differ within a group would otherwise keep it sampling forever."""
        self.no_signal = 0 if updated else self.no_signal + 1
        if updated:
            return
        log.warning(f"rollout after step {self.trainer.global_step}: every group's rewards were equal; no update "
                    f"({self.no_signal} in a row)")
        if self.no_signal >= NO_SIGNAL_PATIENCE:
            log.warning(f"{NO_SIGNAL_PATIENCE} rollouts in a row without a group to train on: stopping the run")
            self.trainer.should_stop = True

    def rollout_metrics(self, ro: Rollout, kl_per_reply: torch.Tensor, kl_coef: float) -> dict[str, torch.Tensor]:
        ids, texts = self.rollouts.decode(ro)
        replies = reply_statistics(ids, texts, self.tokenizer.eos_token_id)
        m = {
            "objective/scores": ro.scores.mean(),
            "objective/kl": kl_per_reply,
            "objective/non_score_reward": -kl_coef * kl_per_reply,
            "objective/rlhf_reward": ro.scores.mean() - kl_coef * kl_per_reply,
            **{f"objective/{name}": torch.tensor(value) for name, value in replies.items()},
            **{f"train/rewards/{label}": v.mean() for label, v in ro.reward_parts.items()},
            "ppo/advantages": masked_mean(ro.advantages, ro.mask),
            "ppo/kl_coef": torch.tensor(kl_coef),
        }
        if ro.ref_logps is None:  # no KL tracked (track_kl: false): no drift to show
            for key in ("objective/kl", "objective/non_score_reward"):
                del m[key]
        if ro.entropy is not None:  # a lean rollout's entropy is the update's (of the replies trained on)
            m["objective/entropy"] = masked_mean(ro.entropy, ro.mask)
        if self.hparams.drop_equal_groups:  # rows share = groups share: every group has samples_per_prompt rows
            m["train/groups/dropped_share"] = 1 - ro.kept.float().mean()
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
                 "score": [float(s) for s in ro.scores],
                 **{f"reward/{label}": v.tolist() for label, v in ro.reward_parts.items()}}
        logger.experiment.log_table(logger.run_id, data=table, artifact_file=f"rollouts/step{step:06d}.json")

    # ---- validation: held-out prompts ------------------------------------------------------------------------------
    @torch.no_grad()
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        sampled = self.hparams.val_do_sample
        replies = self.rollouts.sample(batch, 1, do_sample=sampled)
        seq, response, mask, records = replies
        scores = self.rollouts.score(replies)
        if self.rewards is not None:
            self.val_rewards.update(torch.stack(list(self.reward_parts.values()), 1))
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
        if self.rewards is not None:
            parts = self.val_rewards.compute().reshape(-1, len(self.rewards.labels) + 1).mean(0)
            self.log_dict({f"val/rewards/{label}": v for label, v in zip([*self.rewards.labels, "total"], parts)})
        for m in (self.val_scores, self.val_kl, self.val_length, self.val_eos, self.val_rewards):
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
