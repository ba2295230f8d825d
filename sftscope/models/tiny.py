"""Tiny models and a locally trained tokenizer, for tests and toy worlds.

Nothing is downloaded: the tokenizer is a byte-level BPE trained with ``tokenizers`` on the
texts given, and the model is randomly initialised from a small config: a LLaMA
(:func:`save_tiny`), or any of :data:`ARCHITECTURES` (:func:`save_tiny_arch`), the matrix of
model types the parameter level and the stages are tested on.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE over ``texts``: any string round-trips, so no input is out of vocabulary."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised LLaMA with the tokenizer's vocabulary (seeded, fp32)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def save_tiny(texts: Iterable[str], out_dir: str | Path, seed: int = 0, **kw) -> Path:
    """Build both and ``save_pretrained`` them into ``out_dir`` (safetensors)."""
    out = Path(out_dir)
    tokenizer = build_tokenizer(texts)
    model = build_tiny_model(tokenizer, seed=seed, **kw)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# Model type -> what its config needs beyond the common small sizes (dense, fused-projection and
# mixture-of-experts architectures; GPT-2 and GPT-NeoX name their layers otherwise).
ARCHITECTURES: dict[str, dict] = {
    "llama": {},
    "qwen2": {},
    "qwen3": {"head_dim": 8},
    "mistral": {},
    "gemma2": {"head_dim": 8},
    "gemma3_text": {"head_dim": 8},
    "phi3": {},
    "gpt_neox": {},
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 512},
    "falcon": {},
    "olmo2": {},
    "granite": {},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen3_moe": {
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 16,
        "head_dim": 8,
    },
    # hybrids: linear attention (Gated DeltaNet) + attention layers, MoE; Mamba 2 beside attention
    "qwen3_next": {
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 16,
        "head_dim": 8,
        "linear_num_value_heads": 2,
        "linear_num_key_heads": 2,
        "linear_key_head_dim": 8,
        "linear_value_head_dim": 8,
        "layer_types": ["linear_attention", "full_attention"],
    },
    "falcon_h1": {  # its Mamba 2 mixer sized like the rest (the defaults are 128 heads)
        "mamba_n_heads": 4,
        "mamba_d_head": 16,
        "mamba_d_ssm": 64,
        "mamba_d_state": 16,
        "mamba_chunk_size": 16,
    },
}
MOE = ("mixtral", "qwen3_moe", "qwen3_next")


def save_tiny_arch(
    model_type: str, texts: Iterable[str], out_dir: str | Path, seed: int = 0
) -> Path:
    """A 2-layer random model of ``model_type`` (a key of :data:`ARCHITECTURES`) with a BPE
    tokenizer over ``texts``, saved with ``save_pretrained`` into ``out_dir``."""
    tokenizer = build_tokenizer(texts)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **ARCHITECTURES[model_type],
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
