"""Resumable stages, the pieces the grid (:mod:`sftscope.experiment`) is made of.

A stage's output carries a fingerprint of what made it: the stage's config slice and the
fingerprints of its inputs. A stage is done when its output holds a ``stage.json`` marker with
the expected fingerprint; the marker is written last, after the output itself was written
atomically, so a run killed at any moment leaves outputs that are either complete or
recognisably not. One run per folder at a time (a pid lock file that survives kill -9).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from sftscope.errors import SftscopeError
from sftscope.io import atomic_write_json, atomic_write_text

MARKER = "stage.json"
_PACKAGES = ("sftscope", "torch", "transformers", "trl", "peft", "accelerate", "datasets")


def fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def model_identity(name: str) -> dict[str, Any]:
    """A base model's identity for fingerprints: its name and, for a local folder, the config
    and the file sizes (cheap, and changes when the weights are replaced)."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return {"model": name}
    files = sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.is_file())
    cfg = path / "config.json"
    return {"model": name, "files": files, "config": file_digest(cfg) if cfg.exists() else None}


@dataclass
class Stage:
    """One unit of work whose output (a folder, or a file) is complete once its marker exists:
    ``OUTPUT/stage.json`` for a folder, ``OUTPUT.json`` beside a file."""

    key: str
    output: Path
    fingerprint: str
    run: Callable[[], dict[str, Any]]
    keep_partial: bool = False  # the stage resumes from its own partial output (the probe)
    marker_file: Path | None = None  # for a file output: where its marker lives

    @property
    def marker_path(self) -> Path:
        return self.marker_file or self.output / MARKER

    def marker(self) -> dict[str, Any] | None:
        path = self.marker_path
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None

    def done(self) -> bool:
        m = self.marker()
        return m is not None and m.get("fingerprint") == self.fingerprint

    def status(self) -> str:
        if self.done():
            return "done"
        if self.marker() is not None:
            return "redo (inputs changed)"
        return "resume" if self.keep_partial and self.output.exists() else "run"

    def execute(self) -> dict[str, Any]:
        if self.done():
            return self.marker() or {}
        if self.output.exists() and (self.marker() is not None or not self.keep_partial):
            remove_output(self.output)  # stale or half-written: never trusted
        self.marker_path.unlink(missing_ok=True)
        started = time.perf_counter()
        result = self.run()
        marker = {
            "stage": self.key,
            "fingerprint": self.fingerprint,
            "seconds": round(time.perf_counter() - started, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "result": result,
        }
        atomic_write_json(self.marker_path, marker)
        return marker


def remove_output(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


class RunLock:
    """One ``sftscope run`` per folder: a lock file naming the pid (stale locks of dead
    processes, e.g. after kill -9, are taken over)."""

    def __init__(self, root: Path):
        self.path = root / ".lock"

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            try:
                pid = int(self.path.read_text().strip() or 0)
            except ValueError:
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise SftscopeError(f"{self.path.parent}: another sftscope run (pid {pid}) uses it")
        atomic_write_text(self.path, str(os.getpid()))
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
