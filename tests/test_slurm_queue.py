"""The slurm executor's queue check against ``squeue`` outputs seen on a real cluster (the
cluster tests, ``tests/cluster``, run the same against real daemons)."""

from __future__ import annotations

import pytest

from sftscope.config.executors import SlurmSettings
from sftscope.pipeline.executors import slurm

DOWN = "Nodes required for job are DOWN, DRAINED or reserved for jobs in higher priority partitions"


@pytest.fixture
def squeue(monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    """What the SLURM client commands print (None: the command fails)."""
    said: dict[str, str | None] = {"squeue": "", "scontrol": "", "sinfo": ""}
    monkeypatch.setattr(slurm, "_run", lambda cmd: said[cmd[0]])
    clock = iter(range(10, 10_000, 10))  # every check 10 s after the last
    monkeypatch.setattr(slurm.time, "monotonic", lambda: float(next(clock)))
    return said


def _queue(**kw: float) -> slurm._Queue:
    return slurm._Queue(SlurmSettings(poll_s=1, **kw))


@pytest.mark.parametrize(
    ("reason", "name"),
    [
        ("PartitionConfig", "PartitionConfig"),
        ("ReqNodeNotAvail, UnavailableNodes:node3", "ReqNodeNotAvail"),
        (DOWN, "ReqNodeNotAvail"),  # squeue's %r when the partition's nodes are down
        ("JobArrayTaskLimit", "JobArrayTaskLimit"),
    ],
)
def test_reason_names(reason: str, name: str) -> None:
    assert slurm._reason(reason) == name


def test_a_job_pending_on_down_nodes_is_reported_after_the_grace(squeue: dict) -> None:
    squeue["squeue"] = f"7_0|PENDING|{DOWN}\n7_1|PENDING|JobArrayTaskLimit\n"
    q = _queue(unschedulable_grace_s=25)
    assert q.check(["7_0", "7_1"]) == (None, {})  # seen: the grace starts
    assert q.check(["7_0", "7_1"]) == (None, {})  # 10 s
    stuck, ended = q.check(["7_0", "7_1"])  # 20 s
    assert stuck is None and not ended
    stuck, _ = q.check(["7_0", "7_1"])  # 30 s > 25
    assert stuck == (
        "SLURM cannot start job 7_0 (pending ReqNodeNotAvail for over 25 s; cancelled): "
        "the nodes it needs are down, drained or reserved (sinfo -R)"
    )


def test_waiting_reasons_and_a_node_back_in_time_end_the_grace(squeue: dict) -> None:
    q = _queue(unschedulable_grace_s=15)
    squeue["squeue"] = f"7_0|PENDING|{DOWN}\n"
    q.check(["7_0"])
    squeue["squeue"] = "7_0|PENDING|Priority\n"  # slurmd back: the job waits its turn
    q.check(["7_0"])
    squeue["squeue"] = f"7_0|PENDING|{DOWN}\n"  # down again: a new grace
    assert q.check(["7_0"]) == (None, {}) and q.check(["7_0"]) == (None, {})


def test_a_job_ended_or_gone_twice_without_a_result_is_ended(squeue: dict) -> None:
    q = _queue()
    squeue["squeue"] = "7_0|CANCELLED|None\n7_1|RUNNING|None\n"
    assert q.check(["7_0", "7_1"]) == (None, {})  # its result file may be on its way
    squeue["squeue"] = "7_1|RUNNING|None\n"  # 7_0 purged from the queue
    assert q.check(["7_0", "7_1"]) == (None, {"7_0": "gone from the queue"})


def test_the_controller_away_says_nothing(squeue: dict) -> None:
    squeue["squeue"] = squeue["scontrol"] = None
    q = _queue()
    for _ in range(4):
        assert q.check(["7_0"]) == (None, {})


def test_a_slurm_job_uses_the_cpus_it_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from sftscope.pipeline.worker import job_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert job_threads() is None  # torch's default
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert job_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert job_threads() == 1  # the user's setting wins
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    assert job_threads() == 3
