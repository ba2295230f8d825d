"""A LoRA adapter read as a checkpoint: its base's tensors, each with the adapter's weight
delta added as it is read, so the diff and the restoration stream an adapter exactly as they
stream a full fine-tune, without writing a merged checkpoint first.

The delta of a target is PEFT's own (``get_delta_weight``): ``(B @ A) * scaling``, transposed for
``fan_in_fan_out`` layers (GPT-2's ``Conv1D``) and for embeddings, where ``scaling`` is
``lora_alpha / r`` (``alpha / sqrt(r)`` with rsLoRA; ``alpha_pattern`` per module); it is added
to the base weight the way PEFT merges (in place, in the base's dtype), so every tensor equals
the merged model's bit for bit. Modules the adapter saved whole (``modules_to_save``, and the
embeddings PEFT saves beside their LoRA) replace the base's. What PEFT merges differently
(DoRA, LoRA on fused expert parameters, trainable tokens, other PEFT methods) is a one-line
error: merge such an adapter first.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from sftscope.errors import SftscopeError
from sftscope.models.adapters import Adapter, adapter_base, find_adapter
from sftscope.params.tensors import Checkpoint, open_checkpoint

_PREFIX = "base_model.model."
# (target module, which factor) from a saved key; the adapter name is stripped by PEFT on save.
_LORA = re.compile(r"^(?P<module>.+)\.(?P<part>lora_(?:embedding_)?[AB])(?:\.weight)?$")
_MERGE_FIRST = "merge it first (PeftModel.merge_and_unload) and give the merged folder"


@dataclass
class Delta:
    """One LoRA target: its factors' keys in the adapter file and how they combine."""

    a: str = ""
    b: str = ""
    embedding: bool = False
    scaling: float = 1.0


@dataclass
class AdapterCheckpoint(Checkpoint):
    """``base`` with ``adapter`` applied: the base's names, shapes and dtypes; reads add the
    delta of a LoRA target or take a saved module's tensor."""

    base: Checkpoint = field(default_factory=lambda: Checkpoint(Path()))
    adapter_file: Path = Path()
    deltas: dict[str, Delta] = field(default_factory=dict)
    saved: dict[str, str] = field(default_factory=dict)  # base tensor name -> adapter key
    fan_in_fan_out: bool = False

    @property
    def config_root(self) -> Path:
        return self.base.config_root

    def read(self, name: str) -> torch.Tensor:
        tensor = self.base.read(name)
        if name in self.saved:  # the module saved whole, or an embedding's base layer
            tensor = self._adapter_tensor(self.saved[name]).to(tensor.dtype)
        delta = self.deltas.get(name)
        if delta is None:
            return tensor
        # PEFT loads half-precision factors as fp32 (autocast_adapter_dtype), so the product is
        # fp32, added in place into the base's dtype
        a, b = (_upcast(self._adapter_tensor(key)) for key in (delta.a, delta.b))
        product = b @ a
        tensor += (product.T if delta.embedding or self.fan_in_fan_out else product) * delta.scaling
        return tensor

    def _adapter_tensor(self, key: str) -> torch.Tensor:
        with safe_open(self.adapter_file, framework="pt") as f:
            return f.get_tensor(key)


def _upcast(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def open_weights(path: str | Path, base: str | Path | None = None) -> Checkpoint:
    """The weights of a model folder, streamed: a checkpoint folder as it is, or a PEFT adapter
    folder as its base with the adapter's deltas added (``base``: the base model, default the
    one its config names)."""
    adapter = find_adapter(path)
    if adapter is None:
        return open_checkpoint(path)
    from sftscope.models.loading import resolve_model

    parent = adapter_base(adapter, None if base is None else str(base))
    return open_adapter(adapter, open_checkpoint(resolve_model(parent)))


def open_adapter(adapter: Adapter, base: Checkpoint) -> AdapterCheckpoint:
    """The adapter over ``base`` (an opened checkpoint); every key of the adapter must be
    understood and name a tensor of the base, else a one-line error naming it."""
    cfg = adapter.config
    where = adapter.config_file
    kind = cfg.get("peft_type", "LORA")
    if kind != "LORA":
        raise SftscopeError(
            f"{where}: a {kind} adapter; the parameter level reads LoRA; {_MERGE_FIRST}"
        )
    for flag in ("use_dora", "target_parameters", "trainable_token_indices"):
        if cfg.get(flag):
            raise SftscopeError(f"{where}: {flag} is set; {_MERGE_FIRST}")
    try:
        with safe_open(adapter.weights, framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise SftscopeError(f"{adapter.weights}: not a readable safetensors file ({e})") from None
    ckpt = AdapterCheckpoint(
        root=adapter.path,
        tensors=dict(base.tensors),
        base=base,
        adapter_file=adapter.weights,
        fan_in_fan_out=bool(cfg.get("fan_in_fan_out")),
    )
    for key in shapes:
        name = key.removeprefix(_PREFIX)
        if name.endswith(".lora_B.bias"):
            raise SftscopeError(f"{where}: lora_bias is set; {_MERGE_FIRST}")
        if (m := _LORA.match(name)) is not None:
            part = m["part"]
            d = _delta(ckpt, m["module"], adapter)
            d.embedding = part.startswith("lora_embedding")
            if part.endswith("A"):
                d.a = key
            else:
                d.b = key
        elif (whole := name.replace(".base_layer.", ".")) in base.tensors:
            # a module saved whole, or (save_embedding_layers) a targeted embedding's weight
            if shapes[key] != base.tensors[whole].shape:
                raise SftscopeError(
                    f"{adapter.weights}: {key} is {list(shapes[key])}, the base's "
                    f"{list(base.tensors[whole].shape)} (resized); {_MERGE_FIRST}"
                )
            ckpt.saved[whole] = key
        else:
            raise SftscopeError(f"{adapter.weights}: {key} names no tensor of {base.root}")
    for name, d in ckpt.deltas.items():
        if not (d.a and d.b):
            raise SftscopeError(f"{adapter.weights}: {name} has only one of its LoRA factors")
        module = name.removesuffix(".weight")
        rank = shapes[d.a][0]  # A is (r, in_features), or (r, num_embeddings)
        alpha = _pattern(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", 8))
        d.scaling = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
    return ckpt


def _delta(ckpt: AdapterCheckpoint, module: str, adapter: Adapter) -> Delta:
    name = f"{module}.weight"
    if name not in ckpt.base.tensors:
        raise SftscopeError(
            f"{adapter.weights}: the adapter targets {module}, which names no tensor of "
            f"{ckpt.base.root}"
        )
    return ckpt.deltas.setdefault(name, Delta())


def _pattern(patterns: dict[str, float], module: str, default: float) -> float:
    """PEFT's per-module override: the first pattern matching the module name's tail."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default
