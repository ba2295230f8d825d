"""``batch_size: auto``: prompts per batch from the free GPU memory and the model's shape.

A fixed batch size is either wasteful (a 135M model on an 80 GB GPU) or fatal (64 prompts x 10
samples on a 70B model). On CUDA, ``auto`` estimates what one prompt's rows hold at their peak
and fills a share of the free memory with them:

* the KV cache: 2 (K and V) x layers x KV heads x head dim values per token, over the prompt
  and every new token, once per sample; counted twice, since gathering rows of the cache
  (shared prefixes, finished rows leaving) copies it;
* one layer's activations during the prefill (attention projections, the MLP's intermediate
  tensors, and the attention scores if the kernel materialises them);
* the fp32 logits the engine turns into probabilities (a few copies: cast, softmax, cumsum).

The estimate is pessimistic on purpose and only ``FREE_SHARE`` of the free memory is used:
the allocator fragments, and an out-of-memory error halfway through a probe costs more than a
smaller batch. On CPU, ``auto`` is :data:`CPU_BATCH_SIZE` (CPU throughput barely grows past it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

log = logging.getLogger(__name__)

CPU_BATCH_SIZE = 32
FREE_SHARE = 0.7
MAX_BATCH_SIZE = 4096


@dataclass(frozen=True)
class ModelShape:
    """What the memory estimate needs to know about a decoder."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    bytes: int  # per value of the model's dtype

    @classmethod
    def of(cls, model: PreTrainedModel) -> ModelShape:
        cfg = model.config.get_text_config()
        heads = cfg.num_attention_heads
        hidden = cfg.hidden_size
        return cls(
            layers=cfg.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            head_dim=getattr(cfg, "head_dim", None) or hidden // heads,
            hidden=hidden,
            intermediate=getattr(cfg, "intermediate_size", None) or 4 * hidden,
            vocab=cfg.vocab_size,
            bytes=model.dtype.itemsize,
        )


def prompt_bytes(shape: ModelShape, tokens: int, rows: int = 1, logit_positions: int = 1) -> int:
    """Peak memory of one prompt: ``tokens`` = prompt + new tokens, ``rows`` = samples sharing
    its prefill, ``logit_positions`` = positions whose full-vocabulary logits are kept at once
    (1 while decoding; the continuation's length when scoring)."""
    kv = 2 * 2 * shape.layers * shape.kv_heads * shape.head_dim * shape.bytes * tokens * rows
    act = tokens * (4 * shape.hidden + 3 * shape.intermediate) * shape.bytes
    scores = shape.heads * tokens * tokens * shape.bytes
    logits = rows * logit_positions * shape.vocab * 4 * 4
    return kv + act + scores + logits


def free_cuda_bytes(device: torch.device) -> int:
    """Free memory on ``device``, counting what PyTorch's allocator holds but does not use."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def auto_batch_size(
    model: PreTrainedModel,
    tokens: int,
    rows: int = 1,
    logit_positions: int = 1,
    free_bytes: int | None = None,
) -> int:
    """Prompts per batch for ``model`` (see the module docstring); :data:`CPU_BATCH_SIZE` off
    CUDA. ``free_bytes`` replaces the measured free memory (tests, planning)."""
    if free_bytes is None:
        if model.device.type != "cuda":
            return CPU_BATCH_SIZE
        free_bytes = free_cuda_bytes(model.device)
    need = prompt_bytes(ModelShape.of(model), tokens, rows, logit_positions)
    size = max(1, min(MAX_BATCH_SIZE, int(free_bytes * FREE_SHARE) // need))
    log.info(
        "batch_size auto: %d prompts (%d tokens x %d rows, %.1f MiB each, %.1f GiB free)",
        size,
        tokens,
        rows,
        need / 2**20,
        free_bytes / 2**30,
    )
    return size
