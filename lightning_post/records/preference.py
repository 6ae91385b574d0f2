"""Preference pairs: validate a record (any layout below) and return the normalised pair; read files of them.

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
from typing import Any, Optional

from lightning_post.records.chat import HH_ASSISTANT, chat_messages, hh_messages, hh_text, split_hh_dialogue
from lightning_post.records.files import DataError, raw_records
from lightning_post.records.registry import normalizer


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
        msgs = chat_messages(value, where, field)
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise DataError(where, field, "with a separate prompt must hold exactly one assistant message")
        value = msgs[0]["content"]
    if not isinstance(value, str):
        raise DataError(where, field, f"must be a string or an assistant message, got {type(value).__name__}")
    if not value.strip():
        raise DataError(where, field, "is empty")
    return value


@normalizer("preference")
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
            messages = chat_messages(prompt, where, "prompt")
            raw = hh_text(messages) + HH_ASSISTANT
        c, r = _reply(chosen, where, "chosen"), _reply(rejected, where, "rejected")
    elif isinstance(chosen, list) or isinstance(rejected, list):  # two conversations sharing all but the last turn
        cm, rm = chat_messages(chosen, where, "chosen"), chat_messages(rejected, where, "rejected")
        for name, msgs in (("chosen", cm), ("rejected", rm)):
            if msgs[-1]["role"] != "assistant":
                raise DataError(where, name, "must end with an assistant turn")
        if cm[:-1] != rm[:-1]:
            raise DataError(where, "rejected", "does not share the conversation of 'chosen' before the last turn")
        if not cm[:-1]:
            raise DataError(where, "chosen", "has no user turn before the reply (add one or a 'prompt' field)")
        messages, raw = cm[:-1], hh_text(cm[:-1]) + HH_ASSISTANT
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


def load_preference_records(paths: list[str], skipped: Optional[list[DataError]] = None) -> list[tuple[str, dict]]:
    """``(location, normalised pair)`` for every record of ``paths``.

    The first bad record raises ``DataError``, unless ``skipped`` is a list: then bad records are left out and their
    errors appended to it (for real-world files with a few broken rows, reported rather than silently dropped).
    """
    def normalize(record, where):
        try:
            return normalize_preference_record(record, where)
        except DataError as e:
            if skipped is None:
                raise
            if not any(s.where == where for s in skipped):  # each record is checked twice (lines, then datasets)
                skipped.append(e)
            return None

    return [(w, pair) for path in paths for w, pair in raw_records(path, normalize) if pair is not None]


@normalizer("scoring")
def normalize_scoring_record(record: Any, where: str) -> dict[str, Any]:
    """A record to score with a reward model: a preference pair (both replies are scored), or one reply as
    ``{"prompt": str | messages, "response": str}`` or ``{"messages": [..., assistant turn]}``."""
    if isinstance(record, dict) and record.get("chosen") is not None:
        return {"pair": normalize_preference_record(record, where), "record": record}
    if not isinstance(record, dict):
        raise DataError(where, None, f"a record must be a JSON object, got {type(record).__name__}")
    if record.get("messages") is not None:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
            raise DataError(where, "messages", "must be a non-empty list ending with an assistant turn")
        fake = {"chosen": messages, "rejected": messages}
    else:
        if record.get("response") is None:
            raise DataError(where, "response", "is missing (expected prompt/response, messages or chosen/rejected)")
        fake = {"prompt": record.get("prompt"), "chosen": record["response"], "rejected": record["response"]}
        if fake["prompt"] is None:
            raise DataError(where, "prompt", "is missing")
    try:
        return {"single": normalize_preference_record(fake, where), "record": record}
    except DataError as e:
        if e.field == "chosen":  # the reply was passed as "chosen": name it as the user wrote it
            e = DataError(where, "messages" if "messages" in record else "response", e.problem)
        raise e from None
