"""Which inference engine a stage runs on (``engine: hf|vllm``, ``--engine``), and vLLM's own
settings. Imports neither torch nor vLLM: configs are read before anything loads.

The engine counts in fingerprints (vLLM's kernels and random streams differ from the HF
engine's, so its greedy answers agree on most items, not all, and its samples are other draws);
the vLLM settings say how it runs, never what it computes, so they do not count. (``hf``, the
engine of every run made before there was a choice, leaves fingerprints as they were.)
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sftscope.config_base import StageConfig, added, runtime

EngineName = Literal["hf", "vllm"]


class VLLMSettings(StageConfig):
    """``engine: vllm``: the keyword arguments of ``vllm.LLM`` that users tune."""

    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="share of the GPU's memory vLLM takes (weights + KV cache)"
    )
    kv_cache_gib: float | None = Field(
        None, gt=0, description="KV cache size, GiB (default: from gpu_memory_utilization on a "
        "GPU, 2 on a CPU, where the other default would reserve most of the machine's memory)",
    )  # fmt: skip
    max_model_len: int | None = Field(
        None, ge=16, description="longest sequence (default: the model's context length)"
    )
    enforce_eager: bool | None = Field(
        None, description="skip CUDA graphs and torch.compile (default: on CPU only, where "
        "compiling SmolLM2 on a CPU took minutes)",
    )  # fmt: skip
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one model is split over")


class EngineFields(StageConfig):
    """The engine of a stage that loads a model for generation or scoring."""

    engine: EngineName = added(
        "hf", "hf (transformers; the default, and the faster on CPU) or vllm (pip install "
        "'sftscope[vllm]'; one model per process, so such stages run in their own)",
    )  # fmt: skip
    vllm: VLLMSettings = runtime(VLLMSettings(), "engine: vllm settings")
