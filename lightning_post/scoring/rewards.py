"""Rewards for RL: a reward model export (sequence classification), or a Python function named in YAML.

A reward function is called once per rollout with keyword arguments and returns one float per reply::

    def my_reward(prompts: list[str], completions: list[str], completion_ids: list[list[int]], **kwargs) -> list[float]

``prompts`` are the requests as text (the last user turn), ``completions`` the decoded replies, ``completion_ids``
their token ids (without padding; EOS included when the reply ended). Name it in YAML as
``reward_fn: my_package.my_module:my_reward`` with extra keyword arguments in ``reward_fn_kwargs``.
"""

from __future__ import annotations

import importlib
from typing import Callable, Optional, Sequence

import torch

from lightning_post.models.loading import resolve_model_path, torch_dtype
from lightning_post.records.tokenize import reply_ids


def load_function(spec: str) -> Callable:
    """``package.module:function`` -> the function, with a clear error when either part is missing."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"reward_fn must look like 'package.module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"reward_fn {spec!r}: cannot import {module_name!r} ({e})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"reward_fn {spec!r}: {module_name} has no function {name!r}")
    return fn


# ---- rule-based rewards -------------------------------------------------------------------------------------------
def token_fraction(completion_ids: list[list[int]], token_ids: Optional[Sequence[int]] = None,
                   below: Optional[int] = None, **_) -> list[float]:
    """Share of each reply's tokens that are in ``token_ids`` (or have an id below ``below``); 0 for an empty reply.

    >>> token_fraction([[1, 2, 3, 4], []], token_ids=[2, 4])
    [0.5, 0.0]
    """
    if (token_ids is None) == (below is None):
        raise ValueError("token_fraction needs exactly one of token_ids or below")
    wanted = set(token_ids or ())
    hit = (lambda t: t < below) if below is not None else (lambda t: t in wanted)
    return [sum(map(hit, ids)) / len(ids) if ids else 0.0 for ids in completion_ids]


def keyword_reward(completions: list[str], keywords: Sequence[str], **_) -> list[float]:
    """1 for each reply that contains any of ``keywords`` (case-insensitive), else 0.

    >>> keyword_reward(["Sorry, I can't.", "Sure!"], keywords=["sorry"])
    [1.0, 0.0]
    """
    lowered = [k.lower() for k in keywords]
    return [float(any(k in c.lower() for k in lowered)) for c in completions]


# ---- reward models ------------------------------------------------------------------------------------------------
class RewardModelScorer:
    """A sequence-classification reward model (e.g. a RewardModule export) that scores ``(prompt, reply)`` texts
    formatted exactly as its preference training data was (``template``), read at the last non-padding token."""

    def __init__(self, path: str, template: str = "chat", dtype: str = "float32", batch_size: int = 8,
                 trust_remote_code: bool = False):
        from transformers import AutoModelForSequenceClassification

        from lightning_post.models.loading import load_tokenizer

        try:
            self.tokenizer = load_tokenizer(path, trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                resolve_model_path(path), dtype=torch_dtype(dtype), num_labels=1, trust_remote_code=trust_remote_code,
            ).eval().requires_grad_(False)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"reward_model {path!r} could not be loaded ({type(e).__name__}: {str(e).splitlines()[0]}). Train one "
                "with: lightning-post fit --config configs/reward/default.yaml --export.dirpath exports/reward"
            ) from None
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.template, self.batch_size = template, batch_size

    @torch.no_grad()
    def score(self, records: list[dict], replies: list[str], device: torch.device,
              progress: bool = False) -> torch.Tensor:
        """Scores ``(N,)`` of replies to normalised prompt records (``{"prompt", "raw_prompt"}``), batched by length
        (less padding), with a progress bar when ``progress``."""
        from tqdm.auto import tqdm

        self.model.to(device)
        rows = [reply_ids(r["prompt"], r["raw_prompt"], reply, self.template, self.tokenizer)
                for r, reply in zip(records, replies)]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        pad = self.model.config.pad_token_id
        out = torch.empty(len(rows))
        for start in tqdm(range(0, len(rows), self.batch_size), desc="reward model", leave=False,
                          disable=not progress or len(rows) <= self.batch_size):
            idx = order[start: start + self.batch_size]
            chunk = [rows[i] for i in idx]
            width = max(map(len, chunk))
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in chunk], device=device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in chunk], device=device)
            out[idx] = self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().cpu()
        return out.to(device)
