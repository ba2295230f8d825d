"""Resumable stages and jobs, the data the grid (:mod:`sftscope.pipeline.grid`) plans and an
executor (:mod:`sftscope.pipeline.executors`) runs.

A stage's output carries a fingerprint of what made it: the fields of the stage's config that
change results (:func:`sftscope.config.result_fields`) and the fingerprints of its inputs. A
stage is done when its output holds a ``stage.json`` marker with the expected fingerprint; the
marker is written last, after the output itself was written atomically, so a run killed at any
moment leaves outputs that are either complete or recognisably not.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from sftscope.io import content_digest, remove_atomic_leftovers

MARKER = "stage.json"
_PACKAGES = ("sftscope", "torch", "transformers", "trl", "peft", "accelerate", "datasets")


def fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def model_identity(name: str) -> dict[str, Any]:
    """A base model's identity for fingerprints: its name and, for a local folder, the config
    (or a PEFT adapter's) and the file sizes (cheap, and changes when the weights are
    replaced)."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return {"model": name}
    files = sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.is_file())
    cfg = path / "config.json"
    config = content_digest(cfg) if cfg.exists() else None
    identity = {"model": name, "files": files, "config": config}
    adapter = path / "adapter_config.json"  # a PEFT adapter folder: its rank, targets, base
    if adapter.exists() and not cfg.exists():
        identity["adapter_config"] = content_digest(adapter)
    return identity


class Stage(BaseModel):
    """One unit of work, as data: which runner (``kind``, see :mod:`sftscope.pipeline.runners`), its
    config as JSON, where it writes, and the fingerprint of what makes its result. Being plain
    data, a stage travels to any worker (a subprocess, a SLURM job, a Ray task) as JSON. Its
    output (a folder, or a file) is complete once its marker exists: ``OUTPUT/stage.json`` for
    a folder, ``OUTPUT.json`` beside a file. :func:`sftscope.pipeline.runners.execute` runs it
    and writes the marker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    kind: str
    config: dict[str, Any]
    output: Path
    fingerprint: str
    keep_partial: bool = False  # the stage resumes from its own partial output (the probe)
    marker_file: Path | None = None  # for a file output: where its marker lives
    inputs: dict[str, Path] = {}  # further paths the runner reads (restore: the cell's eval)

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

    def clear(self) -> None:
        """Remove an output that cannot be trusted: one made from other inputs, or (for a
        stage that does not resume) one left half-written."""
        if self.output.exists() and (self.marker() is not None or not self.keep_partial):
            remove_output(self.output)
        self.marker_path.unlink(missing_ok=True)
        for path in (self.output, self.marker_path):  # a killed write of a file output
            remove_atomic_leftovers(path)


class Job(BaseModel):
    """What one worker runs: stages in order (a cell's train, eval, kl, ... share one job), or
    one shard of a probe (``shard = (index, count)``: its chunks ``c % count == index``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    stages: list[Stage]
    shard: tuple[int, int] | None = None
    cell: bool = False  # a cell: retrain when its weights were deleted but are needed again
    keep_models: bool = True  # cell: false deletes the weights once every stage is done

    def done(self) -> bool:
        return self.shard is None and all(s.done() for s in self.stages)


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
