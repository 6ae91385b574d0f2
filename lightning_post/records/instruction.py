"""Instruction data (SFT): validate a record and return it as ``{instruction, input, response}`` or ``{messages}``.

Accepted record layouts (one per file row; every data kind's layouts: docs/data_formats.md):

* ``{"instruction": str, "input": str (optional), "response": str}`` (``output`` is accepted for ``response``);
* ``{"prompt": str, "completion": str}`` or ``{"prompt": str, "response": str}`` (the prompt is the instruction);
* ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`` with at least one assistant turn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from lightning_post.records.chat import ROLES
from lightning_post.records.files import DataError, raw_records
from lightning_post.records.registry import normalizer


def _text(record: dict, field: str, where: str, *, required: bool = True, allow_empty: bool = False) -> str:
    if field not in record or record[field] is None:
        if required:
            raise DataError(where, field, "is missing")
        return ""
    value = record[field]
    if not isinstance(value, str):
        raise DataError(where, field, f"must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(where, field, "is empty")
    return value


@normalizer("instruction")
def normalize_instruction_record(record: Any, where: str) -> dict[str, Any]:
    """Validate one record and return it as ``{instruction, input, response}`` or ``{messages}``.

    The trained text (the response, the assistant turns) loses its surrounding whitespace: answers scraped from
    completion models start with a space or blank lines (all 1,260 Self-Instruct predictions do), and a model trained
    on them learns to open with blank lines.

    >>> normalize_instruction_record({"instruction": "Name a colour.", "response": "\\n\\nBlue. "}, "f:1")["response"]
    'Blue.'
    """
    if not isinstance(record, dict):
        raise DataError(where, None, f"a record must be a JSON object, got {type(record).__name__}")
    record = {k: v for k, v in record.items() if v is not None}  # datasets fills absent keys with None
    if record.get("messages") is not None:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(where, "messages", "must be a non-empty list of {role, content} objects")
        clean = []
        for i, m in enumerate(messages):
            field = f"messages[{i}]"
            if not isinstance(m, dict):
                raise DataError(where, field, "must be an object with 'role' and 'content'")
            role = m.get("role")
            if role not in ROLES:
                raise DataError(where, f"{field}.role", f"must be one of {list(ROLES)}, got {role!r}")
            content = _text(m, "content", where, allow_empty=role != "assistant")
            content = content.strip() if role == "assistant" else content
            clean.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" for m in clean):
            raise DataError(where, "messages", "the conversation has no assistant turn to train on")
        return {"messages": clean}
    if "prompt" in record and "instruction" not in record:
        answer = "completion" if "completion" in record or "response" not in record else "response"
        if answer not in record:
            raise DataError(where, "completion", "is missing (a prompt record needs completion or response)")
        return {
            "instruction": _text(record, "prompt", where),
            "input": "",
            "response": _text(record, answer, where).strip(),
        }
    response_field = "response" if "response" in record or "output" not in record else "output"
    if "instruction" not in record:
        raise DataError(where, "instruction", "is missing (expected instruction/response, prompt/completion, prompt/response or messages)")
    return {
        "instruction": _text(record, "instruction", where),
        "input": _text(record, "input", where, required=False, allow_empty=True),
        "response": _text(record, response_field, where).strip(),
    }


def load_instruction_records(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Read and validate every record of ``paths``; the first bad record raises :class:`DataError`."""
    return [rec for path in paths for _, rec in raw_records(path, normalize_instruction_record)]
