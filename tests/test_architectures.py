"""Every stage on every common architecture: a tiny random model of each model type in
``ARCHITECTURES`` (dense, fused projections, GPT-2 / GPT-NeoX / Falcon layouts, sliding-window
Gemmas, mixtures of experts) is fine-tuned with ``sftscope train`` (full; LoRA on three), then
audited end to end: the likelihood probe of both models, CBQA of both, the token KL, the weight
diff and the restore sweep at k = 5 and 20 %."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftscope.config import TrainConfig
from sftscope.models.tiny import ARCHITECTURES, MOE, save_tiny_arch
from sftscope.pipeline.audit import Audit
from sftscope.train import run_train

from helpers import EQ_FIXTURE, fixture_questions, tiny_audit, write_jsonl

LORA = ("llama", "gpt2", "qwen3_moe")  # adapters on a fused-attention and an MoE model too
CASES = [(arch, False) for arch in ARCHITECTURES] + [(arch, True) for arch in LORA]

pytestmark = pytest.mark.slow  # ~17 fine-tunes and audits: the matrix, not the quick loop


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [
        {"question": it["question"], "answer": it["answers"][0]}
        for it in json.loads((EQ_FIXTURE / "test" / "P17.test.json").read_text())[:8]
    ]
    return write_jsonl(tmp_path_factory.mktemp("sft") / "sft.jsonl", rows)


@pytest.mark.parametrize(("arch", "lora"), CASES, ids=[f"{a}{'-lora' * lo}" for a, lo in CASES])
def test_train_then_audit(arch: str, lora: bool, sft_file: Path, tmp_path: Path) -> None:
    base = save_tiny_arch(arch, fixture_questions(), tmp_path / "base")
    tuned = tmp_path / "tuned"
    recipe = {"lora": lora, "lora_r": 4} if lora else {}
    run_train(
        TrainConfig(
            model=str(base),
            train_file=sft_file,
            out=tuned,
            learning_rate=1e-3,
            batch_size=4,
            device="cpu",
            **recipe,
        )
    )
    assert json.loads((tuned / "config.json").read_text()).get("output_router_logits") in (
        None,
        False,
    )
    Audit(tiny_audit(base, tuned, tmp_path / "audit")).run()
    s = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert s["facts"] == 6 and s["accuracy"]["tuned"]["in_domain"]["n"] == 6
    assert s["kl"]["full"]["overall"]["n"] == 6
    diff = s["params"]["diff"]
    assert set(diff["mean_change_per_layer"]) == {"0", "1"}
    assert "other" not in diff["mean_change_per_module"]
    labels = [r["label"] for r in s["params"]["restore"]["rows"]]
    assert labels == ["tuned", "global-top-5", "global-top-20"]
    if arch in MOE:  # the experts' own names (qualified when a shared expert has them too)
        modules = set(diff["mean_change_per_module"])
        assert "gate" in modules
        assert modules & {"w1", "gate_proj", "experts.gate_proj"}
