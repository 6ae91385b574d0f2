"""Chat messages and the HH-RLHF dialogue layout, shared by every kind of record that holds a conversation.

A message list is ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``; an HH-RLHF dialogue is the same
conversation as text, ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``.
"""

from __future__ import annotations

import re
from typing import Any

from lightning_post.errors import UserError
from lightning_post.records.files import DataError

ROLES = ("system", "user", "assistant")
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


def chat_messages(value: Any, where: str, field: str) -> list[dict[str, str]]:
    """``value`` checked as a non-empty list of ``{role, content}`` messages (only those two keys are kept)."""
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


def hh_text(messages: list[dict[str, str]]) -> str:
    """The messages as HH-RLHF dialogue text (``\\n\\nHuman: ...\\n\\nAssistant: ...``)."""
    return "".join(f"\n\n{'Human' if m['role'] == 'user' else m['role'].capitalize()}: {m['content']}" for m in messages)
