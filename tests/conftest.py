"""Shared fixtures: the EntityQuestions fixture folder and a tiny model saved to disk."""

from __future__ import annotations

import os

# No test may reach a model hub; set before transformers/huggingface_hub are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from sftscope.models.tiny import save_tiny  # noqa: E402

from helpers import fixture_questions  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer LLaMA with a BPE tokenizer trained on the fixture questions, saved to disk."""
    return save_tiny(fixture_questions(), tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path):
    from sftscope.models.engines import HFEngine
    from sftscope.models.loading import load_model

    model, tok = load_model(str(tiny_model_dir), device="cpu")
    return HFEngine(model, tok, batch_size=4, progress=False)
