"""Reading users' data files into records: the text of a file (gzip, UTF-8 checked), JSON Lines, JSON arrays, parquet
and saved ``datasets`` folders, each record passed through a kind's normaliser with its location; writing JSON Lines
atomically; the bundled data files.

Errors name the file, the line (JSON Lines) or row, and the field: ``data.jsonl:7: field 'response': is empty``.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from lightning_post.errors import UserError

#: a data module's file setting: one path, a list of paths, or ``None`` (the module's default)
Files = Optional[Union[str, list[str]]]


class DataError(UserError):
    """A record that cannot be used, with its location."""

    def __init__(self, where: str, field: str | None, problem: str):
        self.where, self.field, self.problem = where, field, problem
        super().__init__(f"{where}: field '{field}': {problem}" if field else f"{where}: {problem}")


def as_list(files: Files) -> list[str]:
    """A ``Files`` setting as a list of paths (``None`` -> ``[]``).

    >>> as_list("a.jsonl"), as_list(None), as_list(["a", "b"])
    (['a.jsonl'], [], ['a', 'b'])
    """
    return [] if files is None else [files] if isinstance(files, str) else list(files)


def default_instruction_file() -> str:
    """The bundled dataset: 120 Korean and English instructions (summarisation, code, classification, ...)."""
    return str(resources.files("lightning_post") / "resources" / "instructions.jsonl")


def default_preference_file() -> str:
    """The bundled dataset: 120 Korean and English pairs on helpfulness, harmlessness and honesty."""
    return str(resources.files("lightning_post") / "resources" / "preferences.jsonl")


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




def count_records(path: str) -> dict:
    """``{"rows": N}``: the records of a data file (JSON/JSONL(.gz) without parsing each one, parquet and saved
    dataset folders through ``datasets``); ``{}`` where it cannot be read."""
    try:
        name = Path(path).name.removesuffix(".gz")
        if Path(path).is_file() and name.endswith((".json", ".jsonl")):
            lines = read_lines(path)
            if not "".join(lines[:1]).lstrip().startswith("["):
                return {"rows": sum(1 for line in lines if line.strip())}
        return {"rows": len(raw_records(path, lambda record, where: None))}
    except Exception as e:  # counting is a report, never a reason to stop a run
        import logging

        logging.getLogger(__name__).debug("could not count the records of %s: %s", path, e)
        return {}


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write rows as JSON Lines through a temporary file renamed into place (no half-written file on failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path

