"""On-policy experience as one part: sample replies to a batch of prompts, score them, and the log-probabilities of
the reply tokens under the policy (or, inside the reference context, under the reference).

:class:`PPOModule` (PPO, RLOO, GRPO) builds its rollouts from it; an Online DPO method would use the same calls:
``sample(batch, 2, do_sample=True)``, ``score(replies)``, keep the better reply of each prompt as chosen.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F

from lightning_post.losses.rl import entropy_from_logits

#: ``(prompt records, reply texts, reply token ids) -> scores``, one per reply
ScoreFn = Callable[[list[dict], list[str], list[list[int]]], torch.Tensor]


class Replies(NamedTuple):
    """Replies sampled for a batch of prompts; ``N`` = prompts x samples per prompt, ``P`` prompt width, ``R`` reply
    width."""

    seq: dict  # input_ids / attention_mask / position_ids / segment_ids, each (N, P + R): prompt then reply
    response: torch.Tensor  # (N, R) reply tokens, padding after EOS
    mask: torch.Tensor  # (N, R) 1 on reply tokens up to and including EOS
    records: list[dict]  # N prompt records, each repeated for its samples


class Rollout(NamedTuple):
    """One batch of experience of PPO, RLOO or GRPO: :class:`Replies` with their scores, log-probs, KL and
    advantages; ``N`` = prompts x samples per prompt, ``P`` prompt width, ``R`` reply width."""

    seq: dict  # input_ids / attention_mask / position_ids / segment_ids, each (N, P + R)
    response: torch.Tensor  # (N, R) reply tokens, padding after EOS
    mask: torch.Tensor  # (N, R) 1 on reply tokens up to and including EOS
    logps: torch.Tensor  # (N, R) policy log-probs at sampling time
    ref_logps: torch.Tensor  # (N, R)
    values: Optional[torch.Tensor]  # (N, R) value estimates (None without a critic)
    advantages: torch.Tensor  # (N, R)
    returns: Optional[torch.Tensor]  # (N, R) value targets (None without a critic)
    scores: torch.Tensor  # (N,) reward model / function scores (after the missing-EOS penalty)
    entropy: torch.Tensor  # (N, R)
    kl: torch.Tensor  # (N, R) per-token KL estimate, 0 on padding


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
        return logps, entropy_from_logits(logits) if need_entropy else None, hidden
