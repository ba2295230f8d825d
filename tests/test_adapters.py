"""PEFT adapter folders wherever a model is: read by the parameter level as base + delta, tensor
by tensor (equal to PEFT's merge bit for bit), loaded merged by the engines, and audited exactly
like the merged model; an adapter whose base cannot be found is one error line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sftscope.errors import SftscopeError
from sftscope.models.tiny import save_tiny_arch
from sftscope.params.lora import open_weights
from sftscope.params.tensors import open_checkpoint

from helpers import EQ_FIXTURE, fixture_questions, make_adapter, tiny_audit


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(base, adapter, merged) on a tiny LLaMA."""
    root = tmp_path_factory.mktemp("adapters")
    base = save_tiny_arch("llama", fixture_questions(), root / "base")
    return (base, *make_adapter(base, root, modules_to_save=["lm_head"]))


@pytest.mark.parametrize(
    ("arch", "lora"),
    [
        ("llama", {"modules_to_save": ["lm_head"]}),
        ("gpt2", {}),  # Conv1D: fan_in_fan_out
        ("phi3", {"use_rslora": True}),  # fused qkv_proj / gate_up_proj
        ("gpt_neox", {"alpha_pattern": {"dense_h_to_4h": 2}}),
        ("qwen3_moe", {"target_modules": ["q_proj", "o_proj", "embed_tokens"]}),  # embedding
    ],
)
def test_adapter_weights_equal_the_merged_model_bit_for_bit(
    arch: str, lora: dict, tmp_path: Path
) -> None:
    base = save_tiny_arch(arch, fixture_questions(), tmp_path / "base")
    adapter, merged = make_adapter(base, tmp_path, **lora)
    ckpt, want = open_weights(adapter), open_checkpoint(merged)
    assert ckpt.names == want.names and ckpt.config_root == base
    changed = [n for n in want.names if not torch.equal(ckpt.read(n), ckpt.base.read(n))]
    assert changed
    assert all(torch.equal(ckpt.read(n), want.read(n)) for n in want.names)


def test_the_adapters_base_is_given_or_named_or_one_line(pair, tmp_path: Path) -> None:
    base, adapter, _ = pair
    moved = tmp_path / "moved"
    shutil.copytree(adapter, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/nowhere/llama"
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(SftscopeError, match=r"adapter_config.json: its base model /nowhere"):
        open_weights(moved)
    assert open_weights(moved, base=base).base.root == base  # --base wins
    dora = tmp_path / "dora"
    shutil.copytree(adapter, dora)
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(SftscopeError, match="use_dora is set; merge it first"):
        open_weights(dora, base=base)


def test_eval_and_diff_of_an_adapter_whose_base_is_lost_are_one_line(pair, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sftscope.cli import app

    base, adapter, _ = pair
    lost = tmp_path / "lost"
    shutil.copytree(adapter, lost)
    config = json.loads((lost / "adapter_config.json").read_text())
    (lost / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": "/nowhere/llama"})
    )
    data = ["--data", "entityquestions", "--data-dir", str(EQ_FIXTURE), "--device", "cpu"]
    runs = {
        "eval": ["eval", "--model", str(lost), *data],
        "probe": ["probe", "--model", str(lost), *data, "--method", "likelihood"],
        "diff": ["diff", "--base", "/nowhere/else", "--tuned", str(lost)],
    }
    for name, args in runs.items():
        out = tmp_path / name
        res = CliRunner().invoke(app, [*args, "--out", str(out)])
        errors = [x for x in res.output.splitlines() if x.startswith("error:")]
        assert res.exit_code == 2 and len(errors) == 1, (name, res.output)
        assert "/nowhere" in errors[0], (name, errors[0])
        assert not out.exists(), name
    # given the base, the same adapter evaluates
    out = tmp_path / "given"
    res = CliRunner().invoke(
        app, [*runs["eval"], "--base", str(base), "--limit-per-relation", "2", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert (out / "records.jsonl").exists()


def test_diff_and_restore_of_an_adapter_equal_the_merged_models(pair, tmp_path: Path) -> None:
    from sftscope.config import DiffConfig, RestoreConfig
    from sftscope.params.diff import run_diff
    from sftscope.params.restore import run_restore

    base, adapter, merged = pair
    out: dict[str, dict] = {}
    for name, tuned in (("adapter", adapter), ("merged", merged)):
        run_diff(DiffConfig(base=str(base), tuned=tuned, out=tmp_path / name / "diff"))
        run_restore(
            RestoreConfig(base=str(base), tuned=tuned, k=[5, 20], out=tmp_path / name / "rest")
        )
        out[name] = {
            "tsv": (tmp_path / name / "diff" / "diff_summary.tsv").read_text(),
            "selection": json.loads((tmp_path / name / "rest" / "selection.json").read_text()),
        }
    assert out["adapter"]["tsv"] == out["merged"]["tsv"]
    for sel in (out["adapter"]["selection"], out["merged"]["selection"]):
        sel.pop("tuned", None)
    assert out["adapter"]["selection"] == out["merged"]["selection"]
    for label in ("global-top-5", "global-top-20"):
        a = open_checkpoint(tmp_path / "adapter" / "rest" / label)
        m = open_checkpoint(tmp_path / "merged" / "rest" / label)
        assert all(torch.equal(a.read(n), m.read(n)) for n in m.names), label
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "adapter" / "rest" / "global-top-5")


def test_an_audit_of_base_and_adapter_equals_the_audit_of_the_merged_model(
    pair, tmp_path: Path
) -> None:
    """Probes, CBQA records, KL, diff and the restore sweep (in place, on the merged weights
    PEFT loads) of base + adapter are those of base + merged."""
    from sftscope.pipeline.audit import Audit

    base, adapter, merged = pair
    summaries = {}
    for name, tuned in (("adapter", adapter), ("merged", merged)):
        Audit(tiny_audit(base, tuned, tmp_path / name)).run()
        summaries[name] = json.loads((tmp_path / name / "audit.json").read_text())
    a, m = summaries["adapter"], summaries["merged"]
    for key in ("accuracy", "kl", "params", "transitions", "facts"):
        assert a[key] == m[key], key
    for rel in ("eval/tuned/records.jsonl", "probe/tuned/mastery.jsonl"):
        assert (tmp_path / "adapter" / rel).read_text() == (tmp_path / "merged" / rel).read_text()
    sel = "params/tuned/restore/selection.json"
    sa, sm = (json.loads((tmp_path / n / sel).read_text()) for n in ("adapter", "merged"))
    assert {k: v for k, v in sa.items() if k != "tuned"} == {
        k: v for k, v in sm.items() if k != "tuned"
    }


def test_a_grid_runs_on_an_adapter_as_its_model(pair, tmp_path: Path) -> None:
    """The grid's model may be an adapter folder (its base from adapter_config.json): probed,
    fine-tuned further, and compared weight by weight as base + delta."""
    from typer.testing import CliRunner

    from sftscope.cli import app

    from helpers import grid_yaml

    _, adapter, _ = pair
    params = {"cells": ["1-4-0"], "k": [10]}
    path = grid_yaml(tmp_path, adapter, sizes=[4], levels=[1], params=params)
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 0, res.output
    cell = tmp_path / "run" / "params" / "1-4-0"
    diff = json.loads((cell / "diff" / "diff.json").read_text())
    assert diff["tensors"] > 0 and set(diff["per_layer"]) == {"0", "1"}
    kl = json.loads((tmp_path / "run" / "kl" / "1-4-0.json").read_text())
    assert kl["full"]["overall"]["n"] > 0


def test_select_takes_an_adapter_as_its_model(pair, tmp_path: Path) -> None:
    """``select --model ADAPTER``: the adapter's base from its config, merged by PEFT; the
    levels equal those of the merged model."""
    from typer.testing import CliRunner

    from sftscope.cli import app

    from helpers import write_jsonl

    _, adapter, merged = pair
    rows = json.loads((EQ_FIXTURE / "test" / "P17.test.json").read_text())[:4]
    data = write_jsonl(
        tmp_path / "sft.jsonl", [{"question": r["question"], "answers": r["answers"]} for r in rows]
    )
    fast = ["--templates", "2", "--samples", "2", "--max-new-tokens", "4", "--device", "cpu"]
    levels = {}
    for name, model in (("adapter", adapter), ("merged", merged)):
        out = tmp_path / name
        res = CliRunner().invoke(
            app,
            ["select", "--model", str(model), "--data-dir", str(data), *fast, "--out", str(out)],
        )
        assert res.exit_code == 0, res.output
        levels[name] = [
            r["mastery_level"]
            for r in map(json.loads, (out / "annotated.jsonl").read_text().splitlines())
        ]
    assert levels["adapter"] == levels["merged"]


def test_a_diff_of_two_architectures_is_one_line(pair, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sftscope.cli import app

    base, adapter, _ = pair
    other = save_tiny_arch("gpt2", fixture_questions(), tmp_path / "gpt2")
    for tuned in (other, adapter):  # (the adapter is applied to the gpt2 base: no such tensor)
        out = tmp_path / "diff"
        res = CliRunner().invoke(
            app,
            [
                "diff",
                "--base",
                str(other if tuned is adapter else base),
                "--tuned",
                str(tuned),
                "--out",
                str(out),
            ],
        )
        errors = [x for x in res.output.splitlines() if x.startswith("error:")]
        assert res.exit_code == 2 and len(errors) == 1, res.output
        assert not out.exists()
