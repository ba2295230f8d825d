"""``executor: ray``: one Ray task per job, on an existing cluster (``ray.address``) or on a
local one started for the run. Each task asks for ``num_cpus``/``num_gpus`` (Ray sets
``CUDA_VISIBLE_DEVICES``) and runs in a fresh worker process (``max_calls=1``: a job's models
are freed with its process). Ray is an optional extra: ``pip install 'sftscope[ray]'``."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from sftscope.config.executors import ExecutorConfig
from sftscope.layout import RunLayout
from sftscope.pipeline.executors import Failure, write_job
from sftscope.pipeline.stage import Job


def _ray() -> Any:
    """Ray, imported when used (its registry entry names it: a missing one is a one-line error
    before anything runs)."""
    import ray

    return ray


class RayExecutor:
    def __init__(self, cfg: ExecutorConfig, layout: RunLayout, gpus: bool = False):
        ray = _ray()
        s = cfg.ray
        self.cfg, self.layout = cfg, layout
        self._started = not ray.is_initialized()
        if self._started:
            if s.address is None:  # a cluster of our own: no usage reports (offline machines)
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(
                address=s.address,
                num_cpus=s.local_cpus if s.address is None else None,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        from sftscope.pipeline.worker import run_job_file

        num_gpus = s.num_gpus
        if num_gpus is None:  # a GPU per task where there are GPUs (a CPU cluster would hang)
            num_gpus = 1 if gpus and ray.cluster_resources().get("GPU", 0) > 0 else 0
        self.task = ray.remote(num_cpus=s.num_cpus, num_gpus=num_gpus, max_calls=1, max_retries=0)(
            run_job_file
        )

    def run(self, jobs: list[Job], on_done: Callable[[Job], None]) -> list[Failure]:
        ray = _ray()
        refs = {
            self.task.remote(str(write_job(self.layout, job)), True, self.cfg.claim_timeout_s): job
            for job in jobs
        }
        failures, pending = [], list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            job = refs[ready[0]]
            try:
                ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - reported with the job's log
                cause = getattr(e, "cause", None) or e
                failures.append(
                    Failure(
                        job.name,
                        f"{type(cause).__name__}: {cause}"[:300],
                        self.layout.log(job.name),
                    )
                )
            else:
                on_done(job)
        return failures

    def close(self) -> None:
        if self._started:
            _ray().shutdown()
