"""Shared fixtures: the EntityQuestions fixture folder and a tiny model saved to disk."""

from __future__ import annotations

import os

# No test may reach a model hub; set before transformers/huggingface_hub are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

from sftscope.models.tiny import save_tiny  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
EQ_FIXTURE = FIXTURES / "entityquestions"
SHARED_EQ = Path(__file__).resolve().parents[2] / "shared" / "data" / "entityquestions"


def fixture_questions() -> list[str]:
    texts = []
    for path in sorted(EQ_FIXTURE.glob("*/*.json")):
        for item in json.loads(path.read_text(encoding="utf-8")):
            texts.append(f"Question: {item['question']}\nAnswer: {item['answers'][0]}\n")
    return texts


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


def write_dataset(root: Path, items: dict[str, dict[str, list]], meta: dict | None = None) -> Path:
    """Write ``{split: {relation: [item, ...]}}`` in the EntityQuestions layout."""
    for split, by_rel in items.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for rel, rows in by_rel.items():
            (root / split / f"{rel}.{split}.json").write_text(json.dumps(rows), encoding="utf-8")
    if meta is not None:
        (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    return root


def perturbed_copy(src: Path, out: Path, seed: int = 0, scale: float = 0.05, dtype=None) -> Path:
    """A "fine-tuned" copy of a checkpoint: half the weights move by seeded noise of varying
    size (so r has exact ties at 0 and a wide range); optionally cast (both sides) to ``dtype``."""
    import torch
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(seed)
    w = load_file(src / "model.safetensors")
    out.mkdir(parents=True)
    noisy = {}
    for k, v in w.items():
        mask = torch.rand(v.shape, generator=g) < 0.5
        noisy[k] = v + mask * scale * torch.randn(v.shape, generator=g) * (
            1 + 10 * torch.rand(1, generator=g)
        )
        if dtype is not None:
            noisy[k] = noisy[k].to(dtype)
    save_file(noisy, str(out / "model.safetensors"))
    for f in src.iterdir():  # config and tokenizer: a loadable model folder
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy2(f, out / f.name)
    return out


def grid_yaml(tmp_path: Path, model: Path, **kw) -> Path:
    """A tiny grid (4 cells: levels 1, mixed x sizes 4, 8) on the EQ fixture, as a YAML file."""
    cfg = {
        "model": str(model), "data": "entityquestions", "data_dir": str(EQ_FIXTURE),
        "train_limit_per_relation": 12, "levels": [1, "mixed"], "sizes": [4, 8], "seeds": [0],
        "probe": {"method": "likelihood", "templates": 3, "chunk_size": 8, "batch_size": 16},
        "train": {"batch_size": 4, "learning_rate": 1e-3},
        "eval": {"limit_per_relation": 3, "batch_size": 16, "max_new_tokens": 6},
        "device": "cpu", "out": str(tmp_path / "run"), **kw,
    }  # fmt: skip
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli_run(path: Path, *overrides: str) -> subprocess.Popen:
    """``sftscope run PATH`` in a subprocess, its output appended to ``run.log`` beside PATH."""
    # Same thread count in every run: float reductions (hence greedy outputs) depend on it.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "sftscope.cli", "run", str(path), *overrides]
    log = open(path.parent / "run.log", "a")  # noqa: SIM115 - a pipe could fill up and block
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
