"""Prompt-only data for RL (PPO, RLOO, GRPO): the policy writes the replies itself.

Records may be ``{"prompt": str | chat messages}``, a conversation ``{"messages": [...]}`` (turns after the last user
turn are dropped), an instruction ``{"instruction", "input"}``, or any preference layout (its prompt is used), so the
prompts of a preference dataset serve directly. Prompts are formatted by the same templates as SFT and DPO, so the
policy sees exactly the text it was trained on, and left-padded for batched generation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch

from lightning_post.errors import UserError
from lightning_post.data.base import PostDataModule, Rows, hold_out
from lightning_post.data.safety import SafetyFilter
from lightning_post.data.instruction import Files, _as_list
from lightning_post.data.pairs import _messages, _render, normalize_preference_record, reply_segments, split_prompt_reply
from lightning_post.data.preference import default_preference_file
from lightning_post.data.records import DataError, raw_records
from lightning_post.data.templates import check_template
from lightning_post.data.tokenize import encode_prompt, tokenize_segments
from lightning_post.models.loading import DEFAULT_MODEL

log = logging.getLogger(__name__)


def normalize_prompt_record(record: Any, where: str) -> dict[str, Any]:
    """``{"prompt": messages ending with a user turn, "raw_prompt": HH-RLHF-style text}`` of one record.

    >>> normalize_prompt_record({"instruction": "Add", "input": "2 + 2"}, "f:1")["prompt"]
    [{'role': 'user', 'content': 'Add\\n\\n2 + 2'}]
    """
    if not isinstance(record, dict):
        raise DataError(where, None, f"a record must be a JSON object, got {type(record).__name__}")
    record = {k: v for k, v in record.items() if v is not None}  # a file mixing layouts: absent fields load as None
    if "chosen" in record or "rejected" in record:
        pair = normalize_preference_record(record, where)
        return {"prompt": pair["prompt"], "raw_prompt": pair["raw_prompt"]}
    if "messages" in record:
        messages = _messages(record["messages"], where, "messages")
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not users:
            raise DataError(where, "messages", "has no user turn to answer")
        messages = messages[: users[-1] + 1]
    elif isinstance(record.get("prompt"), list):
        messages = _messages(record["prompt"], where, "prompt")
        if messages[-1]["role"] != "user":
            raise DataError(where, f"prompt[{len(messages) - 1}].role", "the prompt must end with a user turn")
    else:
        field = "prompt" if "prompt" in record else "instruction"
        text = record.get(field)
        if not isinstance(text, str) or not text.strip():
            raise DataError(where, field, "is missing or empty (give prompt, messages, instruction or a pair)")
        extra = record.get("input") if field == "instruction" else None
        if extra is not None and not isinstance(extra, str):
            raise DataError(where, "input", f"must be a string, got {type(extra).__name__}")
        messages = [{"role": "user", "content": f"{text}\n\n{extra}" if extra else text}]
    return {"prompt": messages, "raw_prompt": _render(messages) + "\n\nAssistant:"}


def prompt_ids(prompt: list[dict], raw_prompt: str, template: str, tokenizer) -> list[int]:
    """Token ids that precede a reply under ``template``: the same ids the reply is appended to in SFT/DPO data."""
    if template == "raw":
        return encode_prompt(raw_prompt, "raw", tokenizer)
    prompt_text, reply_text = reply_segments(prompt, raw_prompt, "x", template, tokenizer)
    return split_prompt_reply(tokenize_segments([(prompt_text, False), (reply_text, True)], tokenizer,
                                                template == "chat"))[0]


def reply_ids(prompt: list[dict], raw_prompt: str, reply: str, template: str, tokenizer) -> list[int]:
    """Prompt and reply as one token sequence, formatted as in preference data (what a reward model was trained on)."""
    prompt_text, reply_text = reply_segments(prompt, raw_prompt, reply, template, tokenizer)
    return tokenize_segments([(prompt_text, False), (reply_text, True)], tokenizer, template == "chat").input_ids


@dataclass
class PromptExample:
    ids: list[int]
    record: dict  # the normalised prompt (for reward models and reward functions)
    index: int


def collate_prompts(examples: list[PromptExample], pad_id: int) -> dict:
    """Left-padded ``input_ids``/``attention_mask`` ``(B, P)`` for generation, plus ``index`` and the records."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, width - len(e.ids):] = torch.tensor(e.ids)
        mask[i, width - len(e.ids):] = 1
    return {"input_ids": ids, "attention_mask": mask, "index": torch.tensor([e.index for e in examples]),
            "records": [e.record for e in examples]}


class PromptDataModule(PostDataModule):
    """Prompts for on-policy RL; a malformed record stops the run with file, line and field before anything is
    written. Duplicate prompts (e.g. the two records of a pair file that share a prompt) are kept once."""

    def __init__(
        self,
        train_files: Files = None,
        val_files: Files = None,
        val_fraction: float = 0.1,
        val_size: Optional[int] = None,
        max_train_prompts: Optional[int] = None,
        template: str = "chat",
        tokenizer: str = DEFAULT_MODEL,
        max_prompt_length: int = 256,
        batch_size: int = 8,
        eval_batch_size: int = 8,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        safety_filter: Optional[SafetyFilter] = None,
    ):
        """
        Args:
            train_files: JSON/JSONL/parquet files of prompts (or pairs); ``None`` = the prompts of the bundled
                preference dataset.
            val_files: held-out prompts (validation scores the policy's replies to them); ``None`` = hold out
                ``val_fraction`` (or ``val_size``) of the training prompts.
            val_fraction: share of prompts held out when ``val_files`` is not given.
            val_size: exact number of held-out prompts (overrides ``val_fraction``).
            max_train_prompts: use at most this many training prompts (after holding out), in file order.
            template: ``chat`` or any SFT template (``raw`` writes ``\\n\\nHuman: ...\\n\\nAssistant:``).
            tokenizer: tokenizer name or path (linked to ``model.model_name_or_path`` by the CLI).
            max_prompt_length: longer prompts lose tokens from the left (the request at the end is kept).
            batch_size: prompts per rollout per device (each is answered ``samples_per_prompt`` times).
            eval_batch_size: prompts per validation batch.
            shuffle: shuffle prompts each epoch (seeded).
            seed: seed of the held-out split and the shuffling.
            num_workers: DataLoader worker processes.
            safety_filter: rules and classifiers that remove unsafe records from every split before
                tokenising, with counts by reason and a sample in MLflow (see
                :class:`~lightning_post.data.safety.SafetyFilter`; ``null`` = keep everything).
        """
        super().__init__(tokenizer)
        self.save_hyperparameters()
        self.check_settings()
        check_template(template)
        if max_prompt_length < 8:
            raise UserError(f"max_prompt_length must be at least 8, got {max_prompt_length}")
        self.truncated = 0

    def _load(self, files: list[str]) -> list[dict]:
        seen, out = set(), []
        for path in files:
            for _, rec in raw_records(path, normalize_prompt_record):
                if rec["raw_prompt"] not in seen:
                    seen.add(rec["raw_prompt"])
                    out.append(rec)
        return out

    def _read_all(self) -> dict[str, list[dict]]:
        hp = self.hparams
        train = self._load(_as_list(hp.train_files) or [default_preference_file()])
        if hp.val_files is not None:
            val = self._load(_as_list(hp.val_files))
        else:
            train, val = hold_out(train, hp.seed, hp.val_fraction, hp.val_size)
        if hp.max_train_prompts is not None:
            train = train[: hp.max_train_prompts]
        return self.safety_filtered({"train": train, "val": val})

    def encode(self, records: list[dict]) -> list[PromptExample]:
        hp, tok = self.hparams, self._tokenizer()
        out = []
        for i, rec in enumerate(records):
            ids = prompt_ids(rec["prompt"], rec["raw_prompt"], hp.template, tok)
            if len(ids) > hp.max_prompt_length:
                self.truncated += 1
                bos = [ids[0]] if ids[0] == tok.bos_token_id else []
                ids = bos + ids[len(ids) - hp.max_prompt_length + len(bos):]
            out.append(PromptExample(ids, rec, i))
        return out

    def prepare_data(self) -> None:
        self._records = self._read_all()  # validated before the MLflow run exists

    def setup(self, stage: Optional[str] = None) -> None:
        if "train" in self.splits:
            return
        records = getattr(self, "_records", None) or self._read_all()
        self._records = None
        for split in ("train", "val"):
            self.splits[split] = Rows(self.encode(records[split]))
        self.splits["test"] = self.splits["val"]
        if self.truncated:
            log.warning("%d prompts were cut from the left to max_prompt_length=%d", self.truncated,
                        self.hparams.max_prompt_length)
        log.info("prompts: %d train, %d held out", len(self.splits["train"]), len(self.splits["val"]))

    def collate(self, examples: list[PromptExample]) -> dict:
        return collate_prompts(examples, self._tokenizer().pad_token_id)

    def encode_prompt(self, text: str) -> list[int]:
        return encode_prompt(text, self.hparams.template, self._tokenizer())
