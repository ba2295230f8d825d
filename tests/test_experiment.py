"""The grid on a tiny model: end to end, fingerprints and skipping, kill -9 and resume, errors."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sftscope.cli import app
from sftscope.config import GridConfig, load_config
from sftscope.pipeline.grid import Grid
from sftscope.report.results import cell_table

from helpers import cli_run, grid_yaml

CELLS = ["1-4-0", "1-8-0", "mixed-4-0", "mixed-8-0"]


def _markers(run: Path) -> dict[str, str]:
    paths = [*run.rglob("stage.json"), *run.glob("subsets/*.json"), *run.glob("kl/*.stage.json")]
    return {str(p.relative_to(run)): p.read_text() for p in paths}


def test_grid_end_to_end_and_rerun_skips_everything(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = grid_yaml(tmp_path, tiny_model_dir)
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["cells"]) == set(CELLS)
    assert all(c["status"] == "done" for c in manifest["cells"].values())
    assert manifest["versions"]["trl"] and manifest["stages"]["probe/train"]["status"] == "done"
    for cell in CELLS:
        assert (run / "subsets" / f"{cell}.jsonl").exists()
        assert (run / "models" / cell / "model.safetensors").exists()
        summary = json.loads((run / "eval" / cell / "summary.json").read_text())
        assert "by_level" in summary and summary["prompt"] == "sft"
        kl = json.loads((run / "kl" / f"{cell}.json").read_text())
        assert kl["full"]["overall"]["n"] == 15 and kl["full"]["overall"]["kl_mean"] > 0
    comp = json.loads((run / "subsets" / "1-8-0.json").read_text())["result"]
    assert comp["composition"] == {"P17": 4, "P36": 4} and comp["n"] == 8  # balanced
    base = json.loads((run / "eval" / "base" / "summary.json").read_text())
    assert base["prompt"] == "fewshot" and base["by_level"]["in_domain"]["per_level"][1]["n"]
    rows = cell_table(run)
    assert {r["cell"] for r in rows} == {*CELLS, "base"}
    assert len(rows[0]["in_domain_per_level"]) == 5
    before = _markers(run)
    grid = Grid(load_config(GridConfig, path))
    assert {status for _, status in grid.plan()} == {"done"}
    grid.run()
    assert _markers(run) == before  # nothing redone


def test_changed_recipe_redoes_training_only(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = grid_yaml(tmp_path, tiny_model_dir, sizes=[4], levels=[1], keep_models=False)
    Grid(load_config(GridConfig, path)).run()
    run = tmp_path / "run"
    assert not list((run / "models" / "1-4-0").glob("*.safetensors"))  # keep_models: false
    assert (run / "models" / "1-4-0" / "train_summary.json").exists()
    before = _markers(run)
    Grid(load_config(GridConfig, path)).run()
    assert _markers(run) == before  # deleted weights are not retrained for a finished cell
    plan = dict(Grid(load_config(GridConfig, path, None, ["train.learning_rate=2e-3"])).plan())
    assert plan["probe/train"] == "done" and plan["subsets/1-4-0"] == "done"
    assert plan["models/1-4-0"] == plan["eval/1-4-0"] == plan["kl/1-4-0"] == "redo (inputs changed)"
    res = CliRunner().invoke(app, ["run", str(path), "--dry-run", "eval.max_new_tokens=4"])
    assert res.exit_code == 0 and "redo" in res.output


@pytest.mark.slow
def test_kill_9_then_rerun_finishes_without_redoing_finished_cells(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = grid_yaml(tmp_path, tiny_model_dir)
    run = tmp_path / "run"
    proc = cli_run(path)
    first = run / "eval" / CELLS[0] / "stage.json"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the first cell did not finish before the deadline"
    finished = _markers(run)
    rerun = cli_run(path)
    assert rerun.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()[-2000:]
    after = _markers(run)
    changed = [k for k, v in finished.items() if after[k] != v]
    assert not changed, f"finished stages were redone: {changed}"
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(c["status"] == "done" for c in manifest["cells"].values())
    assert not list(run.rglob("*.partial")) and not list(run.rglob(".*.tmp"))
    assert not (run / ".lock").exists()
    # Same result as a run that was never interrupted.
    clean = tmp_path / "clean"
    clean.mkdir()
    assert cli_run(grid_yaml(clean, tiny_model_dir)).wait(timeout=600) == 0
    for cell in CELLS:
        a = (run / "eval" / cell / "records.jsonl").read_text()
        assert a == (clean / "run" / "eval" / cell / "records.jsonl").read_text(), cell


def test_bad_grid_input_is_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = grid_yaml(tmp_path, tiny_model_dir, sizes=[500], levels=[1])
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 2
    assert "level 1: size 500 asked, but only 24 facts" in res.output and "P17 12" in res.output
    res = CliRunner().invoke(app, ["run", str(path), "train.lr=1"])
    assert res.exit_code == 2 and "config field 'train.lr'" in res.output
    res = CliRunner().invoke(app, ["run", str(path), "relations=P26"])
    assert res.exit_code == 2 and "P26 is not an in-domain relation" in res.output


@pytest.mark.parametrize("levels", [[7], ["most"]])
def test_bad_levels(levels: list, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="level"):
        GridConfig(model="m", out=tmp_path, levels=levels)


def test_grid_params_hook_diff_restore_sweep_and_transitions(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    params = {"cells": ["1-4-0"], "k": [10, 50], "pick_on": "dev"}
    path = grid_yaml(
        tmp_path,
        tiny_model_dir,
        sizes=[4],
        levels=[1],
        keep_models=False,
        params=params,
        kl={"enabled": False},
        transitions=True,
    )
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 0, res.output
    assert "share of Σr" in res.output and "picked on dev" in res.output
    assert "knowledge transitions" in res.output and "kept %" in res.output
    after = tmp_path / "run" / "probe" / "after" / "1-4-0" / "mastery.jsonl"
    before = tmp_path / "run" / "probe" / "test" / "mastery.jsonl"
    assert len(after.read_text().splitlines()) == len(before.read_text().splitlines())
    cell = tmp_path / "run" / "params" / "1-4-0"
    conc = json.loads((cell / "diff" / "concentration.json").read_text())
    assert [r["k"] for r in conc["rows"]] == [1, 3, 5, 10, 20, 40, 60]
    sweep = json.loads((cell / "restore" / "sweep.json").read_text())
    assert [r["label"] for r in sweep["rows"]] == ["tuned", "global-top-10", "global-top-50"]
    assert "by_level" in json.loads(
        (cell / "restore" / "eval" / "global-top-10" / "summary.json").read_text()
    )
    assert not list(cell.glob("restore/*/*.safetensors"))  # keep_models: false
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert set(manifest["cells"]["1-4-0"]["stages"]) >= {"diff", "restore", "reprobe"}
    before = _markers(tmp_path / "run")
    Grid(load_config(GridConfig, path)).run()
    assert _markers(tmp_path / "run") == before
    res = CliRunner().invoke(app, ["run", str(path), "params.cells=9-9-9"])
    assert res.exit_code == 2 and "params.cells': 9-9-9 is not a cell" in res.output


def test_new_calibration_content_redoes_the_probe(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A calibration file rewritten in place changes the levels: the fingerprint must see it."""
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"thresholds": [0.001, 0.1, 0.2, 0.3]}))
    probe = {"method": "likelihood", "templates": 3, "calibration": str(cal)}
    path = grid_yaml(tmp_path, tiny_model_dir, probe=probe)
    before = Grid(load_config(GridConfig, path)).probes["train"].fingerprint
    assert Grid(load_config(GridConfig, path)).probes["train"].fingerprint == before
    cal.write_text(json.dumps({"thresholds": [0.001, 0.1, 0.2, 0.4]}))
    assert Grid(load_config(GridConfig, path)).probes["train"].fingerprint != before


def test_calibration_file_elsewhere_keeps_the_probe(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The same thresholds read from another path (a moved install, a worktree) are the same
    probe: a finished probe folder is kept, not redone."""
    thresholds = json.dumps({"thresholds": [0.001, 0.1, 0.2, 0.3]})
    fingerprints = []
    for folder in ("a", "b"):
        cal = tmp_path / folder / "cal.json"
        cal.parent.mkdir()
        cal.write_text(thresholds)
        probe = {"method": "likelihood", "templates": 3, "calibration": str(cal)}
        path = grid_yaml(tmp_path, tiny_model_dir, probe=probe)
        fingerprints.append(Grid(load_config(GridConfig, path)).probes["train"].fingerprint)
    assert fingerprints[0] == fingerprints[1]


def test_a_finished_run_resumes_moved_and_from_another_install(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A run folder moved elsewhere, opened with its data and calibration file at other paths
    (another clone, venv or cluster node), plans nothing: files count by content, not path.
    An edited data file redoes what read it."""
    import shutil

    from helpers import EQ_FIXTURE

    def install(name: str) -> tuple[Path, Path]:
        shutil.copytree(EQ_FIXTURE, tmp_path / name / "data")
        cal = tmp_path / name / "cal.json"
        cal.write_text(json.dumps({"thresholds": [0.001, 0.1, 0.2, 0.3]}))
        return tmp_path / name / "data", cal

    def grid(data: Path, cal: Path, out: Path) -> Grid:
        probe = {"method": "likelihood", "templates": 3, "calibration": str(cal)}
        kw = {"data_dir": str(data), "out": str(out), "levels": ["mixed"], "sizes": [4]}
        params = {"cells": ["mixed-4-0"], "k": [10], "pick_on": "dev"}
        path = grid_yaml(tmp_path, tiny_model_dir, probe=probe, params=params, **kw)
        return Grid(load_config(GridConfig, path))

    data_a, cal_a = install("a")
    data_b, cal_b = install("b")
    grid(data_a, cal_a, tmp_path / "run").run()
    shutil.move(tmp_path / "run", tmp_path / "moved")
    plan = grid(data_b, cal_b, tmp_path / "moved").plan()
    assert {status for _, status in plan} == {"done"}, plan
    test_file = next((data_b / "test").glob("*.json"))
    test_file.write_text(test_file.read_text().replace('"question"', '"question" ', 1))
    assert "done" not in {
        status
        for key, status in grid(data_b, cal_b, tmp_path / "moved").plan()
        if key.startswith("probe/")
    }


def test_a_stage_cleared_for_a_rerun_drops_a_killed_write_of_its_file_output(
    tmp_path: Path,
) -> None:
    """SIGKILL during an atomic write of a file output (the KL summary beside its marker)
    leaves ``.NAME.XXXX.tmp`` beside it; the rerun's ``clear`` removes it and nothing else."""
    from sftscope.io import atomic_write_text
    from sftscope.pipeline.stage import Stage

    out = tmp_path / "kl" / "1-4-0.json"
    stage = Stage(
        key="kl/1-4-0",
        kind="kl",
        config={},
        output=out,
        fingerprint="f",
        marker_file=out.with_suffix(".stage.json"),
    )
    atomic_write_text(tmp_path / "kl" / "0-4-0.json", "{}")  # another cell's, finished
    leftovers = [out.parent / ".1-4-0.json.qhjgwosr.tmp", out.parent / ".1-4-0.stage.json.ab.tmp"]
    for path in leftovers:
        path.write_text("half")
    stage.clear()
    assert sorted(p.name for p in out.parent.iterdir()) == ["0-4-0.json"]
