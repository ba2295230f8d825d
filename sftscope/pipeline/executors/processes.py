"""``executor: processes``: one fresh worker process per job, at most ``workers`` at once. On a
GPU box a worker per visible GPU, each process given ``CUDA_VISIBLE_DEVICES`` naming its own;
on CPUs the cores are split between the workers (torch threads). A fresh process per job frees
all of a job's memory when it ends, and a worker killed (``kill -9``, out of memory) fails only
its own job.

The processes are forked from a ``multiprocessing`` forkserver that has imported torch,
transformers and TRL once (never CUDA), so a job starts in a fraction of a second instead of
re-importing them (~5 s each on a small CPU): the standard library's mechanism, not a pool of
our own.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed

from sftscope.config.executors import ExecutorConfig
from sftscope.layout import RunLayout
from sftscope.pipeline.executors import Failure, error_line, write_job
from sftscope.pipeline.stage import Job

# What every job imports; the forkserver imports it once (a module that fails is skipped).
PRELOAD = [
    "sftscope.pipeline.worker",
    "sftscope.pipeline.runners",
    "sftscope.train",
    "sftscope.evaluate",
    "sftscope.probe",
    "sftscope.token_kl",
    "sftscope.restore_sweep",
    "sftscope.params.diff",
    "sftscope.models.engines",
]


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else all CUDA devices."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def default_workers(cfg: ExecutorConfig, gpus: bool) -> int:
    """``workers``, or one per visible GPU, or one per 2 CPU cores; never more than the GPUs."""
    n_gpus = len(visible_gpus()) if gpus else 0
    workers = cfg.workers or n_gpus or max(1, (os.cpu_count() or 2) // 2)
    return min(workers, n_gpus) if n_gpus else workers


class ProcessExecutor:
    default_workers = staticmethod(default_workers)

    def __init__(self, cfg: ExecutorConfig, layout: RunLayout, gpus: bool = False):
        self.cfg, self.layout = cfg, layout
        self.gpus = visible_gpus() if gpus else []
        self.workers = default_workers(cfg, gpus)
        methods = multiprocessing.get_all_start_methods()
        method = "forkserver" if "forkserver" in methods else "spawn"
        self.ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            self.ctx.set_forkserver_preload(PRELOAD)

    def _one(self, job: Job, slots: queue.Queue) -> Failure | None:
        path = write_job(self.layout, job)
        log_path = self.layout.log(job.name)
        gpu = slots.get()
        threads = None if gpu is not None else max(1, (os.cpu_count() or 1) // self.workers)
        try:
            args = (str(path), gpu, threads, self.cfg.claim_timeout_s)
            proc = self.ctx.Process(target=_child, name=job.name, args=args)
            proc.start()
            proc.join()
        finally:
            slots.put(gpu)
        code = proc.exitcode
        if code == 0:
            return None
        how = f"killed by signal {-code}" if code and code < 0 else f"exit code {code}"
        try:
            cause = error_line(log_path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            cause = "no log"
        return Failure(job.name, f"{how}: {cause}", log_path)

    def close(self) -> None:
        pass

    def run(self, jobs: list[Job], on_done: Callable[[Job], None]) -> list[Failure]:
        slots: queue.Queue = queue.Queue()
        for k in range(self.workers):
            slots.put(self.gpus[k] if self.gpus else None)
        failures = []
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            futures = {pool.submit(self._one, job, slots): job for job in jobs}
            for fut in as_completed(futures):
                failure = fut.result()
                if failure is None:
                    on_done(futures[fut])
                else:
                    failures.append(failure)
        return failures


def _child(job_file: str, gpu: str | None, threads: int | None, claim_timeout_s: float) -> None:
    """A worker process: its GPU and thread count set before torch touches either."""
    import sys

    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the user's setting wins
    from sftscope.pipeline.worker import run_job_file

    try:
        run_job_file(job_file, log=True, claim_timeout_s=claim_timeout_s)
    except Exception:  # noqa: BLE001 - already in the job's log
        sys.exit(2)
