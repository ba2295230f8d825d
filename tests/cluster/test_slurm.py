"""The slurm executor against a real one-node SLURM (``conftest.slurm``): real ``sbatch`` job
arrays through submitit give the local executor's results; ``array_parallelism`` holds; a job
SLURM cannot start is one line within the grace; a job cancelled mid-cell is reported with its
log, and a rerun finishes only what was left, with identical results."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import SLURM, cluster_grid, run_errors, run_grid, run_log, slurm_cell_training
from helpers import GRID_CELLS, grid_results, same_weights
from slurm_node import SlurmNode

pytestmark = pytest.mark.slow


def _most_at_once(node: SlurmNode) -> dict[str, int]:
    """Per array (slurmctld's log): the most of its tasks that ran at the same time."""
    text = (node.root / "logs" / "slurmctld.log").read_text()
    events = []
    pattern = r"\[([\d\-T:.]+)\] (?:sched: )?(Allocate|_job_complete:) JobId=(\d+)_\d+\S* "
    for stamp, what, array in re.findall(pattern + r"(?:NodeList|done)", text):
        t = datetime.fromisoformat(stamp).timestamp()
        events.append((t, what == "Allocate", array))
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    for _, start, array in sorted(events, key=lambda e: (e[0], e[1])):
        running[array] = running.get(array, 0) + (1 if start else -1)
        most[array] = max(most.get(array, 0), running[array])
    return most


def test_real_job_arrays_give_the_local_results(
    slurm: SlurmNode, local_run: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = cluster_grid(tmp_path, tiny_model_dir)
    assert run_grid(path, *SLURM, "executor.slurm.array_parallelism=1") == 0, run_log(path)
    run = tmp_path / "run"
    assert grid_results(run) == grid_results(local_run)
    same_weights(run, local_run)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["executor"] == "slurm"
    assert all(c["status"] == "done" for c in manifest["cells"].values())
    most = _most_at_once(slurm)
    assert most and max(most.values()) == 1, most  # array_parallelism=1 on a 2-CPU node
    # a cluster without accounting: submitit's failing sacct is said once, not every poll
    text = (path.parent / "run.log").read_text()
    assert text.count("keeps no accounting") == 1 and "accounting storage is disabled" not in text


def test_a_job_slurm_cannot_start_is_one_line(
    slurm: SlurmNode, tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = cluster_grid(tmp_path, tiny_model_dir)
    t0 = time.monotonic()
    rc = run_grid(
        path,
        *SLURM,
        f"executor.slurm.cpus_per_job={slurm.cpus * 4}",
        "executor.slurm.unschedulable_grace_s=3",
        timeout=120,
    )
    assert rc == 2 and time.monotonic() - t0 < 90, run_log(path)
    errors = run_errors(path)
    assert len(errors) == 1, run_log(path)
    assert "PartitionConfig" in errors[0]
    assert f"cpus_per_job {slurm.cpus * 4} > partition test's {slurm.cpus} CPUs a node" in errors[0]
    assert not slurm.run("squeue", "-h").strip()  # the array was cancelled


def test_a_job_cancelled_mid_cell_is_reported_and_a_rerun_finishes_it(
    slurm: SlurmNode, local_run: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    run, cell = tmp_path / "run", GRID_CELLS[1]
    path, driver, task = slurm_cell_training(tmp_path, tiny_model_dir, cell)
    # a plain scancel, as a user would: SIGTERM (which submitit bypasses), then SIGKILL after
    # KillWait; the cell's training lasts longer than that, so the kill lands mid-cell
    slurm.run("scancel", task)
    assert driver.wait(timeout=600) == 2, run_log(path)
    error = run_errors(path)[0]
    assert f"cell/{cell}" in error and str(run / "logs" / f"cell--{cell}.log") in error, error
    assert not (run / "eval" / cell / "stage.json").exists()
    finished = {p: p.read_text() for p in run.rglob("stage.json")}
    assert run_grid(path, *SLURM) == 0, run_log(path)
    changed = [str(p) for p, text in finished.items() if p.read_text() != text]
    assert not changed, f"finished stages were redone: {changed}"
    assert grid_results(run) == grid_results(local_run)
    same_weights(run, local_run)
