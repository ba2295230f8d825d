"""The engine registry and factory, on the HF engine (vLLM itself: tests/vllm)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sftscope.cli import app
from sftscope.config import EvalConfig, GridConfig, ProbeConfig, load_config, result_fields
from sftscope.errors import SftscopeError
from sftscope.evaluate import run_eval
from sftscope.models.factory import EngineRequest, engine_for, engine_info, make_engine
from sftscope.models.process import in_fresh_process
from sftscope.outputs import EvalSummary
from sftscope.pipeline.grid import Grid
from sftscope.registry import ENGINES

from helpers import EQ_FIXTURE, grid_yaml

NO_VLLM = importlib.util.find_spec("vllm") is None  # tests/engine_vllm: not a "vllm" folder


def test_the_registry_builds_the_hf_engine(tiny_model_dir: Path) -> None:
    assert set(ENGINES) == {"hf", "vllm"}
    engine = make_engine("hf", EngineRequest(str(tiny_model_dir), device="cpu", batch_size=4))
    assert engine_info(engine)["engine"] == "hf" and engine_info(engine)["device"] == "cpu"
    with pytest.raises(SftscopeError, match="engine 'tgi': expected one of hf, vllm"):
        make_engine("tgi", EngineRequest(str(tiny_model_dir)))


@pytest.mark.skipif(not NO_VLLM, reason="vLLM is installed here")
def test_asking_for_vllm_without_it_names_the_extra(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = EvalConfig(model=str(tiny_model_dir), engine="vllm", out=tmp_path / "e")
    needs = r"engine 'vllm' needs the vllm package: pip install 'sftscope\[vllm\]'"
    with pytest.raises(SftscopeError, match=needs):
        engine_for(cfg)
    args = [
        "eval",
        "--model",
        str(tiny_model_dir),
        "--data",
        "entityquestions",
        "--data-dir",
        str(EQ_FIXTURE),
        "--engine",
        "vllm",
        "--out",
        str(tmp_path / "e"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert re.match("error: " + needs, result.output.strip().splitlines()[-1])
    assert not (tmp_path / "e").exists()


def test_the_engine_is_recorded_and_counts_only_when_not_hf(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = EvalConfig(
        model=str(tiny_model_dir),
        data="entityquestions",
        data_dir=EQ_FIXTURE,
        limit_per_relation=2,
        max_new_tokens=4,
        device="cpu",
        out=tmp_path / "e",
    )
    summary = run_eval(cfg)
    assert summary.engine["engine"] == "hf" and summary.engine["version"]
    on_disk = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert on_disk["engine"] == summary.engine
    assert EvalSummary.read(tmp_path / "e" / "summary.json") == summary  # written as typed
    # hf, the engine of every earlier run, leaves fingerprints as they were; vllm counts
    probe = ProbeConfig(model="m", out=tmp_path)
    assert "engine" not in result_fields(probe) and "vllm" not in result_fields(probe)
    vllm = probe.model_copy(update={"engine": "vllm"})
    assert result_fields(vllm)["engine"] == "vllm"


def test_the_grid_hands_its_engine_to_every_stage_that_loads_a_model(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The engine changes the probes' levels, hence everything after them; vLLM's own settings
    (how it runs) change no fingerprint."""
    path = grid_yaml(tmp_path, tiny_model_dir, params={"cells": "all", "k": [50]})
    hf = {s.key: s for s in _stages(Grid(load_config(GridConfig, path)))}
    vllm = {
        s.key: s
        for s in _stages(
            Grid(load_config(GridConfig, path, overrides=["engine=vllm", "vllm.max_model_len=512"]))
        )
    }
    assert all(
        s.config["engine"] == "vllm" and s.config["vllm"]["max_model_len"] == 512
        for s in vllm.values()
        if s.kind in ("probe", "eval", "restore")
    )
    assert vllm["kl/1-4-0"].config["engine"] == "vllm"  # said in its log, run on HF
    assert all(hf[k].fingerprint != vllm[k].fingerprint for k in hf)
    runtime = ["engine=vllm", "vllm.gpu_memory_utilization=0.5", "vllm.enforce_eager=true"]
    tuned = {s.key: s for s in _stages(Grid(load_config(GridConfig, path, overrides=runtime)))}
    assert {k: s.fingerprint for k, s in tuned.items()} == {
        k: s.fingerprint for k, s in vllm.items()
    }


def _stages(grid: Grid):
    yield from grid.probes.values()
    yield grid.base_eval
    for cell in grid.cells:
        yield from cell.stages.values()


@pytest.mark.slow
def test_in_fresh_process_returns_raises_and_survives_a_death() -> None:
    from spawned import dies, fails, pid_and_double  # a light module: the child imports it

    pid, value = in_fresh_process(pid_and_double, 21)
    assert pid != os.getpid() and value == 42
    with pytest.raises(SftscopeError, match="bad input in the child"):
        in_fresh_process(fails)
    with pytest.raises(SftscopeError, match="dies: its process died"):
        in_fresh_process(dies)
