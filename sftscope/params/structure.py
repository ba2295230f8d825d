"""Where every tensor of a checkpoint sits, read from the architecture, not from LLaMA names.

The model is built on the meta device from the checkpoint's own ``config.json`` (accelerate's
``init_empty_weights``: no memory, no weights) and its module tree is walked: the decoder layers
are the repeated ``ModuleList`` of ``num_hidden_layers`` blocks, and inside a layer attention,
MLP, mixture-of-experts experts and router, and norms are recognised by module type. A tensor's
checkpoint name is mapped onto that tree the way transformers itself loads it (its checkpoint
conversion mapping: Mixtral's ``block_sparse_moe.experts.3.w1`` is the fused
``mlp.experts.gate_up_proj``), so legacy and fused layouts, GPT-2's ``transformer.h.N`` and
GPT-NeoX's ``gpt_neox.layers.N`` all resolve.

Every tensor gets a :class:`Role`: its decoder layer (None outside the layers), its block
(``attention``, ``mlp``, ``experts``, ``router``, ``norm``, ``embedding``, ``other``), its
module (the checkpoint's own name for the projection: ``q_proj``, ``qkv_proj``,
``query_key_value``, ``c_attn``, ``gate_up_proj``, ``w1``, ...) and, for a per-expert tensor,
its expert. The regions keep their meaning on every architecture:

* ``paper``: the decoder-layer weights, norms excluded (the paper's restoration region);
* ``attention``; ``mlp`` (dense MLP and the experts); ``router``; ``embedding`` (input and
  output embeddings); ``all``; ``re:PATTERN`` (tensor names matching a regular expression).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from torch import nn

from sftscope.errors import SftscopeError

REGIONS = ("paper", "attention", "mlp", "router", "embedding", "all")
BLOCKS = ("attention", "mlp", "experts", "router", "norm", "embedding", "other")
_REGION_BLOCKS = {
    "attention": {"attention"},
    "mlp": {"mlp", "experts"},
    "router": {"router"},
    "embedding": {"embedding"},
}
_PARAM = re.compile(r"\.(weight|bias|[A-Za-z_]*scale[A-Za-z_]*|inv_freq)$")
_EXPERT = re.compile(r"\.experts\.(\d+)\.")


@dataclass(frozen=True)
class Role:
    """Where one tensor sits: decoder layer, block, module and (per-expert layouts) expert."""

    layer: int | None
    block: str
    module: str
    expert: int | None = None


def _kind(module: nn.Module, attr: str) -> str | None:
    """The block a module stands for, from its type (and, for a router, its place)."""
    name = type(module).__name__
    if "Experts" in name or attr == "experts":
        return "experts"
    if "Router" in name or (
        attr in ("gate", "router", "shared_expert_gate") and isinstance(module, nn.Linear)
    ):
        return "router"
    if "Attention" in name or "Attn" in name or _sequence_mixer(name, attr):
        return "attention"
    if isinstance(module, nn.LayerNorm) or "Norm" in name:
        return "norm"
    if "MLP" in name or "Moe" in name or "MoE" in name or "FeedForward" in name:
        return "mlp"
    if isinstance(module, nn.Embedding):
        return "embedding"
    return None


def _sequence_mixer(name: str, attr: str) -> bool:
    """A recurrent token mixer in place of (or beside) attention: linear attention (Qwen3-Next's
    Gated DeltaNet) and state-space layers (Mamba, Falcon-H1's mixer); their block is
    ``attention``, the layer's sequence mixing."""
    return (
        "DeltaNet" in name
        or "Mamba" in name
        or name.endswith("Mixer")
        or attr in ("linear_attn", "mamba", "mixer")
    )


class Structure:
    """The roles of a model's tensors, from its meta-device module tree (see the module doc)."""

    def __init__(self, model: nn.Module, num_layers: int | None) -> None:
        self.modules = dict(model.named_modules())
        self.layers_path = _layers_path(self.modules, num_layers)
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.output_embeddings = {
            n for n, m in self.modules.items() if m is out and out is not None
        }
        self._rename = _renamer(model)
        self._roles: dict[str, Role] = {}

    def role(self, name: str) -> Role:
        """The role of the checkpoint tensor ``name``; one line naming it when the architecture
        has no place for it."""
        if name not in self._roles:
            self._roles[name] = self._resolve(name)
        return self._roles[name]

    def _resolve(self, name: str) -> Role:
        key = self._rename(name)
        path = _deepest(self.modules, key) or _deepest(self.modules, name)
        if path is None:
            raise SftscopeError(
                f"tensor {name}: no module of the architecture in config.json holds it"
            )
        layer = None
        prefix = f"{self.layers_path}." if self.layers_path else None
        if prefix and path.startswith(prefix):
            layer = int(path[len(prefix) :].split(".")[0])
        block = self._block(path, layer is not None)
        m = _EXPERT.search(name)
        expert = int(m.group(1)) if m and block == "experts" else None
        return Role(layer, block, _module_name(name, path), expert)

    def _block(self, path: str, in_layer: bool) -> str:
        if path in self.output_embeddings:
            return "embedding"
        parts = path.split(".")
        start = len(self.layers_path.split(".")) + 1 if in_layer else 0
        found = None
        for end in range(len(parts), start, -1):  # deepest first: experts inside an MoE block
            kind = _kind(self.modules[".".join(parts[:end])], parts[end - 1])
            if kind in ("experts", "router", "norm"):
                return kind
            found = found or kind
        return found or "other"

    def renamed(self, names: list[str]) -> list[str]:
        """The tensors the model holds under another name or shape than the checkpoint (a
        per-expert ``experts.3.w1`` inside a fused ``experts.gate_up_proj``): the loaded model
        has no weight that is one of these tensors."""
        return [n for n in names if self._rename(n) != n]

    def names(self, names: list[str], region: str) -> list[str]:
        """The tensors of ``names`` in ``region``."""
        return [n for n in names if self.in_region(n, region)]

    def in_region(self, name: str, region: str) -> bool:
        if region.startswith("re:"):
            return re.search(region[3:], name) is not None
        if region == "all":
            return True
        role = self.role(name)
        if region == "paper":
            return role.layer is not None and role.block != "norm"
        if region in _REGION_BLOCKS:
            return role.block in _REGION_BLOCKS[region]
        raise SftscopeError(
            f"region {region!r}: expected one of {', '.join(REGIONS)} or re:PATTERN"
        )

    def modules_of(self, names: list[str]) -> dict[str, str]:
        """Tensor -> its module label; a label two blocks share (GPT-2's ``c_proj`` in both
        attention and MLP) is qualified by the block (``attention.c_proj``)."""
        roles = {n: self.role(n) for n in names}
        blocks: dict[str, set[str]] = {}
        for r in roles.values():
            blocks.setdefault(r.module, set()).add(r.block)
        return {
            n: f"{r.block}.{r.module}" if len(blocks[r.module]) > 1 else r.module
            for n, r in roles.items()
        }


def _layers_path(modules: dict[str, nn.Module], num_layers: int | None) -> str:
    """The decoder layers: the (shallowest) ``ModuleList`` of ``num_hidden_layers`` blocks (the
    longest list when the config does not say)."""
    lists = [
        (n, m)
        for n, m in modules.items()
        if isinstance(m, nn.ModuleList) and len(m) > 0 and not n.endswith("experts")
    ]
    if num_layers is not None:
        exact = [n for n, m in lists if len(m) == num_layers]
        if exact:
            return min(exact, key=lambda n: n.count("."))
    return max(lists, key=lambda x: len(x[1]))[0] if lists else ""


def _deepest(modules: dict[str, nn.Module], key: str) -> str | None:
    """The deepest module whose path is ``key`` or a prefix of it at a dot."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        path = ".".join(parts[:end])
        if path in modules:
            return path
    return None


def _module_name(name: str, path: str) -> str:
    """The checkpoint's own name for the tensor's module: its last segment before the
    parameter name (``experts.3.w1.weight`` -> ``w1``; a fused ``experts.gate_up_proj`` ->
    ``gate_up_proj``)."""
    stem = _PARAM.sub("", name)
    leaf = stem.rsplit(".", 1)[-1]
    if stem == name:  # no parameter suffix: a fused tensor named as the parameter itself
        return leaf
    return leaf if not leaf.isdigit() else path.rsplit(".", 1)[-1]


def _renamer(model: nn.Module):
    """Checkpoint key -> model key, as transformers renames keys when it loads a checkpoint
    (identity where it has no conversion mapping for the architecture)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            WeightConverter,
            WeightRenaming,
            rename_source_key,
        )

        transforms = get_model_conversion_mapping(model)
    except (ImportError, AttributeError, TypeError):  # an older transformers: names as saved
        return lambda key: key
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    meta = model.state_dict()
    prefix = getattr(model, "base_model_prefix", None)

    def rename(key: str) -> str:
        return rename_source_key(key, renamings, converters, prefix, meta)[0]

    return rename


@lru_cache(maxsize=8)
def _cached(config_text: str, folder: str, trust_remote_code: bool) -> Structure:
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, OSError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SftscopeError(
            f"{folder}/config.json: cannot build the architecture to map its tensors ({first})"
        ) from None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return Structure(model, getattr(text_config, "num_hidden_layers", None))


def structure_of(folder: str | Path, trust_remote_code: bool = False) -> Structure:
    """The structure of the checkpoint in ``folder`` (its ``config.json``); cached per config."""
    config = Path(folder) / "config.json"
    if not config.exists():
        raise SftscopeError(
            f"{folder}: no config.json (the parameter level reads the architecture from it)"
        )
    return _cached(config.read_text(encoding="utf-8"), str(Path(folder)), trust_remote_code)
