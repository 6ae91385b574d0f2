"""An append-only JSONL file for long generation jobs: whole batches are appended in one write, and an interrupted
job resumes by skipping the ids already written (a line cut short by a crash is dropped on the next open)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable

from lightning_post.errors import UserError

log = logging.getLogger(__name__)


class AppendableJsonl:
    """Records with an ``id`` field, appended batch by batch to ``path``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def read(self) -> list[dict]:
        """Every complete record; an unfinished last line (the job was killed while writing) is cut off the file."""
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]
        if len(complete) < len(raw):
            log.warning("%s: dropping an unfinished last line (%d bytes) left by an interrupted run",
                        self.path, len(raw) - len(complete))
            with self.path.open("r+b") as f:
                f.truncate(len(complete))
        records = []
        for i, line in enumerate(complete.decode("utf-8").splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{self.path}:{i}: not valid JSON ({e.msg}); delete the file to start over") \
                        from None
        return records

    def done_ids(self) -> set:
        return {r["id"] for r in self.read() if "id" in r}

    def append(self, records: Iterable[dict]) -> None:
        """Append records in one write, flushed to disk before returning."""
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not text:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
