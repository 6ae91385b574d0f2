"""Preference pairs as pure transforms: validate a record, format it with a template, tokenise and truncate it.

Accepted record layouts (one per file row); every layout may add a numeric ``margin`` (reward models: the
preference strength, subtracted inside the Bradley-Terry loss), ``weight`` (scales the pair's loss) and/or ``label``
(a soft label: the probability that ``chosen`` is the better reply, in [0, 1]; 1 when absent):

* explicit prompt: ``{"prompt": str, "chosen": str, "rejected": str}``;
* chat messages: ``{"chosen": [messages], "rejected": [messages]}``, both ending in an assistant turn and sharing
  every earlier turn, or ``{"prompt": [messages] | str, "chosen": [assistant message], "rejected": [...]}``;
* shared-prefix dialogues (the HH-RLHF layout): ``{"chosen": str, "rejected": str}`` whose prompt is everything up
  to and including the last ``\\n\\nAssistant:``, identical in both.

A normalised pair is ``{"prompt": [messages], "raw_prompt": str, "chosen": str, "rejected": str, "margin": float |
None, "weight": float | None, "label": float | None}``. ``raw_prompt`` is the prompt text verbatim (used by the ``raw`` template, so HH-RLHF
dialogues keep their own ``Human:/Assistant:`` layout); ``chosen``/``rejected`` are the replies verbatim.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from lightning_post.errors import UserError
from lightning_post.data.records import ROLES, DataError
from lightning_post.data.templates import to_segments
from lightning_post.data.tokenize import IGNORE_INDEX, Tokenized, tokenize_segments

HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def split_hh_dialogue(text: str) -> tuple[str, str]:
    """Split an HH-RLHF dialogue into (prompt up to and including the last ``\\n\\nAssistant:``, reply).

    >>> split_hh_dialogue("\\n\\nHuman: Hi\\n\\nAssistant: Hello!")
    ('\\n\\nHuman: Hi\\n\\nAssistant:', ' Hello!')
    """
    cut = text.rfind(HH_ASSISTANT)
    if cut < 0:
        raise UserError(f"no {HH_ASSISTANT!r} marker")
    cut += len(HH_ASSISTANT)
    return text[:cut], text[cut:]


def hh_messages(prompt: str) -> list[dict[str, str]]:
    """The turns of an HH-RLHF prompt as chat messages (the trailing empty assistant turn is dropped).

    >>> hh_messages("\\n\\nHuman: Hi\\n\\nAssistant: Yes?\\n\\nHuman: Go on\\n\\nAssistant:")
    [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Yes?'}, {'role': 'user', 'content': 'Go on'}]
    """
    parts = _HH_TURN.split(prompt)  # [before, role, text, role, text, ...]
    messages = []
    for role, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    if not messages and prompt.strip():  # text before the first marker only: one user turn
        messages = [{"role": "user", "content": prompt.strip()}]
    return messages


def _messages(value: Any, where: str, field: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError(where, field, "must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise DataError(where, f"{field}[{i}]", "must be an object with 'role' and 'content'")
        if m.get("role") not in ROLES:
            raise DataError(where, f"{field}[{i}].role", f"must be one of {list(ROLES)}, got {m.get('role')!r}")
        if not isinstance(m.get("content"), str):
            raise DataError(where, f"{field}[{i}].content", "must be a string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _number(record: dict, name: str, where: str) -> Optional[float]:
    value = record.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(where, name, f"must be a finite number, got {value!r}")
    if name == "weight" and value < 0:
        raise DataError(where, name, f"must be >= 0, got {value}")
    if name == "label" and not 0 <= value <= 1:
        raise DataError(where, name, f"is the probability that chosen is better: must lie in [0, 1], got {value}")
    return float(value)


def _reply(value: Any, where: str, field: str) -> str:
    if isinstance(value, list):
        msgs = _messages(value, where, field)
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise DataError(where, field, "with a separate prompt must hold exactly one assistant message")
        value = msgs[0]["content"]
    if not isinstance(value, str):
        raise DataError(where, field, f"must be a string or an assistant message, got {type(value).__name__}")
    if not value.strip():
        raise DataError(where, field, "is empty")
    return value


def _render(messages: list[dict[str, str]]) -> str:
    return "".join(f"\n\n{'Human' if m['role'] == 'user' else m['role'].capitalize()}: {m['content']}" for m in messages)


def normalize_preference_record(record: Any, where: str) -> dict[str, Any]:
    """Validate one preference record (any layout above) and return the normalised pair.

    >>> normalize_preference_record({"prompt": "2+2?", "chosen": "4", "rejected": "5"}, "f:1")["prompt"]
    [{'role': 'user', 'content': '2+2?'}]
    """
    if not isinstance(record, dict):
        raise DataError(where, None, f"a record must be a JSON object, got {type(record).__name__}")
    record = {k: v for k, v in record.items() if v is not None}
    for name in ("chosen", "rejected"):
        if name not in record:
            raise DataError(where, name, "is missing (a preference record needs chosen and rejected)")
    chosen, rejected, prompt = record["chosen"], record["rejected"], record.get("prompt")
    if prompt is not None:  # explicit prompt
        if isinstance(prompt, str):
            if not prompt.strip():
                raise DataError(where, "prompt", "is empty")
            messages, raw = [{"role": "user", "content": prompt}], prompt
        else:
            messages = _messages(prompt, where, "prompt")
            raw = _render(messages) + HH_ASSISTANT
        c, r = _reply(chosen, where, "chosen"), _reply(rejected, where, "rejected")
    elif isinstance(chosen, list) or isinstance(rejected, list):  # two conversations sharing all but the last turn
        cm, rm = _messages(chosen, where, "chosen"), _messages(rejected, where, "rejected")
        for name, msgs in (("chosen", cm), ("rejected", rm)):
            if msgs[-1]["role"] != "assistant":
                raise DataError(where, name, "must end with an assistant turn")
        if cm[:-1] != rm[:-1]:
            raise DataError(where, "rejected", "does not share the conversation of 'chosen' before the last turn")
        if not cm[:-1]:
            raise DataError(where, "chosen", "has no user turn before the reply (add one or a 'prompt' field)")
        messages, raw = cm[:-1], _render(cm[:-1]) + HH_ASSISTANT
        c, r = _reply(cm[-1]["content"], where, "chosen"), _reply(rm[-1]["content"], where, "rejected")
    else:  # HH-RLHF: full dialogues that share everything up to the last "\n\nAssistant:"
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(value, str):
                raise DataError(where, name, f"must be a string or a list of messages, got {type(value).__name__}")
            if HH_ASSISTANT not in value:
                raise DataError(
                    where, name, f"has no prompt: give a 'prompt' field or a dialogue with {HH_ASSISTANT!r}"
                )
        raw, c = split_hh_dialogue(chosen)
        raw_r, r = split_hh_dialogue(rejected)
        if raw != raw_r:
            raise DataError(where, "rejected", f"does not share the prompt of 'chosen' (the text up to the last {HH_ASSISTANT!r})")
        messages = hh_messages(raw)
        if not messages or messages[-1]["role"] != "user":
            raise DataError(where, "chosen", "the dialogue has no Human turn before the last Assistant turn")
        for name, reply in (("chosen", c), ("rejected", r)):
            if not reply.strip():
                raise DataError(where, name, "the reply after the last Assistant: is empty")
    return {
        "prompt": messages,
        "raw_prompt": raw,
        "chosen": c,
        "rejected": r,
        "margin": _number(record, "margin", where),
        "weight": _number(record, "weight", where),
        "label": _number(record, "label", where),
    }


# ---- formatting and tokenisation ---------------------------------------------------------------------------------
def reply_segments(prompt: list[dict], raw_prompt: str, reply: str, template: str, tokenizer) -> tuple[str, str]:
    """(prompt text, reply text) of one side of a pair under ``template`` (the same templates as SFT).

    ``raw`` keeps the record's own text (HH-RLHF dialogues stay ``...\\n\\nAssistant: reply``); every other template
    formats the conversation and trains only its final assistant turn.
    """
    if template == "raw":
        return raw_prompt, reply
    segments = to_segments({"messages": prompt + [{"role": "assistant", "content": reply.strip()}]}, template, tokenizer)
    return "".join(text for text, _ in segments[:-1]), segments[-1][0]


def split_prompt_reply(example: Tokenized) -> tuple[list[int], list[int]]:
    """Split a tokenised example at its first labelled token into (prompt ids, reply ids)."""
    first = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    return example.input_ids[:first], example.input_ids[first:]


@dataclass
class PairStats:
    """Counts reported to the log and to MLflow (``data/<split>_pairs``, ``..._prompt_truncated``, ...)."""

    pairs: int = 0
    prompt_truncated: int = 0
    reply_truncated: int = 0
    identical: int = 0
    dropped: int = 0
    tokens: int = 0
    identical_where: list[str] = field(default_factory=list)

    def as_metrics(self, split: str) -> dict[str, float]:
        return {
            f"data/{split}_pairs": self.pairs,
            f"data/{split}_prompt_truncated": self.prompt_truncated,
            f"data/{split}_reply_truncated": self.reply_truncated,
            f"data/{split}_identical_pairs": self.identical,
            f"data/{split}_dropped": self.dropped,
            f"data/{split}_tokens": self.tokens,
        }


@dataclass
class PairExample:
    """One tokenised pair; ``chosen``/``rejected`` hold the full sequences with labels on the reply only."""

    chosen: Tokenized
    rejected: Tokenized
    margin: float = 0.0
    weight: float = 1.0
    index: int = 0
    label: float = 1.0


def truncate_pair(
    prompt: list[int], chosen: list[int], rejected: list[int], max_length: int, min_prompt_length: int,
    bos_id: Optional[int] = None,
) -> tuple[list[int], list[int], list[int], bool, bool]:
    """Fit ``prompt + reply`` into ``max_length`` for both replies: the prompt is cut from the left first (keeping a
    leading BOS), down to ``min_prompt_length`` tokens; only then are the replies cut from the right.

    Returns ``(prompt, chosen, rejected, prompt_was_cut, a_reply_was_cut)``.

    >>> truncate_pair([1, 2, 3, 4, 5], [6, 7], [8], max_length=5, min_prompt_length=2)
    ([3, 4, 5], [6, 7], [8], True, False)
    >>> truncate_pair([1, 2, 3, 4, 5], [6, 7, 8, 9], [8], max_length=5, min_prompt_length=2)
    ([4, 5], [6, 7, 8], [8], True, True)
    """
    longest = max(len(chosen), len(rejected))
    prompt_cut = reply_cut = False
    if len(prompt) + longest > max_length:
        keep = max(max_length - longest, min(len(prompt), min_prompt_length))
        if keep < len(prompt):
            keep_bos = bos_id is not None and prompt and prompt[0] == bos_id and keep > 1
            prompt = ([bos_id] + prompt[len(prompt) - keep + 1 :]) if keep_bos else prompt[len(prompt) - keep :]
            prompt_cut = True
        budget = max_length - len(prompt)
        if longest > budget:
            chosen, rejected = chosen[:budget], rejected[:budget]
            reply_cut = True
    return prompt, chosen, rejected, prompt_cut, reply_cut


def tokenize_pair(
    pair: dict, template: str, tokenizer, max_length: int, min_prompt_length: int, stats: PairStats, index: int = 0,
) -> PairExample:
    """Format, tokenise and truncate a normalised pair; the prompt ids are shared by both sides."""
    is_chat = template == "chat"
    sides = []
    for name in ("chosen", "rejected"):
        prompt_text, reply_text = reply_segments(pair["prompt"], pair["raw_prompt"], pair[name], template, tokenizer)
        sides.append(split_prompt_reply(tokenize_segments([(prompt_text, False), (reply_text, True)], tokenizer, is_chat)))
    (prompt, chosen), (prompt_r, rejected) = sides
    assert prompt == prompt_r, "the two sides of a pair must share their prompt tokens"
    prompt, chosen, rejected, p_cut, r_cut = truncate_pair(
        prompt, chosen, rejected, max_length, min_prompt_length, tokenizer.bos_token_id
    )
    stats.prompt_truncated += p_cut
    stats.reply_truncated += r_cut
    stats.tokens += 2 * len(prompt) + len(chosen) + len(rejected)
    masked = [IGNORE_INDEX] * len(prompt)
    return PairExample(
        chosen=Tokenized(prompt + chosen, masked + chosen),
        rejected=Tokenized(prompt + rejected, masked + rejected),
        margin=pair["margin"] or 0.0,
        weight=1.0 if pair["weight"] is None else pair["weight"],
        index=index,
        label=1.0 if pair.get("label") is None else pair["label"],
    )
