"""``executor: slurm``: each wave of the plan is one submitit job array (``sbatch --array``),
throttled by ``array_parallelism``. A job that SLURM preempts or times out is requeued by
submitit (``max_requeues`` times) and, its stages being resumable, picks up where it was. A
rerun of ``sftscope run`` submits only the jobs whose stages have no done-marker.
``slurm.cluster: local`` runs the same arrays through submitit's local executor (tests, or a
dry run on a workstation).

A job that SLURM will never start (it asks for more than the partition has: squeue's reason
``PartitionConfig``; a constraint no node has; ...) would leave the driver polling forever: after
``unschedulable_grace_s`` its array is cancelled and the run fails with the reason and the fix.
A cluster without accounting would make submitit's every poll run ``sacct`` and print its error:
said once, and the jobs' states come from ``squeue``."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

from sftscope.config.executors import ExecutorConfig
from sftscope.errors import SftscopeError
from sftscope.layout import RunLayout
from sftscope.pipeline.executors import Failure, error_line, write_job
from sftscope.pipeline.stage import Job

log = logging.getLogger(__name__)

# Pending reasons that waiting does not resolve (squeue's %r), and what to do about each.
NEVER = {
    "PartitionConfig": "the job asks for more than the partition allows (sinfo -o '%P %c %m %l')",
    "BadConstraints": "no node has executor.slurm.constraint",
    "ReqNodeNotAvail": "the nodes it needs are down, drained or reserved (sinfo -R)",
    "NodeDown": "the nodes it needs are down (sinfo -R)",
    "PartitionNodeLimit": "the job asks for more nodes than the partition allows",
    "PartitionTimeLimit": "executor.slurm.timeout_min is above the partition's time limit",
    "PartitionDown": "the partition is down (sinfo)",
    "PartitionInactive": "the partition is inactive (sinfo)",
    "InvalidAccount": "executor.slurm.account is not one of yours (sacctmgr show assoc)",
    "InvalidQOS": "executor.slurm.qos is not one of yours (sacctmgr show assoc)",
}
# squeue prints some reasons as SLURM's description of them, not their name
DESCRIBED = {"Nodes required for job are DOWN, DRAINED": "ReqNodeNotAvail"}


def _reason(text: str) -> str:
    """squeue's ``%r`` as a reason's name: ``ReqNodeNotAvail, UnavailableNodes:n1`` and
    ``Nodes required for job are DOWN, DRAINED or reserved ...`` are both ReqNodeNotAvail."""
    for prefix, name in DESCRIBED.items():
        if text.startswith(prefix):
            return name
    return text.split(",")[0].strip()


def _submitit() -> Any:
    """submitit, imported when used (its registry entry names it: a missing one is a one-line
    error before anything runs)."""
    import submitit

    # its own stdout and stderr handlers print each warning twice, and ours a third time
    sub_log = logging.getLogger("submitit")
    for handler in [h for h in sub_log.handlers if h.name in ("submitit_out", "submitit_err")]:
        sub_log.removeHandler(handler)
    return submitit


def _without_accounting(submitit: Any) -> None:
    """A cluster without accounting: submitit's job watcher would run ``sacct`` at every state
    check, and each run print its error. Its checks are skipped (said once, here); a job's end
    is then its result file, or :class:`_Queue`'s ``squeue`` for a job that died without one."""
    slurm = submitit.slurm.slurm
    if type(slurm.SlurmJob.watcher).__name__ == "NoSacct":  # (a driver's second executor)
        return
    if _run(["sacct", "-n", "-X", "-j", "1", "-o", "JobID"]) is not None:
        return

    class NoSacct(slurm.SlurmInfoWatcher):
        def update(self) -> None:
            return None

    slurm.SlurmJob.watcher = NoSacct(delay_s=600)
    log.warning("this SLURM cluster keeps no accounting (sacct fails): job states from squeue")


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
        self.cfg, self.layout, self.cluster = cfg, layout, cluster
        if cluster == "slurm":
            _without_accounting(submitit)
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

    def _cause(self, e: Exception) -> str:
        """A failed job's cause in one line; a job that ran out of requeues says which knobs."""
        if "timed-out too many times" in str(e):  # submitit's UncompletedJobError
            s = self.cfg.slurm
            return (
                f"SLURM timed the job out {s.max_requeues + 1} times (executor.slurm."
                f"timeout_min={s.timeout_min}, requeued max_requeues={s.max_requeues} times): "
                "raise executor.slurm.timeout_min"
            )
        return error_line(str(e), type(e).__name__)  # (submitit's: the whole remote trace)

    def run(self, jobs: list[Job], on_done: Callable[[Job], None]) -> list[Failure]:
        if not jobs:
            return []
        files = [str(write_job(self.layout, job)) for job in jobs]
        timeouts = [self.cfg.claim_timeout_s] * len(jobs)
        submitted = self.executor.map_array(job_runner(), files, timeouts)
        pending = dict(zip(submitted, jobs, strict=True))
        failures: list[Failure] = []
        queue = _Queue(self.cfg.slurm) if self.cluster == "slurm" else None
        while pending:
            for handle in [h for h in pending if h.done()]:
                job = pending.pop(handle)
                try:
                    handle.result()
                except Exception as e:  # noqa: BLE001 - reported with the job's log
                    failures.append(Failure(job.name, self._cause(e), self.layout.log(job.name)))
                else:
                    on_done(job)
            stuck, ended = (
                queue.check([h.job_id for h in pending]) if queue and pending else (None, {})
            )
            for handle in [h for h in pending if h.job_id in ended and not h.done()]:
                cause = f"SLURM job {handle.job_id} ended {ended[handle.job_id]} without a result"
                failures.append(
                    Failure(pending[handle].name, cause, self.layout.log(pending[handle].name))
                )
                del pending[handle]
            if stuck:
                _run(["scancel", *sorted({h.job_id.split("_")[0] for h in pending})])
                return failures + [Failure(job.name, stuck) for job in pending.values()]
            if pending:
                time.sleep(self.cfg.slurm.poll_s)
        return failures


def _run(cmd: list[str]) -> str | None:
    """A SLURM client command's output (None when it fails: the controller may be away)."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


# States of a job that has ended (squeue -t all keeps them for the cluster's MinJobAge).
ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
ENDED |= {"BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}


class _Queue:
    """What ``squeue`` says of the jobs still waited for, every few polls. submitit learns of a
    job that died without a result (cancelled, killed past ``KillWait``, a failed node) from
    ``sacct``, which a cluster without accounting lacks: there the driver would wait forever.
    So a job seen ended (or gone from the queue) twice without a result is reported, and a
    reason of :data:`NEVER` held for ``unschedulable_grace_s`` cancels the wave."""

    def __init__(self, s: Any):
        self.s = s
        self.since: dict[str, float] = {}  # job -> when its NEVER reason was first seen
        self.seen_ended: dict[str, int] = {}
        self.checked = 0.0

    def check(self, job_ids: list[str]) -> tuple[str | None, dict[str, str]]:
        """(the line that reports a job SLURM cannot start, or None; {job: how it ended})"""
        now = time.monotonic()
        if now - self.checked < min(self.s.poll_s * 3, 30.0):
            return None, {}
        self.checked = now
        out = _run(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%r"])
        if out is None:
            if _run(["scontrol", "ping"]) is None:  # the controller is away: nothing is known
                return None, {}
            # (squeue rejects a list holding an id it has purged: asked one by one)
            out = "".join(
                _run(["squeue", "-h", "-t", "all", "-j", j, "-o", "%i|%T|%r"]) or ""
                for j in job_ids
            )
        rows = {r[0]: r[1:] for r in (x.split("|") for x in out.splitlines()) if len(r) == 3}
        reasons, ended = {}, {}
        for job in job_ids:
            state, reason = rows.get(job, ("gone from the queue", ""))
            reason = _reason(reason)
            if state == "PENDING" and reason in NEVER:
                reasons[job] = reason
            if state in ENDED or job not in rows:
                self.seen_ended[job] = self.seen_ended.get(job, 0) + 1
                if self.seen_ended[job] >= 2:  # (twice: its result file may be on its way)
                    ended[job] = state
        self.since = {j: self.since.get(j, now) for j in reasons}
        late = [j for j, t in self.since.items() if now - t >= self.s.unschedulable_grace_s]
        if not late:
            return None, ended
        reason = reasons[late[0]]
        return (
            f"SLURM cannot start job {late[0]} (pending {reason} for over "
            f"{self.s.unschedulable_grace_s:g} s; cancelled): {self._fix(reason)}"
        ), ended

    def _fix(self, reason: str) -> str:
        """For ``PartitionConfig``, which of the job's asks exceeds the partition's nodes."""
        if reason != "PartitionConfig":
            return NEVER[reason]
        rows = [r.split("|") for r in (_run(["sinfo", "-h", "-o", "%P|%c|%m"]) or "").splitlines()]
        want = self.s.partition
        nodes = [
            r
            for r in rows
            if len(r) == 3 and (r[0].rstrip("*") == want or (want is None and r[0].endswith("*")))
        ]
        if not nodes:
            return NEVER[reason]
        name = nodes[0][0].rstrip("*")
        cpus = max(int(r[1].rstrip("+")) for r in nodes)
        mem_gb = max(int(r[2].rstrip("+")) for r in nodes) // 1024
        if self.s.cpus_per_job > cpus:
            return (
                f"executor.slurm.cpus_per_job {self.s.cpus_per_job} > partition {name}'s "
                f"{cpus} CPUs a node"
            )
        if self.s.mem_gb is not None and self.s.mem_gb > mem_gb:
            return (
                f"executor.slurm.mem_gb {self.s.mem_gb} > partition {name}'s {mem_gb} GB per node"
            )
        return NEVER[reason]
