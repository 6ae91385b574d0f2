"""Prompts: the requests a policy answers (RL, the Constitutional AI loop, evaluation and red-team commands).

Records may be ``{"prompt": str | chat messages}``, a conversation ``{"messages": [...]}`` (turns after the last user
turn are dropped), an instruction ``{"instruction", "input"}``, or any preference layout (its prompt is used), so the
prompts of a preference dataset serve directly. A reference answer (``answer``: text or a number) is kept with the
prompt, for reward functions that check replies against it (``exact_answer``).
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional

from lightning_post.records.chat import chat_messages, hh_text
from lightning_post.records.files import DataError, raw_records
from lightning_post.records.preference import normalize_preference_record
from lightning_post.records.registry import normalizer

#: the field of a prompt record that holds its reference answer (kept by the normaliser, read by ``exact_answer``)
ANSWER_FIELD = "answer"


@normalizer("prompt")
def normalize_prompt_record(record: Any, where: str) -> dict[str, Any]:
    """``{"prompt": messages ending with a user turn, "raw_prompt": HH-RLHF-style text}`` of one record, with
    ``"answer"`` (as text) when the record gives a reference answer.

    >>> normalize_prompt_record({"instruction": "Add", "input": "2 + 2"}, "f:1")["prompt"]
    [{'role': 'user', 'content': 'Add\\n\\n2 + 2'}]
    >>> normalize_prompt_record({"prompt": "What is 2 + 2?", "answer": 4}, "f:1")["answer"]
    '4'
    """
    if not isinstance(record, dict):
        raise DataError(where, None, f"a record must be a JSON object, got {type(record).__name__}")
    record = {k: v for k, v in record.items() if v is not None}  # a file mixing layouts: absent fields load as None
    answer = reference_answer(record, where)
    if "chosen" in record or "rejected" in record:
        pair = normalize_preference_record(record, where)
        return {"prompt": pair["prompt"], "raw_prompt": pair["raw_prompt"], **answer}
    if "messages" in record:
        messages = chat_messages(record["messages"], where, "messages")
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not users:
            raise DataError(where, "messages", "has no user turn to answer")
        messages = messages[: users[-1] + 1]
    elif isinstance(record.get("prompt"), list):
        messages = chat_messages(record["prompt"], where, "prompt")
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
    return {"prompt": messages, "raw_prompt": hh_text(messages) + "\n\nAssistant:", **answer}


def reference_answer(record: dict, where: str) -> dict[str, str]:
    """``{"answer": text}`` of a record that gives a reference answer (a non-blank string, or a number written as
    text), ``{}`` of one that does not."""
    value = record.get(ANSWER_FIELD)
    if value is None:
        return {}
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
        raise DataError(where, ANSWER_FIELD, f"must be a non-blank string or a number, got {value!r}")
    return {ANSWER_FIELD: str(value).strip()}


def load_prompt_records(paths: list[str]) -> list[dict]:
    """The normalised prompts of ``paths`` in file order, each prompt text once (the two records of a pair file that
    share a prompt give one prompt)."""
    seen, out = set(), []
    for path in paths:
        for _, rec in raw_records(path, normalize_prompt_record):
            if rec["raw_prompt"] not in seen:
                seen.add(rec["raw_prompt"])
                out.append(rec)
    return out


def prompt_id(messages: list[dict]) -> str:
    """A stable id of a prompt (its text), so a resumed run recognises the prompts it has done."""
    text = "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in messages)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def load_prompt_items(files: list[str], first_turn_only: bool, max_prompts: Optional[int],
                      skip_invalid: bool = False) -> tuple[list[dict], list[DataError]]:
    """``[{"id", "prompt": messages}]`` from prompt or preference files, duplicates kept once, in file order."""
    skipped: list[DataError] = []

    def normalize(record, where):
        try:
            return normalize_prompt_record(record, where)
        except DataError as e:
            if not skip_invalid:
                raise
            if not any(str(e) == str(s) for s in skipped):  # the file is read twice (line check, then datasets)
                skipped.append(e)
            return None

    items, seen = [], set()
    for path in files:
        for _, rec in raw_records(path, normalize):
            if rec is None:
                continue
            messages = rec["prompt"][:1] if first_turn_only else rec["prompt"]
            key = prompt_id(messages)
            if key not in seen:
                seen.add(key)
                items.append({"id": key, "prompt": messages})
            if max_prompts is not None and len(items) >= max_prompts:
                return items, skipped
    return items, skipped
