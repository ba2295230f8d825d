"""Which inference engine a stage runs on (``engine: NAME``, ``--engine``; the names are
:data:`sftscope.registry.ENGINES`'), and each engine's own settings block (vLLM's is here), a
config section named after the engine. Imports neither torch nor vLLM: configs are read before
anything loads.

The engine counts in fingerprints (vLLM's kernels and random streams differ from the HF
engine's, so its greedy answers agree on most items, not all, and its samples are other draws);
the vLLM settings say how it runs, never what it computes, so they do not count. (``hf``, the
engine of every run made before there was a choice, leaves fingerprints as they were.)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

from sftscope.config.base import StageConfig, added, runtime
from sftscope.registry import ENGINES, load_target

EngineName = ENGINES.literal()


class HFSettings(StageConfig):
    """``engine: hf``: how the transformers engine decodes."""

    decode: Literal["shared-prefix", "dynamic-cache"] = Field(
        "shared-prefix",
        description="shared-prefix: each prompt's KV cache kept once for its n samples, each "
        "sample's own positions in preallocated room (where the model's attention allows it, "
        "else dynamic-cache); dynamic-cache: transformers' cache, copied per sample and regrown "
        "each step, the decode of every probe made before the other existed (a probe resumes "
        "only under the decode it began with)",
    )


class VLLMSettings(StageConfig):
    """``engine: vllm``: the keyword arguments of ``vllm.LLM`` that users tune."""

    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="share of the GPU's memory vLLM takes (weights + KV cache)"
    )
    kv_cache_gib: float | None = Field(
        None,
        gt=0,
        description="KV cache size, GiB (default: from gpu_memory_utilization on a "
        "GPU, 2 on a CPU, where the other default would reserve most of the machine's memory)",
    )
    max_model_len: int | None = Field(
        None, ge=16, description="longest sequence (default: the model's context length)"
    )
    enforce_eager: bool | None = Field(
        None,
        description="skip CUDA graphs and torch.compile (default: on CPU only, where "
        "compiling SmolLM2 on a CPU took minutes)",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one model is split over")


def _engine_fields() -> type[StageConfig]:
    """``engine`` and one settings section per engine that has one (``vllm``), from the
    registry: a new engine's settings block is a section of every model stage's config."""
    fields: dict[str, Any] = {
        "engine": (EngineName, added("hf", f"the inference engine: {ENGINES.help()}")),
    }
    for name, entry in ENGINES.items():
        if entry.settings:
            cls = load_target(entry.settings)
            fields[name] = (cls, runtime(cls(), f"engine: {name} settings"))
    doc = "The engine of a stage that loads a model for generation or scoring."
    return create_model(
        "EngineFields", __base__=StageConfig, __doc__=doc, __module__=__name__, **fields
    )


EngineFields = _engine_fields()


def engine_settings(cfg: Any) -> BaseModel | None:
    """The settings block of the engine ``cfg.engine`` names (None: it has none)."""
    return getattr(cfg, cfg.engine) if ENGINES[cfg.engine].settings else None
