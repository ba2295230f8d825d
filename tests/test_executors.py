"""The same tiny grid under every executor (local, processes, submitit's local cluster for
``slurm``, a local Ray cluster): identical subsets, bit-identical weights, identical eval
records. A worker killed mid-cell, a job that raises, and changes that only say how a run runs
(device, batch sizes, executor) planning nothing to redo."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest

from sftscope.config import GridConfig, load_config
from sftscope.errors import SftscopeError
from sftscope.pipeline.claims import Claim, free_claims_of
from sftscope.pipeline.grid import Grid

from helpers import GRID_CELLS, cli_run, grid_results, grid_yaml, same_weights

EXECUTORS = {
    "processes": ["--executor", "processes", "--workers", "2", "--probe-shards", "4"],
    "slurm": [
        "executor.kind=slurm",
        "executor.slurm.cluster=local",
        "executor.slurm.poll_s=0.2",
        "executor.probe_shards=2",
    ],
    "ray": ["executor.kind=ray", "executor.ray.local_cpus=2"],
}


def _run(path: Path, *args: str, timeout: float = 600) -> int:
    return cli_run(path, *args).wait(timeout=timeout)


def _log(path: Path) -> str:
    return (path.parent / "run.log").read_text()[-3000:]


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The grid under the default executor (local), in a subprocess like the others."""
    path = grid_yaml(tmp_path_factory.mktemp("local"), tiny_model_dir)
    assert _run(path) == 0, _log(path)
    return path.parent / "run"


@pytest.mark.slow
@pytest.mark.parametrize("executor", list(EXECUTORS))
def test_every_executor_gives_the_localgrid_results(
    executor: str, reference: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    if executor == "ray":
        pytest.importorskip("ray")
    path = grid_yaml(tmp_path, tiny_model_dir)
    assert _run(path, *EXECUTORS[executor]) == 0, _log(path)
    run = tmp_path / "run"
    assert grid_results(run) == grid_results(reference)
    same_weights(run, reference)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["executor"] == executor
    assert all(c["status"] == "done" for c in manifest["cells"].values())
    assert (run / "logs" / "cell--1-4-0.log").exists()  # each job's own log
    assert not list((run / "claims").glob("*.json"))  # every claim released
    if executor != "processes":
        return
    assert len(list((run / "logs").glob("probe--train#*of2.log"))) == 2  # sharded probe


def _worker(run: Path, job: str) -> int | None:
    """The pid of the process holding ``job``'s claim (forked workers share one command line)."""
    try:
        return json.loads((run / "claims" / f"{job}.json").read_text())["pid"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


@pytest.mark.slow
def test_worker_killed_mid_cell_then_rerun(
    reference: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = grid_yaml(tmp_path, tiny_model_dir)
    run = tmp_path / "run"
    driver = cli_run(path, *EXECUTORS["processes"])
    trained = run / "models" / GRID_CELLS[0] / "stage.json"
    deadline = time.time() + 300
    while not trained.exists() and driver.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    worker = _worker(run, f"cell--{GRID_CELLS[0]}")
    assert trained.exists() and worker is not None, "no worker to kill mid-cell"
    os.kill(worker, signal.SIGKILL)
    assert driver.wait(timeout=300) == 2
    out = _log(path)
    assert (
        f"cell/{GRID_CELLS[0]}: killed by signal 9" in out and f"cell--{GRID_CELLS[0]}.log" in out
    )
    claim = run / "claims" / f"cell--{GRID_CELLS[0]}.json"
    assert claim.exists()  # the dead worker's claim is left behind, and taken over below
    assert not (run / "eval" / GRID_CELLS[0] / "stage.json").exists()
    finished = {p: p.read_text() for p in run.rglob("stage.json")}
    assert _run(path, *EXECUTORS["processes"]) == 0, _log(path)
    changed = [str(p) for p, text in finished.items() if p.read_text() != text]
    assert not changed, f"finished stages were redone: {changed}"
    assert grid_results(run) == grid_results(reference)
    same_weights(run, reference)


@pytest.mark.slow
def test_a_failing_job_is_reported_with_its_log(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = grid_yaml(tmp_path, tiny_model_dir, levels=[1], sizes=[4], kl={"enabled": False})
    assert _run(path, *EXECUTORS["processes"], "train.optimizer=no_such_optimizer") == 2
    out = _log(path)
    assert "1 of 2 jobs (cells) failed: cell/1-4-0: exit code 2: ValueError" in out
    assert str(tmp_path / "run" / "logs" / "cell--1-4-0.log") in out
    assert "no_such_optimizer" in (tmp_path / "run" / "logs" / "cell--1-4-0.log").read_text()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["cells"]["1-4-0"]["status"] == "pending"
    assert manifest["stages"]["eval/base"]["status"] == "done"  # the other job finished


def test_runtime_settings_plan_nothing_to_redo(reference: Path) -> None:
    runtime = [
        "device=auto",
        "eval.batch_size=3",
        "probe.batch_size=auto",
        "kl.batch_size=2",
        "params.compute_device=auto",
        "keep_models=false",
        "train.logging_steps=5",
        "executor.kind=processes",
        "executor.workers=7",
        f"out={reference}",
    ]
    grid = Grid(load_config(GridConfig, reference.parent / "grid.yaml", None, runtime))
    assert {status for _, status in grid.plan()} == {"done"}
    assert not grid.probe_jobs(4) and all(j.done() for j in grid.stage_jobs())
    markers = {p: p.read_text() for p in reference.rglob("stage.json")}
    grid.run()  # moved to another device, other batch sizes and executor: nothing is redone
    assert {p: p.read_text() for p in reference.rglob("stage.json")} == markers
    changed = Grid(
        load_config(GridConfig, reference.parent / "grid.yaml", None, ["eval.max_new_tokens=5"])
    )
    assert dict(changed.plan())["eval/1-4-0"] == "redo (inputs changed)"


def test_claims_across_hosts(tmp_path: Path) -> None:
    path = tmp_path / "claims" / "job.json"
    with Claim(path, 60), pytest.raises(SftscopeError, match="held by"):
        Claim(path, 60).acquire()  # this very process, a second time: refused
    assert not path.exists()
    other = {"host": "elsewhere", "pid": 1, "token": "x", "heartbeat": time.time()}
    path.write_text(json.dumps(other))
    with pytest.raises(SftscopeError, match="held by elsewhere pid 1"):
        Claim(path, 60).acquire()  # a live claim of another host
    path.write_text(json.dumps({**other, "heartbeat": time.time() - 61}))
    with Claim(path, 60) as claim:  # its heartbeat stopped over a minute ago: stale
        assert json.loads(path.read_text())["token"] == claim.token
    dead = psutil.Popen(["true"])
    dead.wait()
    path.write_text(json.dumps({**other, "host": socket.gethostname(), "pid": dead.pid}))
    with Claim(path, 600):  # a dead process of this host (kill -9): taken over at once
        pass


def test_a_dead_drivers_own_job_claims_go_with_its_run_folder(tmp_path: Path) -> None:
    """The local executor runs jobs in the driver: when its ``.lock`` is taken over, the job
    claims that process held are freed even if their last beat came a little later."""
    now = time.time()
    dead = {"host": "elsewhere", "pid": 7, "token": "x", "heartbeat": now - 61}
    lock, claims = tmp_path / ".lock", tmp_path / "claims"
    claims.mkdir()
    lock.write_text(json.dumps(dead))
    (claims / "mine.json").write_text(json.dumps({**dead, "heartbeat": now - 50}))
    (claims / "other.json").write_text(json.dumps({**dead, "pid": 8, "heartbeat": now - 50}))
    with Claim(lock, 60) as claim:
        assert claim.taken_from == dead
        assert free_claims_of(claims, claim.taken_from) == [claims / "mine.json"]
    assert sorted(p.name for p in claims.iterdir()) == ["other.json"]  # another process's
    with Claim(lock, 60) as claim:  # nothing taken over: nothing to free
        assert claim.taken_from is None


def test_two_drivers_on_one_run_folder_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = grid_yaml(tmp_path, tiny_model_dir)
    grid = Grid(load_config(GridConfig, path))
    with Claim(grid.layout.lock, 600), pytest.raises(SftscopeError, match="another sftscope"):
        grid.run()


def test_a_rerun_submits_only_probe_shards_with_chunks_left(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    grid = Grid(load_config(GridConfig, grid_yaml(tmp_path, tiny_model_dir)))
    assert grid.probe_shards(4) == {"probe/train": 2, "probe/test": 2}  # 3 and 2 chunks of 8
    assert [j.name for j in grid.probe_jobs(1)] == ["probe/train", "probe/test"]
    parts = grid.probes["train"].output / "parts"
    parts.mkdir(parents=True)
    for c in (0, 2):  # shard 0 of 2 holds chunks 0 and 2: both written before a kill
        (parts / f"{c:05d}.jsonl").write_text("")
    names = [j.name for j in grid.probe_jobs(4)]
    assert names == ["probe/train#1of2", "probe/test#0of2", "probe/test#1of2"]


def test_processes_workers_follow_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from sftscope.config.executors import ExecutorConfig
    from sftscope.pipeline.executors.processes import default_workers, visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6")
    assert visible_gpus() == ["3", "5", "6"]
    assert default_workers(ExecutorConfig(kind="processes"), gpus=True) == 3  # one per GPU
    assert default_workers(ExecutorConfig(kind="processes", workers=8), gpus=True) == 3
    assert default_workers(ExecutorConfig(kind="processes", workers=2), gpus=True) == 2
    assert default_workers(ExecutorConfig(kind="processes", workers=5), gpus=False) == 5
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []
    cpu_default = default_workers(ExecutorConfig(kind="processes"), gpus=True)
    assert cpu_default == max(1, (os.cpu_count() or 2) // 2)  # no GPU visible: by cores
