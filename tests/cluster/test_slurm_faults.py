"""Faults on the real one-node SLURM (``conftest.slurm``, ``KillWait`` 2 s, cells that train
longer): a job requeued by an admin reruns and the run completes; a job past its time limit is
requeued ``max_requeues`` times, then reported; ``slurmd`` stopped with jobs queued fails the
run with one line after the grace, or, back in time, lets it complete."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from conftest import SLURM, cluster_grid, run_errors, run_grid, run_log, slurm_cell_training
from helpers import GRID_CELLS, grid_results, same_weights
from slurm_node import SlurmNode

pytestmark = pytest.mark.slow


def _restarts(node: SlurmNode, task: str) -> int:
    """How many times SLURM has requeued the array task ``A_T``."""
    found = re.search(r"Restarts=(\d+)", node.run("scontrol", "show", "job", task))
    return int(found.group(1)) if found else 0


def test_a_requeued_job_reruns_and_the_run_completes(
    slurm: SlurmNode, local_run: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    path, driver, task = slurm_cell_training(tmp_path, tiny_model_dir, GRID_CELLS[1])
    probes = {p: p.read_text() for p in (run / "probe").rglob("stage.json")}
    slurm.run("scontrol", "requeue", task)  # as an admin draining a node would
    assert driver.wait(timeout=600) == 0, run_log(path)
    assert _restarts(slurm, task) == 1
    assert all(p.read_text() == text for p, text in probes.items())
    assert grid_results(run) == grid_results(local_run)
    same_weights(run, local_run)


def test_a_job_past_its_time_limit_is_requeued_then_reported(
    slurm: SlurmNode, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # one cell that trains for minutes, under a 1-minute limit: submitit's USR2 (sent 90 s
    # before the limit, so at once) requeues it once, and the second time reports it
    path = cluster_grid(tmp_path, tiny_model_dir)
    limits = ["executor.slurm.timeout_min=1", "executor.slurm.max_requeues=1"]
    t0 = time.monotonic()
    rc = run_grid(path, *SLURM, *limits, "levels=[1]", "sizes=[4]", "train.epochs=40000")
    assert rc == 2, run_log(path)
    assert time.monotonic() - t0 < 400
    (error,) = run_errors(path)
    assert "cell/1-4-0" in error
    assert (
        "SLURM timed the job out 2 times (executor.slurm.timeout_min=1, requeued "
        "max_requeues=1 times): raise executor.slurm.timeout_min" in error
    ), error
    arrays = (p.name for p in (tmp_path / "run" / "logs" / "slurm").iterdir() if "_" not in p.name)
    task = f"{max(arrays, key=int)}_1"  # the cells' array: base eval, then the cell
    assert _restarts(slurm, task) == 1


def _stop_slurmd_with_cells_queued(slurm: SlurmNode, tmp_path: Path, model: Path, grace: int):
    """Start the grid with one cell at a time, and stop slurmd while the first one trains and
    the others wait in the queue."""
    one = ["executor.slurm.array_parallelism=1", f"executor.slurm.unschedulable_grace_s={grace}"]
    path, driver, _ = slurm_cell_training(tmp_path, model, GRID_CELLS[0], *one)
    slurm.stop_daemon("slurmd")
    return path, driver


def test_slurmd_stopped_past_the_grace_is_one_line_and_a_rerun_completes(
    slurm: SlurmNode, local_run: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    path, driver = _stop_slurmd_with_cells_queued(slurm, tmp_path, tiny_model_dir, grace=5)
    try:
        rc = driver.wait(timeout=180)  # the node is DOWN after ~15 s, then 5 s of grace
    finally:
        slurm.restart_slurmd()
    assert rc == 2, run_log(path)
    (error,) = run_errors(path)
    assert "pending ReqNodeNotAvail for over 5 s; cancelled" in error, error
    assert "the nodes it needs are down, drained or reserved (sinfo -R)" in error, error
    slurm.wait_empty()
    assert run_grid(path, *SLURM) == 0, run_log(path)
    assert grid_results(tmp_path / "run") == grid_results(local_run)


def test_slurmd_back_within_the_grace_the_run_completes(
    slurm: SlurmNode, local_run: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    path, driver = _stop_slurmd_with_cells_queued(slurm, tmp_path, tiny_model_dir, grace=120)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "DOWN" not in slurm.run("squeue", "-h", "-o", "%r"):
            time.sleep(1)  # the queued cells wait on a DOWN node
        assert driver.poll() is None, run_log(path)
    finally:
        slurm.restart_slurmd()
    assert driver.wait(timeout=600) == 0, run_log(path)
    assert grid_results(tmp_path / "run") == grid_results(local_run)
    same_weights(tmp_path / "run", local_run)
