"""``executor: slurm``: each wave of the plan is one submitit job array (``sbatch --array``),
throttled by ``array_parallelism``. A job that SLURM preempts or times out is requeued by
submitit (``max_requeues`` times) and, its stages being resumable, picks up where it was. A
rerun of ``sftscope run`` submits only the jobs whose stages have no done-marker.
``slurm.cluster: local`` runs the same arrays through submitit's local executor (tests, or a
dry run on a workstation)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any

from sftscope.config.executors import ExecutorConfig
from sftscope.errors import SftscopeError
from sftscope.layout import RunLayout
from sftscope.pipeline.executors import Failure, error_line, write_job
from sftscope.pipeline.stage import Job


def _submitit() -> Any:
    """submitit, imported when used (its registry entry names it: a missing one is a one-line
    error before anything runs)."""
    import submitit

    return submitit


def job_runner() -> Any:
    """The callable a SLURM job runs: checkpointable, so a preempted or timed-out job is
    requeued with the same arguments (its finished stages are skipped on the way back)."""
    submitit = _submitit()
    from sftscope.pipeline.worker import run_job_file

    class RunJob(submitit.helpers.Checkpointable):
        def __call__(self, job_file: str, claim_timeout_s: float) -> str:
            return run_job_file(job_file, log=True, claim_timeout_s=claim_timeout_s)

    return RunJob()


class SlurmExecutor:
    def __init__(self, cfg: ExecutorConfig, layout: RunLayout, gpus: bool = False):
        submitit = _submitit()
        s = cfg.slurm
        cluster = s.cluster or "slurm"
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise SftscopeError(
                "executor 'slurm': no sbatch on PATH (not a SLURM login node?); "
                "executor.slurm.cluster=local runs the jobs on this machine"
            )
        self.cfg, self.layout = cfg, layout
        self.executor = submitit.AutoExecutor(
            folder=str(layout.slurm_logs / "%j"),
            cluster=cluster,
            slurm_max_num_timeout=s.max_requeues,
        )
        params: dict[str, Any] = {
            "name": f"sftscope-{layout.root.name}",
            "timeout_min": s.timeout_min,
            "cpus_per_task": s.cpus_per_job,
            "mem_gb": s.mem_gb,
            "gpus_per_node": s.gpus_per_job if gpus else 0,
            "slurm_array_parallelism": s.array_parallelism,
            "slurm_partition": s.partition,
            "slurm_account": s.account,
            "slurm_qos": s.qos,
            "slurm_constraint": s.constraint,
        }
        if s.additional:
            params["slurm_additional_parameters"] = dict(s.additional)
        self.executor.update_parameters(**{k: v for k, v in params.items() if v is not None})

    def close(self) -> None:
        pass

    def run(self, jobs: list[Job], on_done: Callable[[Job], None]) -> list[Failure]:
        if not jobs:
            return []
        files = [str(write_job(self.layout, job)) for job in jobs]
        timeouts = [self.cfg.claim_timeout_s] * len(jobs)
        submitted = self.executor.map_array(job_runner(), files, timeouts)
        pending = dict(zip(submitted, jobs, strict=True))
        failures = []
        while pending:
            for handle in [h for h in pending if h.done()]:
                job = pending.pop(handle)
                try:
                    handle.result()
                except Exception as e:  # noqa: BLE001 - reported with the job's log
                    cause = error_line(str(e), type(e).__name__)  # (submitit: the whole trace)
                    failures.append(Failure(job.name, cause, self.layout.log(job.name)))
                else:
                    on_done(job)
            if pending:
                time.sleep(self.cfg.slurm.poll_s)
        return failures
