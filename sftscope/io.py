"""Atomic file writes: a stage's output either exists whole or not at all."""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sftscope.errors import SftscopeError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


_TMP = ".tmp"


def remove_atomic_leftovers(path: str | Path) -> None:
    """Remove the temporaries of writes to ``path`` that a killed process left beside it (a
    SIGKILL skips :func:`atomic_write_bytes`' own cleanup)."""
    path = Path(path)
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*{_TMP}"):
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


# An indented list of numbers: it opens on a real newline, which no JSON string holds.
_NUMBER_LIST = re.compile(r"\[(\n[-+.\deEnul,\s]*)\]")


def json_text(obj: Any) -> str:
    """Indented JSON with each list of numbers on one line (a histogram row reads as one)."""
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    return _NUMBER_LIST.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return atomic_write_text(path, text)


def content_digest(path: str | Path) -> str:
    """A file's or a folder's content as 16 hex digits (a folder: its files' relative paths
    and contents, hidden ones included), so the same data at another path is the same input."""
    path = Path(path).resolve()
    if not path.exists():
        raise SftscopeError(f"{path}: no such file or folder")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stats = tuple((str(f), st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()])
    return _digest(path, stats)


@functools.lru_cache(maxsize=64)
def _digest(path: Path, stats: tuple[tuple[str, int, int], ...]) -> str:
    """(cached while the files' sizes and times stay: a plan asks once per stage)"""
    h = hashlib.sha256()
    if not path.is_dir():
        _hash_file(h, path)
        return h.hexdigest()[:16]
    for name, _, _ in stats:
        h.update(Path(name).relative_to(path).as_posix().encode() + b"\0")
        _hash_file(h, Path(name))
        h.update(b"\0")
    return h.hexdigest()[:16]


def _hash_file(h: Any, path: Path) -> None:
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            h.update(block)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SftscopeError(f"{path}:{lineno}: malformed JSON line ({e.msg})") from None
    return rows


def read_json(path: str | Path, what: str = "file") -> Any:
    """Parse a JSON file; a missing, unreadable or malformed one is a one-line error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SftscopeError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SftscopeError(f"{path}: cannot read {what} ({e})") from None
    except json.JSONDecodeError as e:
        raise SftscopeError(f"{path}: malformed JSON at line {e.lineno} ({e.msg})") from None


def read_yaml(path: str | Path, what: str = "file") -> Any:
    """Parse a YAML file; a missing, unreadable or malformed one is a one-line error naming it."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SftscopeError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SftscopeError(f"{path}: cannot read {what} ({e})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SftscopeError(f"{path}: invalid YAML ({' '.join(str(e).split())})") from None


def replace_dir(src: str | Path, dst: str | Path) -> Path:
    """Move a finished folder ``src`` into place at ``dst``; an earlier ``dst`` is moved aside
    first and deleted after, so ``dst`` is always either the old folder or the new one."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        os.replace(src, dst)
        return dst
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
    os.replace(dst, old / "previous")
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
    return dst


def tsv_text(columns: Iterable[str], rows: Iterable[dict[str, Any]]) -> str:
    """Tab-separated rows (``str`` of each value) under a header line."""
    cols = list(columns)
    lines = ["\t".join(cols)] + ["\t".join(str(row[c]) for c in cols) for row in rows]
    return "\n".join(lines) + "\n"
