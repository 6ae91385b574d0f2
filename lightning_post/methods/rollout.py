"""On-policy experience as one part: sample replies to a batch of prompts, score them, and the log-probabilities of
the reply tokens under the policy (or, inside the reference context, under the reference).

:class:`PPOModule` (PPO, RLOO, GRPO) builds its rollouts from it; an Online DPO method would use the same calls:
``sample(batch, 2, do_sample=True)``, ``score(replies)``, keep the better reply of each prompt as chosen.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F

from lightning_post.losses.rl import entropy_from_logits
from lightning_post.methods.base import PostTrainingModule
from lightning_post.methods.collapse import STATISTICS, CollapseGuard
from lightning_post.scoring.rewards import RewardFunc, RewardModelScorer, WeightedRewards, load_function
from lightning_post.tracking import mlflow_logger, set_tags

#: ``(prompt records, reply texts, reply token ids) -> scores``, one per reply
ScoreFn = Callable[[list[dict], list[str], list[list[int]]], torch.Tensor]


class Replies(NamedTuple):
    """Replies sampled for a batch of prompts; ``N`` = prompts x samples per prompt, ``P`` prompt width, ``R`` reply
    width."""

    seq: dict  # input_ids / attention_mask / position_ids / segment_ids, each (N, P + R): prompt then reply
    response: torch.Tensor  # (N, R) reply tokens, padding after EOS
    mask: torch.Tensor  # (N, R) 1 on reply tokens up to and including EOS
    records: list[dict]  # N prompt records, each repeated for its samples


log = logging.getLogger(__name__)

class Rollout(NamedTuple):
    """One batch of experience of PPO, RLOO or GRPO: :class:`Replies` with their scores, log-probs, KL and
    advantages; ``N`` = prompts x samples per prompt, ``P`` prompt width, ``R`` reply width."""

    seq: dict  # input_ids / attention_mask / position_ids / segment_ids, each (N, P + R)
    response: torch.Tensor  # (N, R) reply tokens, padding after EOS
    mask: torch.Tensor  # (N, R) 1 on reply tokens up to and including EOS
    logps: Optional[torch.Tensor]  # (N, R) policy log-probs at sampling time (None: a lean rollout, see PPOModule)
    ref_logps: Optional[torch.Tensor]  # (N, R) (None: no KL needed or tracked)
    values: Optional[torch.Tensor]  # (N, R) value estimates (None without a critic)
    advantages: torch.Tensor  # (N, R)
    returns: Optional[torch.Tensor]  # (N, R) value targets (None without a critic)
    scores: torch.Tensor  # (N,) reward model / function scores (after the missing-EOS penalty)
    entropy: Optional[torch.Tensor]  # (N, R) (None: a lean rollout)
    kl: torch.Tensor  # (N, R) per-token KL estimate, 0 on padding
    reward_parts: dict[str, torch.Tensor]  # label -> (N,): each of reward_funcs' scores and their "total" (or empty)
    kept: torch.Tensor  # (N,) bool: rows the update trains on (False: a group dropped by dynamic sampling)


@dataclasses.dataclass
class Sampling:
    """How replies are sampled (and at which temperature their log-probs are taken)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0


class RolloutEngine:
    """Sampling, scoring and reply log-probs for an on-policy method.

    ``policy`` is the method's :class:`~lightning_post.methods.base.PostTrainingModule` (its ``model``,
    ``tokenizer``, ``forward_hidden`` and ``lm_head``: padding-free attention and PEFT as in training); ``score_fn``
    scores decoded replies (a reward model or a reward function).
    """

    def __init__(self, policy, score_fn: ScoreFn, sampling: Sampling):
        self.policy, self.score_fn, self.sampling = policy, score_fn, sampling

    @torch.no_grad()
    def sample(self, batch: dict, k: int, do_sample: bool) -> Replies:
        """``k`` replies to each prompt of a left-padded prompt batch (greedy unless ``do_sample``); each reply ends
        at its first EOS."""
        policy, tok, s = self.policy, self.policy.tokenizer, self.sampling
        prompts = batch["input_ids"].repeat_interleave(k, 0)  # (N, P)
        prompt_mask = batch["attention_mask"].repeat_interleave(k, 0)  # (N, P)
        records = [r for r in batch["records"] for _ in range(k)]
        was_training = policy.model.training
        policy.model.eval()
        kwargs = {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p, "top_k": 0} if do_sample \
            else {"do_sample": False}
        out = policy.model.generate(input_ids=prompts, attention_mask=prompt_mask, max_new_tokens=s.max_new_tokens,
                                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, use_cache=True,
                                    **kwargs)  # KV cache even when gradient checkpointing turned it off for training
        policy.model.train(was_training)
        response = out[:, prompts.shape[1]:]  # (N, R)
        R = response.shape[1]
        is_eos = response == tok.eos_token_id
        first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full_like(is_eos[:, 0], R, dtype=torch.long))
        mask = (torch.arange(R, device=response.device)[None] <= first_eos[:, None]).long()  # (N, R)
        response = response.masked_fill(mask == 0, tok.pad_token_id)
        attention = torch.cat([prompt_mask, mask], 1)  # (N, P + R)
        seq = {"input_ids": torch.cat([prompts, response], 1), "attention_mask": attention,
               "position_ids": (attention.cumsum(1) - 1).clamp(min=0), "segment_ids": attention}
        return Replies(seq, response, mask, records)

    def decode(self, replies: Replies) -> tuple[list[list[int]], list[str]]:
        """Each reply's tokens (up to and including EOS) and its text (special tokens dropped)."""
        ids = [row[: int(m.sum())].tolist() for row, m in zip(replies.response, replies.mask)]
        return ids, [self.policy.tokenizer.decode(i, skip_special_tokens=True).strip() for i in ids]

    @torch.no_grad()
    def score(self, replies: Replies) -> torch.Tensor:
        """Scores ``(N,)`` of the replies, float32 on the policy's device, before any penalty."""
        ids, texts = self.decode(replies)
        scores = self.score_fn(replies.records, texts, ids)
        return torch.as_tensor(scores, dtype=torch.float32, device=self.policy.device)

    def response_logps(self, seq: dict, response: torch.Tensor, need_entropy: bool = False,
                       temperature: Optional[float] = None):
        """Log-probs ``(n, R)`` of the reply tokens, their entropies (or None) and the hidden states ``(n, R, H)``
        that predicted them (position ``t`` predicts token ``t + 1``). Logits are divided by ``temperature`` (the
        sampling temperature unless given), so the log-probs are those of the distribution the replies came from."""
        R = response.shape[1]
        hidden = self.policy.forward_hidden(seq)[:, -R - 1:-1]  # (n, R, H)
        logits = self.policy.lm_head()(hidden).float() / (temperature or self.sampling.temperature)  # (n, R, V)
        logps = -F.cross_entropy(logits.flatten(0, 1), response.flatten(), reduction="none").view_as(response)
        return logps, entropy_from_logits(logits.detach()) if need_entropy else None, hidden  # a statistic: no graph


# ---- the settings every on-policy method shares: how replies are sampled and what judges them ----------------------
def _is_folder_path(path: str) -> bool:
    """A folder path rather than a hub id (``org/name``)."""
    return path.startswith((".", "/", "~")) or path.count("/") >= 2


class OnPolicyModule(PostTrainingModule):
    """Base of a method that samples replies to prompts and judges them (Online DPO; PPO can switch to it): the
    sampling and judging settings, declared once, the judge (``score_texts``, a :data:`ScoreFn`) and
    ``self.rollouts``, a :class:`RolloutEngine` over them. A subclass forwards ``*args, **kwargs`` here."""

    #: judges a subclass declares besides ``reward_model``, ``reward_fn`` and ``reward_funcs``: ``(setting, what it
    #: takes)``; exactly one of them all must be given
    extra_judges: tuple[tuple[str, str], ...] = ()

    def __init__(
        self,
        *args,
        reward_model: Optional[str] = None,
        reward_template: str = "chat",
        reward_fn: Optional[str] = None,
        reward_fn_kwargs: Optional[dict] = None,
        reward_funcs: Optional[list[RewardFunc]] = None,
        missing_eos_penalty: Optional[float] = None,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        collapse_share: Optional[float] = 0.5,
        collapse_action: str = "warn",
        collapse_window: int = 4,
        collapse_stats: tuple[str, ...] = STATISTICS,
        **kwargs,
    ):
        """
        Args:
            reward_model: folder of a sequence-classification reward model (e.g. a RewardModule ``export/model``).
            reward_template: template the reward model was trained with (how a prompt and reply are formatted).
            reward_fn: instead of a reward model, a Python function ``package.module:function`` (see
                :mod:`lightning_post.scoring.rewards`).
            reward_fn_kwargs: extra keyword arguments for ``reward_fn``.
            reward_funcs: instead of ``reward_model`` or ``reward_fn``, a list of reward functions with weights
                (``{name, weight, kwargs, label}``: a registered name such as ``exact_answer``, ``format``,
                ``length_penalty`` or ``reward_model``, or ``package.module:function``); the score is their weighted
                sum.
            missing_eos_penalty: subtracted from the score of replies that hit ``max_new_tokens`` without EOS.
            max_new_tokens: longest sampled reply.
            temperature: sampling temperature.
            top_p: nucleus sampling threshold (1 = off).
            collapse_share: warn when a reply statistic of the rollouts (``collapse_stats``) falls below this share
                of its start (``null`` = off; the statistics are logged either way).
            collapse_action: ``warn`` (a warning and the MLflow tag ``collapse_guard``) or ``stop`` (also stops the
                run cleanly after the rollout).
            collapse_window: the start is the mean of the first N rollouts, compared with the mean of the last N.
            collapse_stats: the statistics watched: ``length`` (tokens), ``eos_rate``, ``distinct_1``,
                ``distinct_2``.
        """
        super().__init__(*args, **kwargs)
        judges = [("reward_model", "a folder"), ("reward_fn", "'package.module:function'"),
                  ("reward_funcs", "a list of reward functions with weights"), *self.extra_judges]
        if sum(self.hparams.get(name) is not None for name, _ in judges) != 1:  # hparams: every init argument
            named = [f"{name} ({what})" for name, what in judges]
            raise ValueError(f"give exactly one of {', '.join(named[:-1])} or {named[-1]}")
        if reward_model is not None and _is_folder_path(reward_model) and not Path(reward_model).expanduser().exists():
            raise ValueError(f"reward_model folder {reward_model!r} does not exist. Train one with: lightning-post fit "
                             "--config configs/reward/default.yaml --export.dirpath exports/reward")
        self.reward_function = load_function(reward_fn) if reward_fn is not None else None
        self.rewards = WeightedRewards(reward_funcs) if reward_funcs is not None else None
        if self.rewards is not None:  # plain dicts in hparams, so checkpoints load with weights_only=True
            self.hparams["reward_funcs"] = [dataclasses.asdict(e) for e in self.rewards.entries]
        self.reward_parts: dict[str, torch.Tensor] = {}  # each reward function's scores of the latest replies
        self._scorer: Optional[RewardModelScorer] = None
        self.rollouts = RolloutEngine(self, self.score_texts, Sampling(max_new_tokens, temperature, top_p))
        self.collapse = CollapseGuard(collapse_share, collapse_window, collapse_stats) if collapse_share else None

    def setting_rules(self) -> list[tuple[str, bool, str]]:
        hp = self.hparams
        return [*super().setting_rules(), ("max_new_tokens", hp.max_new_tokens >= 1, ">= 1"),
                ("temperature", hp.temperature > 0, "> 0"), ("top_p", 0 < hp.top_p <= 1, "in (0, 1]"),
                ("collapse_share", hp.collapse_share is None or hp.collapse_share > 0, "> 0 or null (off)"),
                ("collapse_action", hp.collapse_action in ("warn", "stop"), "warn or stop"),
                ("collapse_window", hp.collapse_window >= 1, ">= 1"),
                ("collapse_stats", bool(hp.collapse_stats) and set(hp.collapse_stats) <= set(STATISTICS),
                 f"a non-empty list of {', '.join(STATISTICS)}")]

    # ---- the collapse guard: its start continues in checkpoints ----------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.collapse is not None:
            checkpoint["collapse_guard"] = self.collapse.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.collapse is not None and "collapse_guard" in checkpoint:
            self.collapse.load_state_dict(checkpoint["collapse_guard"])

    def watch_collapse(self, stats: dict[str, float]) -> None:
        """The collapse guard on this rollout's reply statistics (means over the processes, so every rank decides
        alike): one warning line, also the MLflow tag ``collapse_guard``, when statistics have just collapsed; with
        ``collapse_action: stop`` the run stops after this step."""
        reasons = self.collapse.update(stats) if self.collapse is not None else []
        if not reasons:
            return
        stop = self.hparams.collapse_action == "stop"
        line = (f"collapse guard at step {self.trainer.global_step}: " + "; ".join(reasons)
                + ("; stopping the run" if stop else ""))
        log.warning(line)
        logger = mlflow_logger(self.trainer)
        if logger is not None and self.trainer.is_global_zero:
            set_tags(logger, {"collapse_guard": line})
        if stop:
            self.trainer.should_stop = True

    def configure_model(self) -> None:
        if self.model is not None:
            return
        super().configure_model()
        hp = self.hparams
        if hp.reward_model is not None:
            self._scorer = RewardModelScorer(hp.reward_model, hp.reward_template, hp.dtype,
                                             hp.micro_batch_size or 8, hp.trust_remote_code)
        if self.rewards is not None:
            self.rewards.load_models(hp.dtype, hp.micro_batch_size or 8, hp.trust_remote_code)

    def score_texts(self, records: list[dict], texts: list[str], ids: list[list[int]]) -> torch.Tensor:
        """Scores of decoded replies by the reward model, the reward function or the weighted ``reward_funcs``
        (``self.rollouts.score`` calls this); with ``reward_funcs``, each function's scores and the total are kept in
        ``reward_parts``."""
        if self._scorer is not None:
            return self._scorer.score(records, texts, self.device)
        if self.rewards is not None:
            scored = self.rewards(records, texts, ids, self.device)
            self.reward_parts = {**scored.parts, "total": scored.total}
            return scored.total
        requests = [r["prompt"][-1]["content"] for r in records]
        return self.reward_function(prompts=requests, completions=texts, completion_ids=ids,
                                    **(self.hparams.reward_fn_kwargs or {}))

    def judge(self, replies: Replies) -> torch.Tensor:
        """Scores ``(N,)`` of sampled replies, less ``missing_eos_penalty`` for those that ended without EOS."""
        scores = self.rollouts.score(replies)
        penalty = self.hparams.missing_eos_penalty
        if penalty is not None:
            has_eos = (replies.response == self.tokenizer.eos_token_id).any(1)
            scores = scores - penalty * (~has_eos).float()
        return scores
