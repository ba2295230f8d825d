"""The ray executor against a real Ray cluster (``ray start --head``, started and stopped by
this module, by its process group: no other Ray on the machine is touched): the same grid gives
the local executor's results, and a worker killed mid-cell is reported with its log (tasks run
once: ``max_retries=0``), after which a rerun finishes only what was left."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import cluster_grid, run_errors, run_grid, run_log
from helpers import GRID_CELLS, cli_run, grid_results, same_weights
from slurm_node import free_port

pytestmark = pytest.mark.slow
RAY = Path(sys.executable).parent / "ray"


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A head started as a user would on a cluster: Ray's token authentication on (its default
    since 2.5x), the token in the environment of the head, of ``ray status`` and of the
    drivers (``cli_run`` passes ``os.environ`` on)."""
    pytest.importorskip("ray")
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # (short: Ray's socket paths are bounded)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", "--num-cpus", "2", f"--port={port}"]
        + ["--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped below, and only it
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            status = subprocess.run(
                [str(RAY), "status", f"--address={address}"], env=env, capture_output=True
            )
            if status.returncode == 0:
                break
            assert head.poll() is None and time.monotonic() < deadline, "ray head did not start"
            time.sleep(1)
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_a_ray_cluster_gives_the_local_results(
    ray_address: str, local_run: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = cluster_grid(tmp_path, tiny_model_dir)
    args = ["executor.kind=ray", f"executor.ray.address={ray_address}"]
    assert run_grid(path, *args) == 0, run_log(path)
    run = tmp_path / "run"
    assert grid_results(run) == grid_results(local_run)
    same_weights(run, local_run)
    assert json.loads((run / "manifest.json").read_text())["executor"] == "ray"


def test_a_ray_worker_killed_mid_cell_is_reported_then_rerun(
    ray_address: str, local_run: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = cluster_grid(tmp_path, tiny_model_dir)
    args = ["executor.kind=ray", f"executor.ray.address={ray_address}"]
    run, cell = tmp_path / "run", GRID_CELLS[1]
    driver = cli_run(path, *args)
    deadline, pid = time.time() + 600, None
    while driver.poll() is None and time.time() < deadline:
        try:
            pid = json.loads((run / "claims" / f"cell--{cell}.json").read_text())["pid"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pid = None
        if pid and (run / "models" / f".{cell}.partial").exists():
            break
        time.sleep(0.05)
    assert pid, "no running cell task to kill: " + run_log(path)
    os.kill(pid, signal.SIGKILL)
    assert driver.wait(timeout=600) == 2, run_log(path)
    error = run_errors(path)[0]
    assert f"cell/{cell}" in error and str(run / "logs" / f"cell--{cell}.log") in error, error
    finished = {p: p.read_text() for p in run.rglob("stage.json")}
    assert run_grid(path, *args) == 0, run_log(path)
    changed = [str(p) for p, text in finished.items() if p.read_text() != text]
    assert not changed, f"finished stages were redone: {changed}"
    assert grid_results(run) == grid_results(local_run)
    same_weights(run, local_run)
