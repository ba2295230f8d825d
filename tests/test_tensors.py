"""Streaming safetensors I/O: single and sharded checkpoints, validation, shard writing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from sftscope.errors import SftscopeError
from sftscope.params.tensors import (
    INDEX,
    ShardWriter,
    cast_checkpoint,
    check_compatible,
    iter_pairs,
    open_checkpoint,
    plan_of,
)


@pytest.fixture(scope="module")
def sharded(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sharded") / "model"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.save_pretrained(out, max_shard_size="100KB")
    return out


def test_single_and_sharded_checkpoints_read_the_same(tiny_model_dir: Path, sharded: Path) -> None:
    a, b = open_checkpoint(tiny_model_dir), open_checkpoint(sharded)
    assert (sharded / INDEX).exists() and len({t.file for t in b.tensors.values()}) > 1
    check_compatible(a, b)
    assert set(a.names) == set(b.names)
    n = 0
    for _name, x, y in iter_pairs(a, b):
        assert torch.equal(x, y)
        n += 1
    assert n == len(a.names)
    assert sum(a.numel(k) for k in a.names) == sum(
        x.numel() for x in load_file(tiny_model_dir / "model.safetensors").values()
    )


def test_mismatches_name_the_first_difference(tiny_model_dir: Path, tmp_path: Path) -> None:
    weights = load_file(tiny_model_dir / "model.safetensors")
    name = sorted(weights)[0]

    def variant(label: str, change) -> Path:
        d = tmp_path / label
        d.mkdir()
        w = dict(weights)
        change(w)
        save_file(w, str(d / "model.safetensors"))
        return open_checkpoint(d)

    base = open_checkpoint(tiny_model_dir)
    with pytest.raises(SftscopeError, match=f"tensor {name} of .* is missing"):
        check_compatible(base, variant("missing", lambda w: w.pop(name)))
    with pytest.raises(SftscopeError, match=f"tensor {name}: shape"):
        check_compatible(base, variant("shape", lambda w: w.update({name: w[name][:1].clone()})))
    with pytest.raises(SftscopeError, match=f"tensor {name}: dtype F32 .* BF16"):
        check_compatible(base, variant("dtype", lambda w: w.update({name: w[name].bfloat16()})))


def test_missing_shard_and_missing_folder(sharded: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(sharded, broken)
    first = sorted(json.loads((broken / INDEX).read_text())["weight_map"].values())[0]
    (broken / first).unlink()
    with pytest.raises(SftscopeError, match=f"shard {first} .* is missing"):
        open_checkpoint(broken)
    with pytest.raises(SftscopeError, match="checkpoint folder not found"):
        open_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SftscopeError, match="safetensors checkpoints only"):
        open_checkpoint(tmp_path / "empty")


@pytest.mark.parametrize("max_bytes", [10**9, 40_000])
def test_shard_writer_round_trip_loads_with_from_pretrained(
    tiny_model_dir: Path, tmp_path: Path, max_bytes: int
) -> None:
    ckpt = open_checkpoint(tiny_model_dir)
    writer = ShardWriter(tmp_path / "out", plan_of(ckpt), max_shard_bytes=max_bytes)
    for name, x, _ in iter_pairs(ckpt, ckpt):
        writer.add(name, x * 2)
    out = writer.close(side_files_from=[tiny_model_dir])
    assert (out / INDEX).exists() is (max_bytes == 40_000)
    assert not list(tmp_path.glob(".out.*"))  # the temporary folder was renamed away
    model = AutoModelForCausalLM.from_pretrained(out)
    ref = load_file(tiny_model_dir / "model.safetensors")
    for name, p in model.state_dict().items():
        assert torch.equal(p, ref[name] * 2)
    assert (out / "tokenizer.json").exists()


def test_cast_checkpoint_rewrites_sharded_weights_in_place(sharded: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(sharded, folder)
    before = {n: x for n, x, _ in iter_pairs(open_checkpoint(folder), open_checkpoint(folder))}
    assert cast_checkpoint(folder, torch.bfloat16, max_shard_bytes=50_000)
    after = open_checkpoint(folder)
    assert {i.dtype for i in after.tensors.values()} == {"BF16"}
    for name, x, _ in iter_pairs(after, after):
        assert torch.equal(x, before[name].bfloat16())
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    assert not list(tmp_path.glob(".m*"))  # no staging left behind
    assert AutoModelForCausalLM.from_pretrained(folder).dtype == torch.bfloat16
    assert not cast_checkpoint(folder, torch.bfloat16)  # already stored so
