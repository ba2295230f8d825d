"""The cluster tests' cluster: a one-node SLURM started for the session (``slurm_node``), and
the tiny grid's reference results under the local executor. Where the daemons cannot run the
tests skip with the reason, unless ``SFTSCOPE_CLUSTER_REQUIRED=1`` (``make test-cluster``,
CI) makes that a failure."""

from __future__ import annotations

import os
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
