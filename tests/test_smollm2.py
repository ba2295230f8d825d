"""Integration: the bundled SmolLM2-135M-Instruct answers a handful of easy questions."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftscope.config import EvalConfig
from sftscope.evaluate import run_eval
from sftscope.models.engines import HFEngine
from sftscope.models.loading import load_model, smollm2_path

from helpers import write_dataset

pytestmark = pytest.mark.slow

CAPITALS = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Germany", "Berlin"),
    ("Spain", "Madrid"),
    ("Russia", "Moscow"),
    ("Egypt", "Cairo"),
    ("England", "London"),
    ("China", "Beijing"),
    ("Greece", "Athens"),
    ("Portugal", "Lisbon"),
    ("Austria", "Vienna"),
]


@pytest.fixture(scope="module")
def smol() -> HFEngine:
    model, tok = load_model("smollm2", device="cpu")
    return HFEngine(model, tok, batch_size=8, progress=False)


def test_cache_is_safetensors() -> None:
    path = smollm2_path()
    assert (path / "model.safetensors").exists() and (path / "config.json").exists()
    assert not list(path.glob("*.bin"))


def test_smollm2_knows_easy_capitals(smol: HFEngine, tmp_path: Path) -> None:
    rows = [{"question": f"What is the capital of {c}?", "answers": [a]} for c, a in CAPITALS]
    train = [
        {"question": f"What is the capital of {c}?", "answers": [a]}
        for c, a in [("Peru", "Lima"), ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Cuba", "Havana")]
    ]
    root = write_dataset(tmp_path / "caps", {"test": {"P36": rows}, "train": {"P36": train}})
    cfg = EvalConfig(model="smollm2", data="entityquestions", data_dir=root, out=tmp_path / "out")
    summary = run_eval(cfg, engine=smol)
    assert summary.overall.n == len(CAPITALS)
    assert summary.overall.containment >= 0.75, summary
    # Batched, left-padded generation gives the one-at-a-time answers.
    prompts = [f"Question: What is the capital of {c}?\nAnswer:" for c, _ in CAPITALS[:6]]
    single = HFEngine(smol.model, smol.tokenizer, batch_size=1, progress=False)
    assert smol.generate(prompts, stop=["\n"]) == single.generate(prompts, stop=["\n"])
