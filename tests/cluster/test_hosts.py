"""Two drivers on one run folder from two hosts: each driver runs in its own UTS and network
namespace (``unshare``) with its own hostname, as on two machines sharing a filesystem. The
second is refused while the first's claim is fresh; once the first host is dead, its claim is
taken over only after ``executor.claim_timeout_s``, and the run then completes with the results
of one uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import cluster_grid, run_errors, run_log
from helpers import GRID_CELLS, cli_run, grid_results, same_weights

pytestmark = pytest.mark.slow

CLAIM_S = 30.0  # both drivers' claim_timeout_s: longer than a driver takes to start and refuse


@pytest.fixture(scope="module")
def namespaces() -> None:
    try:
        subprocess.run(["unshare", "--uts", "--net", "true"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        why = f"unshare cannot make a namespace here (needs root or CAP_SYS_ADMIN): {e}"
        if os.environ.get("SFTSCOPE_CLUSTER_REQUIRED") == "1":
            pytest.fail(f"the cluster tests must run here: {why}")
        pytest.skip(why)


def driver(host: str, path: Path) -> subprocess.Popen:
    """``sftscope run PATH`` on a host of its own: hostname ``host``, no network."""
    on_host = ["unshare", "--uts", "--net", "sh", "-c", f'hostname {host} && exec "$@"', "sh"]
    return cli_run(path, f"executor.claim_timeout_s={CLAIM_S}", prefix=on_host)


def holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def files(run: Path) -> dict[str, int]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}


def refused(path: Path, host: str) -> str:
    """Run a driver on ``host`` that must be refused: its one error line."""
    assert driver(host, path).wait(timeout=300) == 2, run_log(path)
    errors = run_errors(path)
    assert errors, run_log(path)
    return errors[-1]


def test_a_second_host_is_refused_and_takes_over_a_dead_hosts_run_only_after_the_timeout(
    namespaces: None, local_run: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = cluster_grid(tmp_path, tiny_model_dir)
    run = tmp_path / "run"
    first = driver("host-a", path)
    deadline = time.time() + 600
    while not any(holder(run / "claims" / f"cell--{c}.json") for c in GRID_CELLS):
        assert first.poll() is None and time.time() < deadline, run_log(path)
        time.sleep(0.1)
    assert holder(run / ".lock")["host"] == "host-a"

    # host-a is alive: host-b is refused, with who holds the run
    line = refused(path, "host-b")
    assert f"{run / '.lock'}: the run folder" in line and "held by host-a" in line, line
    assert first.poll() is None, run_log(path)

    # host-a dies (its claims stay, heartbeats stop); before the timeout host-b is still
    # refused, and writes nothing
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    beat = holder(run / ".lock")["heartbeat"]
    before = files(run)
    assert "held by host-a" in refused(path, "host-b")
    assert time.time() - beat < CLAIM_S, "host-b started too late to test the refusal"
    assert files(run) == before

    # after the timeout host-b takes the run folder and host-a's cell claims over, and finishes
    time.sleep(max(0.0, beat + CLAIM_S + 1 - time.time()))
    assert driver("host-b", path).wait(timeout=900) == 0, run_log(path)
    assert not (run / ".lock").exists()
    assert grid_results(run) == grid_results(local_run)
    same_weights(run, local_run)
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(c["status"] == "done" for c in manifest["cells"].values())
