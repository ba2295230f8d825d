"""The cluster tests' cluster: a one-node SLURM started for the session (``slurm_node``), and
the tiny grid's reference results under the local executor. Where the daemons cannot run the
tests skip with the reason, unless ``SFTSCOPE_CLUSTER_REQUIRED=1`` (``make test-cluster``,
CI) makes that a failure."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import cli_run, grid_yaml
from slurm_node import SlurmNode, missing


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmNode]:
    why = missing()
    if why:
        if os.environ.get("SFTSCOPE_CLUSTER_REQUIRED") == "1":
            pytest.fail(f"the cluster tests must run here: {why}")
        pytest.skip(why)
    node = SlurmNode(tmp_path_factory.mktemp("slurm"), kill_wait=2).start()
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(node.conf)  # sbatch, squeue, scancel of the drivers
    try:
        yield node
    finally:
        node.stop()
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before


SLURM = [  # the grid's overrides for the test node: a job fits its CPUs, states polled often
    "executor.kind=slurm",
    "executor.slurm.cpus_per_job=1",
    "executor.slurm.mem_gb=1",
    "executor.slurm.poll_s=0.5",
    "executor.probe_shards=2",
]


def run_grid(path: Path, *args: str, timeout: float = 900) -> int:
    """``sftscope run PATH ARGS`` to its end: the exit status."""
    return cli_run(path, *args).wait(timeout=timeout)


def run_log(path: Path) -> str:
    """The end of what the runs of the grid at PATH printed (for assertion messages)."""
    return (path.parent / "run.log").read_text()[-4000:]


def run_errors(path: Path) -> list[str]:
    """The ``error:`` lines the runs of the grid at PATH printed."""
    return [x for x in run_log(path).splitlines() if x.startswith("error:")]


def slurm_cell_training(
    tmp_path: Path, model: Path, cell: str, *args: str
) -> tuple[Path, subprocess.Popen, str]:
    """:func:`cluster_grid` driven on SLURM (``ARGS`` added), waited for until ``cell``
    trains: the grid's path, the driver, and the array task running the cell."""
    path = cluster_grid(tmp_path, model)
    driver = cli_run(path, *SLURM, *args)
    return path, driver, job_in_training(driver, tmp_path / "run", cell, path)


def job_in_training(driver: subprocess.Popen, run: Path, cell: str, path: Path) -> str:
    """Wait until ``cell``'s job is training (its loss in its log): the SLURM array task
    (``A_T``) running it, from its claim. A cell then has seconds to go, more than KillWait."""
    log, deadline = run / "logs" / f"cell--{cell}.log", time.time() + 600
    while driver.poll() is None and time.time() < deadline:
        try:
            task = json.loads((run / "claims" / f"cell--{cell}.json").read_text())["scheduler_job"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            task = None
        if task and log.exists() and "'loss'" in log.read_text(errors="replace"):
            return task
        time.sleep(0.05)
    raise AssertionError(f"no job training cell {cell}: {run_log(path)}")


def cluster_grid(tmp_path: Path, model: Path) -> Path:
    """The tiny grid with cells that train for several seconds (longer than the node's
    ``KillWait``), so a job can be cancelled mid-cell."""
    return grid_yaml(tmp_path, model, train={"batch_size": 4, "learning_rate": 1e-3, "epochs": 400})


@pytest.fixture(scope="session")
def local_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`cluster_grid` under the local executor, in a subprocess like the others."""
    path = cluster_grid(tmp_path_factory.mktemp("local"), tiny_model_dir)
    assert cli_run(path).wait(timeout=900) == 0, (path.parent / "run.log").read_text()[-3000:]
    return path.parent / "run"
