"""Read instruction files through ``datasets`` and validate every record before anything is trained or written.

Accepted record layouts (one per file row; every data kind's layouts: docs/data_formats.md):

* ``{"instruction": str, "input": str (optional), "response": str}`` (``output`` is accepted for ``response``);
* ``{"prompt": str, "completion": str}`` or ``{"prompt": str, "response": str}`` (the prompt is the instruction);
* ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`` with at least one assistant turn.

Errors name the file, the line (JSON Lines) or row, and the field: ``data.jsonl:7: field 'response': is empty``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from lightning_post.errors import UserError

ROLES = ("system", "user", "assistant")


class DataError(UserError):
    """A record that cannot be used, with its location."""

    def __init__(self, where: str, field: str | None, problem: str):
        self.where, self.field, self.problem = where, field, problem
        super().__init__(f"{where}: field '{field}': {problem}" if field else f"{where}: {problem}")


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


def read_text(path: str | Path) -> str:
    """The text of a user's file (gunzipped for ``.gz``), or a :class:`DataError` that names the file: a truncated or
    corrupt archive, or bytes that are not UTF-8 (with the line and the byte offset of the first bad byte, counted in
    the decompressed text)."""
    import zlib

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(str(path), None, "file not found") from None
    except IsADirectoryError:
        raise DataError(str(path), None, "is a folder, not a file") from None
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise DataError(str(path), None, f"truncated or corrupt gzip archive ({e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}", None, f"not UTF-8 text (byte offset {e.start})") from None


def read_lines(path: str | Path) -> list[str]:
    """:func:`read_text` split into lines; an empty file and one of blank lines are refused by name (a file that
    holds no record is a mistake, not an empty dataset)."""
    text = read_text(path)
    if not text:
        raise DataError(str(path), None, "is empty")
    if not text.strip():
        raise DataError(str(path), None, "holds only blank lines")
    return text.splitlines()


def json_lines(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(file:line, record)`` of every non-empty line of a JSON Lines file (.gz too); bad JSON names its line."""
    path = Path(path)
    for n, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{n}", json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}", None, f"invalid JSON ({e.msg} at column {e.colno})") from None


def _json_array(path: Path) -> list[tuple[str, Any]]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}", None, f"invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, list):
        raise DataError(str(path), None, "a .json file must hold a list of records (or one record per line)")
    if not data:
        raise DataError(str(path), None, "holds an empty list: no records")
    return [(f"{path} item {i}", rec) for i, rec in enumerate(data)]


def raw_records(path: str | Path, normalize: Callable[[Any, str], Any]) -> list[tuple[str, Any]]:
    """``(location, normalize(record, location))`` for every record of a JSON/JSONL(.gz)/parquet file or saved dataset.

    JSON files are first checked record by record with their line numbers, so a syntax error or a bad field is
    reported exactly where it is; then every format is loaded through ``datasets`` (the loader a user would call).
    """
    import datasets

    path = Path(path)
    if not path.exists():
        raise DataError(str(path), None, "file not found")
    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            raise DataError(str(path), None, f"holds splits {list(ds)}; name one split's folder")
        return [(f"{path} row {i}", normalize(rec, f"{path} row {i}")) for i, rec in enumerate(ds)]
    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
        return [(f"{path} row {i}", normalize(rec, f"{path} row {i}")) for i, rec in enumerate(ds)]
    if not name.endswith((".json", ".jsonl")):
        raise DataError(str(path), None, "unsupported format; use .jsonl, .json, .parquet or a saved dataset folder")
    located = _json_array(path) if read_text(path).lstrip().startswith("[") else list(json_lines(path))
    for where, rec in located:  # exact errors first; datasets' own schema errors name neither line nor field
        normalize(rec, where)
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    return [(where, normalize(rec, where)) for (where, _), rec in zip(located, ds)]


def load_instruction_records(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Read and validate every record of ``paths``; the first bad record raises :class:`DataError`."""
    return [rec for path in paths for _, rec in raw_records(path, normalize_instruction_record)]
