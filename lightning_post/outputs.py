"""Output folders that never lose a user's file.

Every command that writes a folder (``evaluate``, ``abtest``, ``redteam``, ``jailbreak-data``, ``data ...``, the
feedback converter, the export after ``fit``) goes through :func:`write_folder`:

1. :func:`check_output_dir` runs before any work: it refuses ``.``, the working directory, a parent of it (``/``,
   the home folder, ...) and an existing non-empty folder that is not a previous output of the same command, unless
   ``overwrite`` is set. A previous output is recognised by its marker file :data:`MARKER`, which lists the files
   the command wrote.
2. The files are written into a new temporary folder beside the target, then moved into place: a crash leaves the
   old output whole and the new one absent, never half of each.
3. Replacing an output removes only files that the marker says the command wrote itself; a file a user put into the
   folder stays.

Folders and files get the user's umask (``tempfile.mkdtemp`` alone would make them ``0700``, readable by their owner
only). :func:`child_dir` builds a path from a name (a pipeline stage, an export) that must stay inside its root.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from lightning_post.errors import OutputError

#: the file that marks a folder as a command's output: ``{"command", "files", "written"}``
MARKER = ".lightning-post-output.json"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """Give ``path`` and everything below it the modes a plain ``mkdir``/``open`` would have (0755/0644 under the
    usual umask 022); ``tempfile`` creates them 0700/0600."""
    mask = _umask()
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if p.is_symlink():
            continue
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new empty folder in ``parent`` with the user's umask (moved into place by the caller)."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    tmp.chmod(0o777 & ~_umask())
    return tmp


def read_marker(folder: Path) -> Optional[dict]:
    """The marker of a previous output in ``folder``, or ``None`` (no marker, or one that is not ours)."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("files"), list) else None


def refuse_protected(path: Path, setting: str) -> None:
    here = Path.cwd().resolve()
    target = path.resolve()
    if target == here or target in here.parents:
        what = "the working directory" if target == here else "a parent of the working directory"
        raise OutputError(f"{setting}: {str(path)!r} is {what}; name a new folder for the output")
    if target == Path.home().resolve():
        raise OutputError(f"{setting}: {str(path)!r} is the home folder; name a new folder for the output")


def check_output_dir(path: str | Path, command: str, overwrite: bool = False, setting: str = "output_dir") -> Path:
    """Refuse an output folder that the command could not write without deleting a user's files (see the module
    docstring); returns the path. Called before any work, so a refused folder costs nothing."""
    path = Path(path)
    refuse_protected(path, setting)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{setting}: {path} is a file, not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        marker = read_marker(path)
        if marker is None or marker.get("command") != command:
            by = f"by '{marker['command']}'" if marker else "by a user or another program"
            raise OutputError(f"{setting}: {path} already holds files written {by}; choose a new folder, or pass "
                              "--overwrite true to write into it (files that it did not write are kept)")
    return path


def child_dir(root: str | Path, name: str, what: str) -> Path:
    """``root/name`` for a ``name`` that must stay one folder below ``root`` (a pipeline stage's folder): refuses
    empty names, ``.``, ``..``, separators and absolute paths.

    >>> child_dir("runs", "sft", "stage name").as_posix()
    'runs/sft'
    """
    if not name or name in (".", "..") or "/" in name or "\\" in name or os.sep in name or Path(name).is_absolute() \
            or "\0" in name:
        raise OutputError(f"{what} {name!r}: must be a plain folder name (no '/', not '.' or '..')")
    return Path(root) / name


def _write_value(target: Path, name: str, value: Any) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(value, "savefig"):
        value.savefig(target, dpi=110)
        return
    if callable(value):  # a writer of its own (a model's save_pretrained): gets the path
        value(target)
        return
    target.write_text(value if isinstance(value, str) else json_text(value, jsonl=name.endswith(".jsonl")),
                      encoding="utf-8")


def json_text(value: Any, jsonl: bool = False) -> str:
    """Strict JSON (or JSON Lines, one record per line) of ``value``: NaN and infinities are written ``null``."""
    if jsonl:
        return "".join(json.dumps(finite_json(r), ensure_ascii=False, allow_nan=False) + "\n" for r in value)
    return json.dumps(finite_json(value), indent=1, ensure_ascii=False, allow_nan=False)


def _listed(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MARKER)


def write_folder(out_dir: str | Path, files: dict[str, Any], command: str, overwrite: bool = False) -> Path:
    """Write ``{name: value}`` as the output folder ``out_dir`` of ``command``: a ``.jsonl`` name takes a list of rows,
    a string is written as text, a matplotlib figure as an image, a callable is called with the path to fill (a
    folder: a model's ``save_pretrained``), anything else as JSON; names may hold sub-folders (``plots/bias.png``).

    Written into a temporary folder beside ``out_dir`` and moved into place; an earlier output of ``command`` is
    replaced, and only the files it wrote itself are removed (see the module docstring).
    """
    out_dir = check_output_dir(out_dir, command, overwrite)
    tmp = make_temp_dir(out_dir.resolve().parent, f".{out_dir.name}-")
    old = None
    try:
        for name, value in files.items():
            _write_value(tmp / name, name, value)
        written = _listed(tmp)
        (tmp / MARKER).write_text(json.dumps({"command": command, "files": written, "written": time.time()},
                                             indent=1), encoding="utf-8")
        apply_umask(tmp)
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        if not out_dir.exists():
            tmp.rename(out_dir)
            return out_dir
        marker = read_marker(out_dir) or {"files": []}
        ours = set(marker["files"])
        if set(_listed(out_dir)) <= ours:  # nothing but our own earlier output: swap the whole folder
            old = out_dir.with_name(f".{out_dir.name}-old-{os.getpid()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            return out_dir
        # the folder holds files that we did not write: put ours in file by file and keep theirs
        for rel in written:
            dest = out_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_dir():
                raise OutputError(f"{out_dir}: {rel} is a folder of someone else's; it was not replaced")
            os.replace(tmp / rel, dest)
        for rel in ours - set(written):  # files of our earlier output that this one does not have
            (out_dir / rel).unlink(missing_ok=True)
        os.replace(tmp / MARKER, out_dir / MARKER)
        return out_dir
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def output_files(out_dir: Path) -> list[Path]:
    """The files a command wrote into ``out_dir`` (from its marker; every file when there is none)."""
    marker = read_marker(out_dir)
    if marker is None:
        return sorted(p for p in out_dir.rglob("*") if p.is_file())
    return [out_dir / rel for rel in marker["files"] if (out_dir / rel).is_file()]


def replace_subfolder(parent: Path, name: str, save: Callable[[Path], None], command: str) -> Path:
    """Write the folder ``parent/name`` through ``save(tmp)`` and move it into place; an existing ``parent/name`` is
    replaced only when ``parent``'s marker says ``command`` wrote it. ``parent`` gets (or updates) the marker."""
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / name
    marker = read_marker(parent) or {"command": command, "files": []}
    if final.exists() and (marker.get("command") != command or name not in marker["files"]):
        raise OutputError(f"{final} exists and was not written by '{command}'; it was kept (choose another folder)")
    tmp = make_temp_dir(parent, f".{name}-")
    old = None
    try:
        save(tmp)
        apply_umask(tmp)
        if final.exists():
            old = parent / f".{name}-old-{os.getpid()}"
            final.rename(old)
        tmp.rename(final)
        marker["files"] = sorted(set(marker["files"]) | {name})
        marker.update(command=command, written=time.time())
        (parent / MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def finite_json(value: Any) -> Any:
    """``value`` with every NaN and infinity, also inside dicts, lists and tuples, replaced by ``None``: JSON has no
    ``NaN`` (Python writes it, strict parsers refuse it), so a number that does not exist is written ``null``.
    Write with ``json.dumps(finite_json(value), allow_nan=False)``.

    >>> finite_json({"rate": float("nan"), "xs": (1.5, float("-inf")), "n": 3, "s": "nan"})
    {'rate': None, 'xs': [1.5, None], 'n': 3, 's': 'nan'}
    """
    import math
    import numbers

    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return value if math.isfinite(value) else None
    return value
