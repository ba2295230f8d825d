"""The parameter level on every common architecture: tiny random models of each model type in
``ARCHITECTURES`` (dense, fused projections, GPT-2 / GPT-NeoX layer names, mixtures of experts)
are mapped from their module tree, diffed and restored; the restored checkpoints load, and the
streamed selection equals an independent top-k over the same tensors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from sftscope.config import RestoreConfig
from sftscope.errors import SftscopeError
from sftscope.models.tiny import ARCHITECTURES, MOE, save_tiny_arch
from sftscope.params.diff import diff_checkpoints
from sftscope.params.reference import reference_restore
from sftscope.params.restore import run_restore
from sftscope.params.structure import structure_of

from helpers import fixture_questions, perturbed_copy

ARCHS = list(ARCHITECTURES)
# Each architecture's own name for a projection must be its module (fused ones included).
OWN_NAMES = {
    "phi3": {"qkv_proj", "gate_up_proj"},
    "gpt_neox": {"query_key_value", "dense_h_to_4h", "dense_4h_to_h"},
    "gpt2": {"c_attn", "c_fc", "attention.c_proj", "mlp.c_proj"},
    "falcon": {"query_key_value", "dense_h_to_4h"},
    "mixtral": {"w1", "w2", "w3", "gate"},
    "qwen3_moe": {"gate_proj", "up_proj", "down_proj", "gate"},
    # linear attention's own projections, the experts beside a shared expert, the router
    "qwen3_next": {"in_proj_qkvz", "out_proj", "q_proj", "experts.down_proj", "gate"},
    "falcon_h1": {"in_proj", "out_proj", "conv1d", "A_log", "q_proj", "down_proj"},
}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Per architecture: a tiny base model and a perturbed ("fine-tuned") copy of it."""
    root = tmp_path_factory.mktemp("archs")
    out = {}
    for arch in ARCHS:
        base = save_tiny_arch(arch, fixture_questions(), root / arch / "base")
        out[arch] = base, perturbed_copy(base, root / arch / "tuned")
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_every_region_selects_and_nothing_known_is_other(arch: str, pairs) -> None:
    base, _ = pairs[arch]
    s = structure_of(base)
    names = list(load_file(base / "model.safetensors"))
    roles = {n: s.role(n) for n in names}
    assert not [n for n, r in roles.items() if r.block == "other"], arch
    regions = ["paper", "attention", "mlp", "embedding"] + (["router"] if arch in MOE else [])
    for region in regions:
        assert s.names(names, region), (arch, region)
    paper = s.names(names, "paper")
    assert {roles[n].layer for n in paper} == {0, 1}
    assert all(roles[n].block != "norm" for n in paper)
    assert not s.names(names, "router") or arch in MOE
    modules = set(s.modules_of(names).values())
    assert OWN_NAMES.get(arch, {"q_proj", "o_proj", "down_proj"}) <= modules, modules
    if arch in MOE:  # a row per expert, and the router
        experts = {r.expert for r in roles.values() if r.block == "experts"}
        assert experts == {0, 1, 2, 3}


@pytest.mark.parametrize("arch", ARCHS)
def test_diff_and_restore_load_and_equal_an_independent_top_k(
    arch: str, pairs, tmp_path: Path
) -> None:
    base, tuned = pairs[arch]
    summary = diff_checkpoints(base, tuned, tmp_path / "diff")
    assert "other" not in summary["per_block"] and summary["per_layer"].keys() == {"0", "1"}
    if arch in MOE:
        assert set(summary["per_expert"]) == {"0", "1", "2", "3"}
    cfg = RestoreConfig(base=str(base), tuned=tuned, k=[5, 20], out=tmp_path / "restore")
    run_restore(cfg)
    for k, ref in reference_restore(base, tuned, [5, 20]):
        out = tmp_path / "restore" / f"global-top-{k:g}"
        got = load_file(out / "model.safetensors")
        assert got.keys() == ref.keys()
        assert all(torch.equal(got[n], ref[n]) for n in ref), (arch, k)
        AutoModelForCausalLM.from_pretrained(out)  # a loadable checkpoint
    rows = (tmp_path / "restore" / "restore_stats.tsv").read_text().splitlines()
    assert rows[0].split("\t")[-2:] == ["block", "module"]


def test_a_tensor_the_architecture_has_no_place_for_is_one_line(pairs, tmp_path: Path) -> None:
    base, _ = pairs["llama"]
    with pytest.raises(SftscopeError, match=r"tensor vision_tower\.proj\.weight: no module"):
        structure_of(base).role("vision_tower.proj.weight")
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(SftscopeError, match="no config.json"):
        structure_of(bare)
    (bare / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(SftscopeError, match="config.json: cannot build the architecture"):
        structure_of(bare)
