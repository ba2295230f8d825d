"""Executors: who runs the jobs a plan holds. One module each, one line in the registry
(:data:`sftscope.registry.EXECUTORS`); the grid never knows which one it has.

Every executor is handed a list of independent jobs (a wave of the plan: the probes' shards,
then the base evaluation and the cells), writes each as ``RUN/jobs/<job>.json`` where it runs
out of process, and reports the jobs that failed with their log paths. Nothing here schedules:
local runs in this process, ``processes`` keeps N worker processes busy (forked by the standard
library's forkserver), ``slurm`` submits job arrays through submitit, ``ray`` submits Ray
tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sftscope.config.executors import ExecutorConfig
from sftscope.layout import RunLayout
from sftscope.pipeline.stage import Job
from sftscope.registry import EXECUTORS


@dataclass(frozen=True)
class Failure:
    job: str
    error: str
    log: Path | None = None

    def line(self) -> str:
        return f"{self.job}: {self.error}" + (f" (log: {self.log})" if self.log else "")


def failures_line(failures: list[Failure]) -> str:
    """The failures as one line, the jobs of one cause together (an array SLURM cannot start
    is one cause, not one line per job)."""
    causes: dict[str, list[Failure]] = {}
    for f in failures:
        causes.setdefault(f.error, []).append(f)
    return "; ".join(
        fs[0].line() if len(fs) == 1 else f"{', '.join(f.job for f in fs)}: {cause}"
        for cause, fs in causes.items()
    )


def error_line(text: str, fallback: str = "no output") -> str:
    """The cause a failed job reported last: its ``error: …`` line or the exception line that
    ends its traceback (``ValueError: …``), else its last line."""
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error:") or "Error" in x.split(":")[0]]
    return (errors or lines or [fallback])[-1][:300]


class Executor(Protocol):
    def run(self, jobs: list[Job], on_done: Callable[[Job], None]) -> list[Failure]:
        """Run every job (in any order), call ``on_done`` as each finishes, return failures."""
        ...

    def close(self) -> None:
        """Release what the executor started (a local Ray cluster)."""
        ...


def make_executor(cfg: ExecutorConfig, layout: RunLayout, gpus: bool = False) -> Executor:
    """The executor ``cfg.kind`` names; ``gpus``: the run's stages want a GPU each."""
    return EXECUTORS.check(cfg.kind).load()(cfg, layout, gpus)


def probe_workers(cfg: ExecutorConfig, gpus: bool = False) -> int:
    """Probe jobs to plan in all (the grid shares them between its probes by size):
    ``probe_shards`` if set, else ``workers`` or its registry entry's ``workers`` (slurm 8,
    ray 4), or for an entry without one its class's ``default_workers`` (local 1; processes:
    one per visible GPU, else one per 2 cores)."""
    if cfg.probe_shards:
        return cfg.probe_shards
    entry = EXECUTORS[cfg.kind]
    if entry.workers is None:
        return entry.load().default_workers(cfg, gpus)
    return cfg.workers or entry.workers


def write_job(layout: RunLayout, job: Job) -> Path:
    """The job as JSON, for a worker in another process or on another host."""
    from sftscope.io import atomic_write_text

    return atomic_write_text(layout.job_file(job.name), job.model_dump_json(indent=1))
