"""Pretrain a tiny LLaMA on the testbed world's corpus, so its knowledge is graded by exposure.

Each fact with exposure e is stated e times in the corpus, each time through one of the first
``train_templates`` mapping templates of its relation (``{prefix} {object}.``); the remaining
templates are never seen, so the probe (which averages over all of them) tests more than one
memorised phrasing. Sentences are shuffled, tokenised with a byte-level BPE trained on the
corpus and the held-out wording, and packed into ``block_size`` blocks; transformers' Trainer
does the rest. The output is a normal ``save_pretrained`` model folder beside the dataset, with
``testbed.json``: sizes, the loss, and greedy recall per exposure bucket on a seen phrasing.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from sftscope.data.templates import fill, load_templates
from sftscope.io import atomic_write_json, replace_dir
from sftscope.testbed.world import (
    BUCKETS,
    RELATIONS,
    TESTBED,
    Fact,
    WorldConfig,
    bucket_of,
    generate,
    write_dataset,
)


class TestbedConfig(BaseModel):
    """``sftscope testbed build``: the world, the corpus and the pretraining run."""

    model_config = ConfigDict(extra="forbid")
    __test__ = False  # not a pytest class

    world: WorldConfig = WorldConfig()
    train_templates: int = Field(8, ge=1, description="templates the corpus uses (rest held out)")
    vocab_size: int = Field(1024, ge=300)
    hidden_size: int = Field(128, ge=16)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    block_size: int = Field(64, ge=16, description="tokens per packed training sequence")
    epochs: float = Field(8, gt=0)
    learning_rate: float = Field(2e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    threads: int | None = Field(
        1,
        ge=1,
        description="CPU threads while pretraining (None: torch's default); a model "
        "this small runs fastest on one, and many times slower when threads oversubscribe",
    )
    seed: int = 0


PRESETS: dict[str, TestbedConfig] = {
    # ~40 s on one CPU thread; greedy recall rises with exposure (0.06 at 0 → 1.0 at 16+)
    "tiny": TestbedConfig(
        world=WorldConfig(entities=60, objects=8, max_exposure=16),
        vocab_size=400,
        hidden_size=64,
        num_layers=2,
        epochs=60,
        learning_rate=3e-3,
    ),
    # ~6.5 CPU-minutes on one thread (10 min beside two other jobs on 2 cores); recall 0.02 at
    # exposure 0 -> 0.41 (1) -> 0.72 (2-3) -> 0.89 (4-7) -> 0.95 (8-15) -> 0.98+ (16+)
    "standard": TestbedConfig(
        world=WorldConfig(entities=500, objects=40, max_exposure=64),
        train_templates=16,
        epochs=12,
        learning_rate=3e-3,
    ),
}


def sentences(facts: list[Fact], n_templates: int, seed: int) -> list[str]:
    """Every statement of the corpus, shuffled: ``exposure`` per fact."""
    table = load_templates(TESTBED)
    rng = random.Random(seed)
    out = []
    for f in facts:
        seen = table[f.relation].mapping[:n_templates]
        out += [f"{fill(rng.choice(seen), f.subject)} {f.object}." for _ in range(f.exposure)]
    rng.shuffle(out)
    return out


def pack(tokenizer, texts: list[str], block: int) -> list[list[int]]:
    """Concatenate (EOS between sentences) and cut into full blocks."""
    ids: list[int] = []
    for row in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids += row + [tokenizer.eos_token_id]
    return [ids[i : i + block] for i in range(0, len(ids) - block + 1, block)]


def recall_by_exposure(model, tokenizer, facts: list[Fact]) -> dict[str, dict[str, float]]:
    """Greedy completion of each fact's first (seen) template: share containing the object."""
    from sftscope.data.matching import contains_answer
    from sftscope.models.factory import hf_engine

    table = load_templates(TESTBED)
    engine = hf_engine(model, tokenizer, batch_size=64, progress=False)
    prompts = [fill(table[f.relation].mapping[0], f.subject) for f in facts]
    outs = engine.generate(prompts, max_new_tokens=8)
    hits: dict[str, list[int]] = defaultdict(list)
    for f, (text,) in zip(facts, outs, strict=True):
        hits[bucket_of(f.exposure)].append(contains_answer(text, (f.object,)))
    order = [bucket_of(lo) for lo, _ in BUCKETS]
    return {
        b: {"facts": len(hits[b]), "recall": sum(hits[b]) / len(hits[b])} for b in order if hits[b]
    }


def build(cfg: TestbedConfig, out: Path) -> dict[str, Any]:
    """World → dataset (``OUT/data``), corpus → pretrained model (``OUT/model``), summary."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from sftscope.models.tiny import build_tiny_model, build_tokenizer

    out = Path(out)
    started = time.perf_counter()
    facts = generate(cfg.world)
    write_dataset(facts, cfg.world, out / "data")
    corpus = sentences(facts, cfg.train_templates, cfg.seed)
    table = load_templates(TESTBED)
    held_out = [t for rel in RELATIONS for t in table[rel.id].mapping]
    questions = [r.question_template for r in RELATIONS] + ["<|question|> <|answer|>"]
    tokenizer = build_tokenizer(corpus + held_out + questions, vocab_size=cfg.vocab_size)
    model = build_tiny_model(
        tokenizer,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        seed=cfg.seed,
    )
    blocks = pack(tokenizer, corpus, cfg.block_size)
    data = Dataset.from_dict({"input_ids": blocks})
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            num_train_epochs=cfg.epochs,
            learning_rate=cfg.learning_rate,
            per_device_train_batch_size=cfg.batch_size,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,
            weight_decay=0.0,
            seed=cfg.seed,
            save_strategy="no",
            report_to=[],
            logging_steps=10,
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=False,
        )
        model.train()
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=data,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        )
        threads = torch.get_num_threads()
        try:
            if cfg.threads:
                torch.set_num_threads(cfg.threads)
            result = trainer.train()
        finally:
            torch.set_num_threads(threads)
    model.eval()
    staging = out / ".model.partial"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    replace_dir(staging, out / "model")
    summary = {
        "config": cfg.model_dump(),
        "facts": len(facts),
        "statements": len(corpus),
        "tokens": len(blocks) * cfg.block_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_loss": result.training_loss,
        "steps": result.global_step,
        "recall_by_exposure": recall_by_exposure(model, tokenizer, facts),
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(out / "testbed.json", summary)
    return summary
