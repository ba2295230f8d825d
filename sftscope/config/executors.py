"""How the planned jobs of a grid run (``executor:`` in a grid YAML, ``--executor`` on the
CLI). No field changes results, so none is fingerprinted."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from sftscope.config.base import SHORTHANDS, StageConfig
from sftscope.registry import EXECUTORS

ExecutorKind = EXECUTORS.literal()


class SlurmSettings(StageConfig):
    """``executor: slurm``: submitit job arrays (one array per wave of the plan)."""

    partition: str | None = Field(None, description="SLURM partition")
    account: str | None = Field(None, description="SLURM account")
    qos: str | None = Field(None, description="SLURM quality of service")
    constraint: str | None = Field(None, description="SLURM node constraint, e.g. h100")
    timeout_min: int = Field(240, ge=1, description="time limit of one job, minutes")
    gpus_per_job: int = Field(1, ge=0, description="GPUs of one job")
    cpus_per_job: int = Field(8, ge=1, description="CPU cores of one job")
    mem_gb: int | None = Field(None, ge=1, description="memory of one job, GB (None: default)")
    array_parallelism: int = Field(64, ge=1, description="jobs of one array running at once")
    max_requeues: int = Field(3, ge=0, description="requeues after preemption or timeout")
    additional: dict[str, Any] = Field(
        {}, description="more sbatch parameters, e.g. {'exclude': 'node7'}"
    )
    cluster: Literal["slurm", "local", "debug"] | None = Field(
        None,
        description="submitit cluster; None: slurm (sbatch must be on PATH); local: "
        "submitit's local executor, every job of an array at once on this machine",
    )
    poll_s: float = Field(10.0, gt=0, description="seconds between job state checks")
    unschedulable_grace_s: float = Field(
        120.0,
        gt=0,
        description="a job pending this long for a reason SLURM cannot resolve by waiting "
        "(PartitionConfig, ReqNodeNotAvail, BadConstraints, ...) is cancelled and reported",
    )


class RaySettings(StageConfig):
    """``executor: ray``: one Ray task per job, each in a fresh worker process."""

    address: str | None = Field(
        None, description="cluster address ('auto' for a running one); None: a local cluster"
    )
    num_cpus: float = Field(1.0, gt=0, description="CPUs of one task")
    num_gpus: float | None = Field(
        None,
        ge=0,
        description="GPUs of one task; None: 1 when the cluster has GPUs and the run's "
        "device is not cpu, else 0",
    )
    local_cpus: int | None = Field(None, ge=1, description="CPUs of a local cluster")


class ExecutorConfig(StageConfig):
    """How the planned jobs run; never changes results (so no field is fingerprinted)."""

    kind: ExecutorKind = Field("local", description=f"who runs the jobs: {EXECUTORS.help()}")
    workers: int | None = Field(
        None,
        ge=1,
        description="processes: jobs at once (default: one per visible GPU, else 1 "
        "per 2 CPU cores); slurm, ray: the probe shards' default",
    )
    probe_shards: int | None = Field(
        None,
        ge=1,
        description="probe jobs in all, shared by the train and eval probes by size "
        "(default: workers; slurm 8; ray 4)",
    )
    claim_timeout_s: float = Field(
        600.0, gt=0, description="a claim not refreshed for this long is stale and taken over"
    )
    slurm: SlurmSettings = Field(SlurmSettings(), description="executor slurm settings")
    ray: RaySettings = Field(RaySettings(), description="executor ray settings")

    @classmethod
    def _from_name(cls, v: Any) -> Any:
        return {SHORTHANDS["executor"]: v} if isinstance(v, str) else v
