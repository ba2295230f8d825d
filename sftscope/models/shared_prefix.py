"""Decoding ``n`` samples of each prompt against one copy of its prompt's KV cache.

The sampling probe draws ``n`` = 10 samples of every prompt. With transformers' cache the
prompt's keys and values are copied ``n`` times (``batch_repeat_interleave``) and every decode
step concatenates one position onto every layer's K and V: the whole cache (4.4 GB for 64
few-shot prompts x 10 samples on SmolLM2) is reallocated, and its fresh pages faulted in, at
each step. Here instead:

* the prompt's cache stays as the prefill left it, one row per prompt (``[prompts, kv heads,
  prompt length, head dim]``);
* each sample's own positions (the prompt's last token and what it generates) go into buffers
  allocated for ``BLOCK`` positions and doubled, up to ``max_new_tokens``, only for the rows
  still decoding when they fill (most answers end within a few tokens); a step writes one
  position in place, and finished rows are compacted in place;
* attention is computed in two parts, the queries of a prompt's samples against its prompt
  (one matrix product per prompt for all its samples and query heads) and each row against its
  own positions, merged by their log-sum-exp: exact attention, in float32, with a different
  summation order than SDPA (so a sample can differ in the last bits of its logits).

It is an attention function registered with transformers' ``AttentionInterface`` and used only
while :func:`shared_prefix_attention` is active. Models it cannot serve (sliding windows,
recurrent layers, soft-capped or biased attention, attention modules outside the interface)
keep transformers' cache: see :func:`supports_shared_prefix`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch
from transformers import AttentionInterface, DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer
from transformers.masking_utils import AttentionMaskInterface

NAME = "sftscope_shared_prefix"
VERSION = "shared-prefix-1"  # the engine's decode, recorded with what it generates
BLOCK = 8  # a row's own positions allocated first (doubled as needed): most answers are short
_ACTIVE: contextvars.ContextVar[SharedPrefixCache | None] = contextvars.ContextVar(
    "sftscope_shared_prefix", default=None
)


class SharedPrefixLayer(CacheLayerMixin):
    """One layer: the prompts' keys/values (read only) and each row's own positions."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        super().__init__()
        self.prefix_k, self.prefix_v = keys, values
        self.capacity = capacity
        self.length = 0  # positions of each row written so far
        self.reads = 0  # forwards whose attention read this layer (see SharedPrefixCache.check)
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.rows = key_states.shape[0]
        self.keys = self._room(key_states, min(self.capacity, BLOCK))
        self.values = self._room(value_states, min(self.capacity, BLOCK))

    def _room(self, like: torch.Tensor, positions: int) -> torch.Tensor:
        return like.new_empty(self.rows, like.shape[1], positions, like.shape[-1])

    def _grow(self, end: int) -> None:
        """Room for ``end`` positions: the buffers doubled (at most ``capacity``) for the rows
        still decoding, so rows that finished early never get room they would not use."""
        size = min(self.capacity, max(end, 2 * self.keys.shape[-2]))
        keys, values = self._room(self.keys, size), self._room(self.values, size)
        keys[:, :, : self.length] = self.keys[: self.rows, :, : self.length]
        values[:, :, : self.length] = self.values[: self.rows, :, : self.length]
        self.keys, self.values = keys, values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is None:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"shared-prefix cache: {end} positions > capacity {self.capacity}")
        if end > self.keys.shape[-2]:
            self._grow(end)
        self.keys[: self.rows, :, self.length : end] = key_states
        self.values[: self.rows, :, self.length : end] = value_states
        self.length = end
        return self.keys[: self.rows, :, :end], self.values[: self.rows, :, :end]

    def get_seq_length(self) -> int:
        return self.prefix_k.shape[-2] + self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return self.prefix_k.shape[-2] + self.capacity

    def select_rows(self, keep: torch.Tensor, first: int) -> None:
        """Keep rows ``keep`` (ascending), moved to the front of the buffers in place; the
        rows before ``first`` (the first one dropped) stay where they are."""
        if self.keys is not None:
            m, moved = len(keep), keep[first:]
            self.keys[first:m, :, : self.length] = self.keys[moved, :, : self.length]
            self.values[first:m, :, : self.length] = self.values[moved, :, : self.length]
            self.rows = m

    def select_prompts(self, keep: torch.Tensor) -> None:
        self.prefix_k, self.prefix_v = self.prefix_k[keep], self.prefix_v[keep]


class SharedPrefixCache(Cache):
    """The decode cache of ``rows = prompts x n`` samples over a prefilled ``DynamicCache``
    of one row per prompt; ``prefix_mask`` ``[prompts, cached positions]`` marks the prompts'
    real (unpadded) positions."""

    def __init__(self, prefill: DynamicCache, prefix_mask: torch.Tensor, n: int, capacity: int):
        layers = [SharedPrefixLayer(lay.keys, lay.values, capacity) for lay in prefill.layers]
        super().__init__(layers=layers)
        prompts = prefix_mask.shape[0]
        device = prefix_mask.device
        self.n = n
        self.prefix_mask = prefix_mask.bool()
        self.row_prompt = torch.arange(prompts, device=device).repeat_interleave(n)
        self.row_slot = torch.arange(n, device=device).repeat(prompts)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices`` (ascending); a prompt none of whose rows is left goes too."""
        prompts = self.row_prompt[indices]
        alive = torch.unique(prompts)
        kept = indices == torch.arange(len(indices), device=indices.device)
        first = len(indices) if bool(kept.all()) else int(kept.logical_not().nonzero()[0])
        for layer in self.layers:
            layer.select_rows(indices, first)
            if len(alive) < self.prefix_mask.shape[0]:
                layer.select_prompts(alive)
        if len(alive) < self.prefix_mask.shape[0]:
            self.prefix_mask = self.prefix_mask[alive]
            prompts = torch.searchsorted(alive, prompts)
        self.row_prompt, self.row_slot = prompts, self.row_slot[indices]

    def check(self) -> None:
        """After a forward: every layer was attended through :func:`attend` (else the model's
        attention bypasses the interface, and its output ignored the prompts)."""
        missed = [i for i, layer in enumerate(self.layers) if layer.reads != layer.length]
        if missed:
            raise RuntimeError(
                f"shared-prefix decoding: layers {missed} did not use its attention; "
                "this model needs transformers' cache (supports_shared_prefix should say so)"
            )


def attend(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The attention function: ``query`` ``[rows, heads, 1, dim]`` against the row's prompt
    in the cache's prefix and its own positions (``key``/``value``, from ``update``)."""
    cache = _ACTIVE.get()
    if cache is None:
        raise RuntimeError("shared-prefix attention used outside shared_prefix_attention()")
    for unsupported in ("softcap", "sliding_window", "position_bias", "s_aux", "sinks"):
        if kwargs.get(unsupported) is not None:
            raise RuntimeError(f"shared-prefix attention: {unsupported} is not supported")
    layer: SharedPrefixLayer = cache.layers[module.layer_idx]
    layer.reads += 1
    rows, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    scale = dim**-0.5 if scaling is None else scaling
    q = query.float().view(rows, kv_heads, groups * q_len, dim)

    # each row against its own positions
    s_own = torch.matmul(q, key.float().transpose(-1, -2)) * scale  # [rows, kv, g, own]
    out_own, lse_own = _softmax_out(s_own, value.float())

    # a prompt's rows against the prompt: its n sample slots side by side, one product
    prompts, plen = cache.prefix_mask.shape
    if plen == 0:
        out = out_own
    else:
        slots = q.new_zeros(prompts, cache.n, kv_heads, groups * q_len, dim)
        slots[cache.row_prompt, cache.row_slot] = q
        slots = slots.transpose(1, 2).reshape(prompts, kv_heads, cache.n * groups * q_len, dim)
        s_pre = torch.matmul(slots, layer.prefix_k.float().transpose(-1, -2)) * scale
        s_pre = s_pre.masked_fill(~cache.prefix_mask[:, None, None, :], float("-inf"))
        out_pre, lse_pre = _softmax_out(s_pre, layer.prefix_v.float())
        shape = (prompts, kv_heads, cache.n, groups * q_len)
        out_pre = out_pre.view(*shape, -1)[cache.row_prompt, :, cache.row_slot]
        lse_pre = lse_pre.view(*shape)[cache.row_prompt, :, cache.row_slot]
        lse = torch.logaddexp(lse_pre, lse_own)
        out = out_pre * (lse_pre - lse).exp()[..., None]
        out = out + out_own * (lse_own - lse).exp()[..., None]
    # [rows, kv, g * q_len, dv] -> transformers' [rows, q_len, heads, dv]
    out = out.view(rows, kv_heads, groups, q_len, -1).permute(0, 3, 1, 2, 4)
    return out.reshape(rows, q_len, heads, -1).to(query.dtype), None


def _softmax_out(scores: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(scores) @ values`` and the log-sum-exp of ``scores`` per query; a query
    with every position masked gets output 0 and log-sum-exp -inf (it then weighs nothing)."""
    top = scores.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weights = (scores - top).exp()
    total = weights.sum(-1, keepdim=True)
    out = torch.matmul(weights, values) / total.clamp_min(torch.finfo(total.dtype).tiny)
    return out, (total.log() + top).squeeze(-1)


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None  # attend masks the prompts' padding itself


AttentionInterface.register(NAME, attend)
AttentionMaskInterface.register(NAME, _no_mask)


def supports_shared_prefix(model: PreTrainedModel) -> bool:
    """Whether the model's decode can run on :class:`SharedPrefixCache`: every cache layer a
    full-attention key/value layer, attention through transformers' ``AttentionInterface``
    (``sdpa`` or ``eager``), no soft-capping. Anything else keeps transformers' cache."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    if getattr(config, "attn_logit_softcapping", None) is not None:
        return False
    if getattr(config, "alibi", False) or config.model_type in ("bloom", "mpt"):
        return False
    can_set = getattr(type(model), "_can_set_attn_implementation", None)
    if can_set is None or not can_set():
        return False
    layers = DynamicCache(config=config).layers
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


@contextlib.contextmanager
def shared_prefix_attention(model: PreTrainedModel, cache: SharedPrefixCache) -> Iterator[None]:
    """While active, the model attends through :func:`attend` over ``cache``."""
    before = model.config._attn_implementation
    token = _ACTIVE.set(cache)
    model.config._attn_implementation = NAME
    try:
        yield
    finally:
        model.config._attn_implementation = before
        _ACTIVE.reset(token)
