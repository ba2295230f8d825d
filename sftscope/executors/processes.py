"""``executor: processes``: one ``python -m sftscope.worker JOB.json`` subprocess per job, at
most ``workers`` at once. On a GPU box a worker per visible GPU, each subprocess started with
``CUDA_VISIBLE_DEVICES`` naming its own; on CPUs the cores are split between the workers
(``OMP_NUM_THREADS``). A fresh process per job frees all of a job's memory when it ends, and a
worker killed (``kill -9``, out of memory) fails only its own job."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed

from sftscope.config import ExecutorConfig
from sftscope.executors import Failure, write_job
from sftscope.layout import RunLayout
from sftscope.stages import Job


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
    def __init__(self, cfg: ExecutorConfig, layout: RunLayout, gpus: bool = False):
        self.cfg, self.layout = cfg, layout
        self.gpus = visible_gpus() if gpus else []
        self.workers = default_workers(cfg, gpus)

    def _env(self, gpu: str | None) -> dict[str, str]:
        env = dict(os.environ, SFTSCOPE_CLAIM_TIMEOUT_S=str(self.cfg.claim_timeout_s))
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        else:  # split the cores (unless the user set the threads)
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.workers)))
        return env

    def _one(self, job: Job, slots: queue.Queue) -> Failure | None:
        path = write_job(self.layout, job)
        log_path = self.layout.log(job.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        gpu = slots.get()
        try:
            with open(log_path, "a", encoding="utf-8") as log:
                code = subprocess.call([sys.executable, "-m", "sftscope.worker", str(path)],
                                       env=self._env(gpu), stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)  # fmt: skip
        finally:
            slots.put(gpu)
        if code == 0:
            return None
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return Failure(job.name, f"{how}: {_last_line(log_path)}", log_path)

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


def _last_line(path) -> str:
    """The error a failed worker printed last (its ``error:`` line, or the traceback's end)."""
    try:
        lines = [x for x in path.read_text(encoding="utf-8", errors="replace").splitlines()
                 if x.strip()]  # fmt: skip
    except OSError:
        return "no log"
    errors = [x for x in lines if x.startswith("error:") or "Error" in x.split(":")[0]]
    return (errors or lines or ["no output"])[-1][:300]
