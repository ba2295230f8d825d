"""Relative-change statistics and the exact streamed concentration table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sftscope.errors import SftscopeError
from sftscope.params.diff import concentration, diff_checkpoints, region_names
from sftscope.params.structure import structure_of
from sftscope.params.tensors import open_checkpoint

from helpers import perturbed_copy


def test_regions_and_modules(tiny_model_dir: Path) -> None:
    s = structure_of(tiny_model_dir)  # a 2-layer LLaMA
    assert s.in_region("model.layers.1.self_attn.q_proj.weight", "paper")
    assert not s.in_region("model.layers.1.input_layernorm.weight", "paper")
    assert not s.in_region("model.embed_tokens.weight", "paper")
    assert s.in_region("model.embed_tokens.weight", "embedding")
    assert s.in_region("model.layers.0.mlp.up_proj.weight", "mlp")
    assert not s.in_region("model.layers.0.mlp.up_proj.weight", "attention")
    assert s.in_region("model.layers.0.mlp.up_proj.weight", "re:up_proj")
    assert s.role("model.layers.0.mlp.down_proj.weight").module == "down_proj"
    with pytest.raises(SftscopeError, match="region 'mlps'"):
        s.in_region("model.embed_tokens.weight", "mlps")


def test_concentration_equals_a_flat_reference(tiny_model_dir: Path, tmp_path: Path) -> None:
    tuned_dir = perturbed_copy(tiny_model_dir, tmp_path / "tuned")
    base, tuned = open_checkpoint(tiny_model_dir), open_checkpoint(tuned_dir)
    names = region_names(base, "paper")
    ks = (0.001, 1, 3, 5, 10, 20, 40, 60, 99, 100)
    got = concentration(base, tuned, names, ks)
    wb, wt = (
        load_file(tiny_model_dir / "model.safetensors"),
        load_file(tuned_dir / "model.safetensors"),
    )
    rel = [(wt[n].float() - wb[n].float()).abs() / (wb[n].float().abs() + 1e-8) for n in names]
    flat = torch.cat([r.flatten() for r in rel]).double()
    ordered = torch.sort(flat, descending=True).values
    assert got["n"] == flat.numel()
    for row, k in zip(got["rows"], ks, strict=True):
        nk = math.floor(flat.numel() * k / 100)
        assert row["count"] == nk
        ref = float(ordered[:nk].sum()) / float(flat.sum())
        assert row["share"] == pytest.approx(ref, rel=1e-9, abs=1e-12)
        if nk:
            assert row["threshold"] == float(ordered[nk - 1])
    shares = [r["share"] for r in got["rows"]]
    assert shares == sorted(shares) and shares[-1] == pytest.approx(1.0)


def test_run_diff_outputs_and_nan(tiny_model_dir: Path, tmp_path: Path) -> None:
    tuned_dir = perturbed_copy(tiny_model_dir, tmp_path / "tuned")
    s = diff_checkpoints(tiny_model_dir, tuned_dir, tmp_path / "out")
    assert s["tensors"] == 2 * 7 and set(s["per_module"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert set(s["per_layer"]) == {"0", "1"}
    tsv = (tmp_path / "out" / "diff_summary.tsv").read_text().splitlines()
    assert tsv[0].startswith("tensor\tlayer\tblock\tmodule\texpert") and len(tsv) == 15
    assert [r["k"] for r in s["concentration"]] == [1, 3, 5, 10, 20, 40, 60]
    w = load_file(tuned_dir / "model.safetensors")
    bad = tmp_path / "nan"
    bad.mkdir()
    name = next(n for n in w if "q_proj" in n)
    w[name][0, 0] = float("nan")
    save_file(w, str(bad / "model.safetensors"))
    with pytest.raises(SftscopeError, match=f"tensor {name}: NaN"):
        diff_checkpoints(tiny_model_dir, bad, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_diff_cli(tiny_model_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sftscope.cli import app

    tuned_dir = perturbed_copy(tiny_model_dir, tmp_path / "tuned")
    res = CliRunner().invoke(
        app,
        [
            "diff",
            "--base",
            str(tiny_model_dir),
            "--tuned",
            str(tuned_dir),
            "--out",
            str(tmp_path / "d"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "d" / "concentration.json").exists() and "top k" in res.output
    missing = str(tmp_path / "nope")
    res = CliRunner().invoke(
        app,
        ["diff", "--base", str(tiny_model_dir), "--tuned", missing, "--out", str(tmp_path / "e")],
    )
    assert res.exit_code == 2 and "checkpoint folder not found" in res.output


def test_zero_base_weights_are_reported(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Exact zeros in the base (e.g. a dequantised GGUF) give r = |Δ|/1e-8: the diff says how
    many there are and how much of Σr they hold, and the CLI warns."""
    import shutil

    from typer.testing import CliRunner

    from sftscope.cli import app

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    w = load_file(base / "model.safetensors")
    name = next(n for n in w if "q_proj" in n)
    w[name][0] = 0.0
    save_file(w, str(base / "model.safetensors"))
    tuned = perturbed_copy(base, tmp_path / "tuned")
    s = diff_checkpoints(base, tuned, tmp_path / "out")
    assert s["zero_base"]["weights"] == w[name].shape[1]
    assert s["zero_base"]["share_of_r"] > 0.9
    res = CliRunner().invoke(
        app, ["diff", "--base", str(base), "--tuned", str(tuned), "--out", str(tmp_path / "cli")]
    )
    assert res.exit_code == 0 and "exactly 0 in the base model" in " ".join(res.output.split())
    # Leaving them out: the concentration over the other weights equals a flat reference.
    nz = diff_checkpoints(base, tuned, tmp_path / "nz", nonzero_base=True)
    wb, wt = load_file(base / "model.safetensors"), load_file(tuned / "model.safetensors")
    names = region_names(open_checkpoint(base), "paper")
    flat = torch.cat([((wt[n] - wb[n]).abs() / (wb[n].abs() + 1e-8))[wb[n] != 0] for n in names])
    flat = flat.double()
    ordered = torch.sort(flat, descending=True).values
    for row in nz["concentration"]:
        top = float(ordered[: math.floor(flat.numel() * row["k"] / 100)].sum())
        assert row["share"] == pytest.approx(top / float(flat.sum()), rel=1e-9)
    assert nz["concentration"][0]["share"] < s["concentration"][0]["share"]
    # one diff ranks both populations in the same passes: each run holds the other's table
    both = [json.loads((tmp_path / d / "concentration.json").read_text()) for d in ("out", "nz")]
    assert (
        both[0]["other"]["rows"] == both[1]["rows"] and both[1]["other"]["rows"] == both[0]["rows"]
    )
    assert both[0]["zero_base"] == both[1]["zero_base"] == s["zero_base"]


def test_diff_compute_device(tiny_model_dir: Path, tmp_path: Path) -> None:
    """cpu (the default) and auto give the same numbers here; cuda without a GPU is a one-line
    error; on a GPU machine, cuda agrees with cpu (counts exactly, sums to rounding)."""
    from typer.testing import CliRunner

    from sftscope.cli import app

    tuned_dir = perturbed_copy(tiny_model_dir, tmp_path / "tuned")
    cpu = diff_checkpoints(tiny_model_dir, tuned_dir, tmp_path / "cpu")
    assert diff_checkpoints(tiny_model_dir, tuned_dir, tmp_path / "c2", compute_device="cpu") == cpu
    if not torch.cuda.is_available():
        assert (
            diff_checkpoints(tiny_model_dir, tuned_dir, tmp_path / "auto", compute_device="auto")
            == cpu
        )
        args = [
            "diff",
            "--base",
            str(tiny_model_dir),
            "--tuned",
            str(tuned_dir),
            "--out",
            str(tmp_path / "d"),
            "--compute-device",
            "cuda",
        ]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2
        assert res.output == "error: --compute-device cuda: no CUDA device is available\n"
        assert not (tmp_path / "d").exists()
        return
    gpu = diff_checkpoints(tiny_model_dir, tuned_dir, tmp_path / "gpu", compute_device="cuda")
    for c, g in zip(cpu["concentration"], gpu["concentration"], strict=True):
        assert c["count"] == g["count"] and c["threshold"] == g["threshold"]
        assert g["share"] == pytest.approx(c["share"], rel=1e-9)
    assert gpu["per_layer"].keys() == cpu["per_layer"].keys()
    for key, row in cpu["per_layer"].items():
        assert gpu["per_layer"][key]["sum"] == pytest.approx(row["sum"], rel=1e-5)
