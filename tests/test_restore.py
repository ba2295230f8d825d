"""Streamed restoration equals the materialising reference bit for bit; outputs and errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from sftscope.cli import app
from sftscope.config import RestoreConfig, load_config
from sftscope.errors import SftscopeError
from sftscope.models.tiny import save_tiny
from sftscope.outputs import SweepSummary
from sftscope.params.reference import load_all, reference_restore
from sftscope.params.restore import run_restore

from helpers import EQ_FIXTURE, perturbed_copy

KS = (1, 3, 50, 60, 99.5)
runner = CliRunner()


@pytest.fixture(scope="module")
def pair(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_model_dir, perturbed_copy(tiny_model_dir, tmp_path_factory.mktemp("ft") / "m")


@pytest.fixture(scope="module")
def bf16_pair(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """bf16 weights: few distinct values, so r has many exact ties everywhere."""
    root = tmp_path_factory.mktemp("bf16")
    base = root / "base"
    shutil.copytree(tiny_model_dir, base)
    w = load_file(tiny_model_dir / "model.safetensors")
    save_file({k: v.bfloat16() for k, v in w.items()}, str(base / "model.safetensors"))
    return base, perturbed_copy(base, root / "tuned", seed=1, dtype=torch.bfloat16)


def _restore(base: Path, tuned: Path, out: Path, **kw) -> dict:
    cfg = RestoreConfig(base=str(base), tuned=tuned, out=out, **kw)
    return run_restore(cfg)


def _assert_equal_to_reference(base, tuned, out, ks, **kw) -> None:
    sel = _restore(base, tuned, out, k=list(ks), **kw)
    ref = dict(reference_restore(base, tuned, ks, **kw))
    if kw.get("scope", "global") == "global":  # the low-memory reference agrees too
        kth = dict(reference_restore(base, tuned, ks, method="kth", **kw))
        assert all(torch.equal(kth[k][n], ref[k][n]) for k in ks for n in ref[k])
    for o, k in zip(sel["outputs"], ks, strict=True):
        got = load_all(out / o["label"])
        assert set(got) == set(ref[k])
        for name, tensor in ref[k].items():
            assert torch.equal(got[name], tensor), (o["label"], name)
            assert got[name].dtype == tensor.dtype


@pytest.mark.parametrize("scope", ["global", "layer", "tensor"])
@pytest.mark.parametrize("strategy", ["top", "bottom", "random"])
def test_streamed_restore_equals_the_reference(pair, tmp_path: Path, scope, strategy) -> None:
    base, tuned = pair
    _assert_equal_to_reference(base, tuned, tmp_path / "r", KS, scope=scope, strategy=strategy)


@pytest.mark.parametrize(
    ("scope", "strategy", "region"),
    [("global", "top", "paper"), ("tensor", "bottom", "all"), ("layer", "random", "all")],
)
def test_bf16_ties_and_other_regions(bf16_pair, tmp_path: Path, scope, strategy, region) -> None:
    base, tuned = bf16_pair
    _assert_equal_to_reference(
        base, tuned, tmp_path / "r", KS, scope=scope, strategy=strategy, region=region
    )


def test_k_in_any_order_and_many_ties(bf16_pair, tmp_path: Path) -> None:
    """Outputs are built in ascending k whatever the config's order; bf16 has many ties."""
    base, tuned = bf16_pair
    _assert_equal_to_reference(
        base, tuned, tmp_path / "r", (60, 1, 99.5, 3, 50), scope="layer", strategy="bottom"
    )


def test_sharding_changes_nothing(pair, tmp_path: Path) -> None:
    """Positions follow natural name order, not file order: a sharded base gives the same
    selection; small output shards load with from_pretrained."""
    base, tuned = pair
    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(base).save_pretrained(sharded, max_shard_size="40KB")
    a = _restore(base, tuned, tmp_path / "a", k=[50], strategy="random")
    b = _restore(sharded, tuned, tmp_path / "b", k=[50], strategy="random", max_shard_bytes=30_000)
    label = a["outputs"][0]["label"]
    assert (tmp_path / "b" / label / "model.safetensors.index.json").exists()
    assert a["outputs"][0]["cuts"] == b["outputs"][0]["cuts"]
    restored = AutoModelForCausalLM.from_pretrained(tmp_path / "b" / label).state_dict()
    single = load_all(tmp_path / "a" / label)
    for name, tensor in restored.items():
        assert torch.equal(tensor, single[name])
    assert (tmp_path / "a" / label / "tokenizer.json").exists()  # from the base: tuned has none


def test_random_is_seeded(pair, tmp_path: Path) -> None:
    base, tuned = pair
    runs = [
        _restore(base, tuned, tmp_path / f"s{i}", k=[10], strategy="random", seed=seed)
        for i, seed in enumerate((3, 3, 4))
    ]
    label = runs[0]["outputs"][0]["label"]
    w = [load_all(tmp_path / f"s{i}" / label) for i in range(3)]
    assert all(torch.equal(w[0][n], w[1][n]) for n in w[0])
    assert not all(torch.equal(w[0][n], w[2][n]) for n in w[0])


def test_selection_stats_and_layer_blocks(pair, tmp_path: Path) -> None:
    base, tuned = pair
    sel = _restore(base, tuned, tmp_path / "k", k=[10, 60])
    n = sel["weights"]
    assert [o["count"] for o in sel["outputs"]] == [n * 10 // 100, n * 60 // 100]
    assert sel["outputs"][0]["share_of_r"] < sel["outputs"][1]["share_of_r"] <= 1
    assert sel["outputs"][0]["mean_r"] >= sel["outputs"][0]["cuts"]["all"]["threshold"]
    rows = (tmp_path / "k" / "restore_stats.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:3] == ["output", "tensor", "layer"] and len(rows) == 1 + 2 * 14
    blocks = _restore(base, tuned, tmp_path / "b", layers=["0-0", "1-1"])
    assert [o["label"] for o in blocks["outputs"]] == ["layers-0-0", "layers-1-1"]
    w_base, w_tuned = load_all(base), load_all(tuned)
    got = load_all(tmp_path / "b" / "layers-0-0")
    for name, tensor in got.items():
        in_block = ".layers.0." in name and "norm" not in name
        assert torch.equal(tensor, w_base[name] if in_block else w_tuned[name]), name


def test_rerun_reuses_and_other_settings_refuse(pair, tmp_path: Path) -> None:
    base, tuned = pair
    first = _restore(base, tuned, tmp_path / "r", k=[5])
    stamp = (tmp_path / "r" / "selection.json").stat().st_mtime_ns
    assert _restore(base, tuned, tmp_path / "r", k=[5]) == first
    assert (tmp_path / "r" / "selection.json").stat().st_mtime_ns == stamp
    with pytest.raises(SftscopeError, match="holds a restore with other settings"):
        _restore(base, tuned, tmp_path / "r", k=[6])


def _nothing_written(tmp_path: Path) -> bool:
    return not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_bad_input_is_an_error_and_writes_nothing(pair, tmp_path: Path) -> None:
    base, tuned = pair
    for bad in ("0", "100", "-1", "150"):
        with pytest.raises(SftscopeError, match="config field 'k'.*strictly between 0 and 100"):
            load_config(RestoreConfig, None, dict(base=str(base), tuned=tuned, out=tmp_path, k=bad))
    other = save_tiny(["a b c"], tmp_path / "other", num_layers=3)
    with pytest.raises(SftscopeError, match="tensor .* is missing|shape"):
        _restore(base, other, tmp_path / "out")
    w = load_file(tuned / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    w[name][0, 0] = float("nan")
    nan = tmp_path / "nan"
    shutil.copytree(tuned, nan)
    save_file(w, str(nan / "model.safetensors"))
    with pytest.raises(SftscopeError, match=f"tensor {name}: NaN"):
        _restore(base, nan, tmp_path / "out")
    with pytest.raises(SftscopeError, match="layer block 7-9 holds no tensor"):
        _restore(base, tuned, tmp_path / "out", layers=["7-9"])
    assert _nothing_written(tmp_path)


def test_restore_cli_sweep_with_dev_pick(pair, tmp_path: Path) -> None:
    base, tuned = pair
    out = tmp_path / "sweep"
    args = [
        "restore",
        "--base",
        str(base),
        "--tuned",
        str(tuned),
        "--k",
        "1,50",
        "--out",
        str(out),
        "--eval",
        "--data",
        "entityquestions",
        "--data-dir",
        str(EQ_FIXTURE),
        "--limit-per-relation",
        "2",
        "--pick-on",
        "dev",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "picked on dev" in res.output
    sweep = json.loads((out / "sweep.json").read_text())
    assert [r["label"] for r in sweep["rows"]] == ["tuned", "global-top-1", "global-top-50"]
    assert sweep["pick"]["label"] in {r["label"] for r in sweep["rows"]}
    for label in ("tuned", "global-top-1", "global-top-50"):
        assert (out / "eval" / label / "summary.json").exists()
        assert (out / "eval" / f"{label}.dev" / "summary.json").exists()
    res = runner.invoke(app, [*args[:6], "0,5", *args[7:]])
    assert res.exit_code == 2 and res.output.startswith("error: config field 'k'")
    assert len(res.output.strip().splitlines()) == 1


def test_restore_cli_without_eval_and_yaml_config(pair, tmp_path: Path) -> None:
    base, tuned = pair
    cfg = tmp_path / "restore.yaml"
    cfg.write_text(
        f"base: {base}\ntuned: {tuned}\nscope: tensor\nstrategy: bottom\nout: {tmp_path / 'r'}\n"
    )
    res = runner.invoke(app, ["restore", "--config", str(cfg), "--k", "20", "seed=3"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "tensor-bottom-20" / "model.safetensors").exists()
    assert "tensor-bottom-20" in res.output and "restore_stats.tsv" in res.output
    res = runner.invoke(
        app, ["restore", "--config", str(cfg), "--layers", "0-1", f"out={tmp_path / 'b'}"]
    )
    assert res.exit_code == 0 and (tmp_path / "b" / "layers-0-1" / "config.json").exists()


def test_compute_device_cpu_is_the_default_and_stays_out_of_compared_settings(
    pair, tmp_path: Path
) -> None:
    base, tuned = pair
    a = _restore(base, tuned, tmp_path / "a", k=[3, 50], strategy="random")
    b = _restore(base, tuned, tmp_path / "b", k=[3, 50], strategy="random", compute_device="cpu")
    assert a == b
    for label in ("global-random-3", "global-random-50"):
        x, y = load_all(tmp_path / "a" / label), load_all(tmp_path / "b" / label)
        assert all(torch.equal(x[n], y[n]) for n in x)
    assert "compute_device" not in yaml.safe_load((tmp_path / "b" / "restore.yaml").read_text())
    # the outputs do not depend on it, so a rerun on another device reuses the folder
    again = _restore(
        base, tuned, tmp_path / "b", k=[3, 50], strategy="random", compute_device="auto"
    )
    assert again == b


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_compute_device_cuda_without_a_gpu_is_a_one_line_error(pair, tmp_path: Path) -> None:
    base, tuned = pair
    res = runner.invoke(
        app,
        [
            "restore",
            "--base",
            str(base),
            "--tuned",
            str(tuned),
            "--k",
            "5",
            "--compute-device",
            "cuda",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert res.exit_code == 2
    assert res.output == "error: --compute-device cuda: no CUDA device is available\n"
    assert _nothing_written(tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("strategy", ["top", "bottom", "random"])
def test_cuda_restore_is_bit_identical_to_cpu(bf16_pair, tmp_path: Path, strategy) -> None:
    base, tuned = bf16_pair
    kw = dict(k=[1, 3, 50], scope="layer", strategy=strategy)
    cpu = _restore(base, tuned, tmp_path / "cpu", **kw)
    gpu = _restore(base, tuned, tmp_path / "gpu", compute_device="cuda", **kw)
    for c, g in zip(cpu["outputs"], gpu["outputs"], strict=True):
        assert c["count"] == g["count"] and c["cuts"] == g["cuts"]
        assert g["sum_r"] == pytest.approx(c["sum_r"], rel=1e-5)
        x, y = load_all(tmp_path / "cpu" / c["label"]), load_all(tmp_path / "gpu" / g["label"])
        assert all(torch.equal(x[n], y[n]) and x[n].dtype == y[n].dtype for n in x)


def _sweep(
    base: Path, tuned: Path, out: Path, save: bool, prompt: str = "sft", **kw
) -> SweepSummary:
    from sftscope.config import RestoreEval
    from sftscope.restore_sweep import run_sweep

    ev = RestoreEval(
        data="entityquestions",
        data_dir=EQ_FIXTURE,
        limit_per_relation=2,
        pick_on="dev",
        batch_size=4,
        prompt=prompt,
    )
    cfg = RestoreConfig(
        base=str(base), tuned=tuned, out=out, save=save, eval=ev, device="cpu", **kw
    )
    return run_sweep(cfg)


@pytest.mark.parametrize("which", ["pair", "bf16_pair"])
@pytest.mark.parametrize(
    "kw",
    [
        {"k": [3, 50]},
        {"k": [10, 60], "scope": "tensor", "strategy": "random"},
        {"layers": ["0-0", "1-1"]},
    ],
)
def test_in_place_sweep_scores_equal_the_written_sweep(
    which: str, kw: dict, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    base, tuned = request.getfixturevalue(which)
    written = _sweep(base, tuned, tmp_path / "written", True, **kw)
    in_place = _sweep(base, tuned, tmp_path / "in_place", False, **kw)
    assert in_place == written
    a, b = tmp_path / "written", tmp_path / "in_place"
    evals = sorted(p.name for p in (a / "eval").iterdir())
    assert evals == sorted(p.name for p in (b / "eval").iterdir()) and len(evals) >= 6
    for name in evals:  # every model's records, the tuned one's first and the restored ones
        assert (a / "eval" / name / "records.jsonl").read_text() == (
            b / "eval" / name / "records.jsonl"
        ).read_text(), name
    predictions = {
        name: [
            json.loads(x)["prediction"]
            for x in (b / "eval" / name / "records.jsonl").read_text().splitlines()
        ]
        for name in evals
    }
    assert len({tuple(p) for p in predictions.values()}) > 2  # the restorations change outputs
    assert (a / "restore_stats.tsv").read_text() == (b / "restore_stats.tsv").read_text()
    sel_a, sel_b = (json.loads((f / "selection.json").read_text()) for f in (a, b))
    assert sel_b.pop("in_place") and not sel_a.pop("in_place") and sel_a == sel_b
    assert not list(b.rglob("*.safetensors"))  # no checkpoint written
    again = _sweep(base, tuned, b, False, **kw)  # every eval done: reused, no model loaded
    assert again == written
    last = written.rows[-1].label  # resumed: only the last output's evals are redone
    for name in (last, f"{last}.dev"):
        shutil.rmtree(b / "eval" / name)
    assert _sweep(base, tuned, b, False, **kw) == written
    for name in (last, f"{last}.dev"):
        assert (a / "eval" / name / "records.jsonl").read_text() == (
            b / "eval" / name / "records.jsonl"
        ).read_text()


def test_sweep_evaluates_with_the_prompt_asked_for(pair, tmp_path: Path) -> None:
    """eval.prompt: fewshot evaluates every model of the sweep like `sftscope eval` does by
    default (a fine-tune in another format); sft, the default, stays out of fingerprints."""
    from sftscope.config import EvalConfig, RestoreEval, result_fields
    from sftscope.evaluate import run_eval

    base, tuned = pair
    _sweep(base, tuned, tmp_path / "s", save=False, prompt="fewshot", k=[50])
    direct = run_eval(
        EvalConfig(
            model=str(tuned),
            data="entityquestions",
            data_dir=EQ_FIXTURE,
            limit_per_relation=2,
            batch_size=4,
            device="cpu",
            out=tmp_path / "e",
        )
    )
    assert direct.in_domain.n > 0
    got = (tmp_path / "s" / "eval" / "tuned" / "records.jsonl").read_text()
    assert got == (tmp_path / "e" / "records.jsonl").read_text()
    assert "prompt" not in result_fields(RestoreEval(data="geo"))
    assert result_fields(RestoreEval(data="geo", prompt="fewshot"))["prompt"] == "fewshot"


def test_in_place_folder_gets_checkpoints_when_saved_later(pair, tmp_path: Path) -> None:
    base, tuned = pair
    _sweep(base, tuned, tmp_path / "s", False, k=[5])
    sel = _restore(base, tuned, tmp_path / "s", k=[5], eval=None)
    assert not sel["in_place"] and (tmp_path / "s" / "global-top-5" / "config.json").exists()


def test_no_save_without_eval_is_a_one_line_error(pair, tmp_path: Path) -> None:
    base, tuned = pair
    res = runner.invoke(
        app,
        [
            "restore",
            "--base",
            str(base),
            "--tuned",
            str(tuned),
            "--k",
            "5",
            "--no-save",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert res.exit_code == 2 and res.output.startswith("error: --no-save needs --eval")
    assert not (tmp_path / "x").exists()


def test_in_place_sweep_decodes_as_hf_decode_says(pair, tmp_path: Path) -> None:
    """The in-place sweep's engine takes the run's ``hf`` settings (``--hf-decode``), like every
    other stage's: each evaluation records the decode it ran with."""
    base, tuned = pair
    for decode, recorded in (
        ("dynamic-cache", "dynamic-cache"),
        ("shared-prefix", "shared-prefix-1"),
    ):
        out = tmp_path / decode
        _sweep(base, tuned, out, save=False, k=[50], hf={"decode": decode})
        summary = json.loads((out / "eval" / "tuned" / "summary.json").read_text())
        assert summary["engine"]["decode"] == recorded
