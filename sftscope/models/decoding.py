"""The decode loop behind ``HFEngine.generate``: rows leave the batch as soon as they finish.

``transformers``' ``generate`` keeps every row of a batch in the forward pass until the last
one is done, and samples with ``torch.multinomial`` from one global random stream. For the
probe (640 rows of 32 tokens per batch) that costs twice: a row whose outcome is decided (or
that emitted EOS or a stop string) still pays for its forward passes, and dropping it would
change every other row's random draws. This loop fixes both:

* every row draws from its own uniforms, made up front from its prompt's seed (one generator
  per prompt, ``n`` rows x ``max_new_tokens`` draws), so a row's sample depends on nothing but
  its prompt, the seed and the model — not on the batch size, the batch's other prompts, or
  which rows were dropped;
* a token is drawn by inverse-CDF sampling (cumulative softmax + one binary search per row),
  which is exact categorical sampling and, on CPU, a fraction of ``multinomial``'s cost;
* finished rows are removed from the batch and the KV cache before the next step (where the
  model's cache is attention only: a recurrent state, as hybrid linear-attention and Mamba
  layers keep, cannot drop rows, so there finished rows ride along, unread; see
  :func:`plain_cache`).

Greedy decoding (temperature 0) is the same loop with ``argmax``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from sftscope.models.shared_prefix import SharedPrefixCache, shared_prefix_attention

DoneIf = Callable[[str], bool]


@functools.cache
def _cache_name(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwarg(model: PreTrainedModel, cache) -> dict:
    """``{name: cache}`` for the model's forward: transformers 5.24 renamed ``past_key_values``
    to ``cache`` (the old name warns and goes away in 5.40); older 5.x only knows the old one."""
    return {_cache_name(type(model)): cache}


def plain_cache(model: PreTrainedModel) -> bool:
    """Whether every layer of the model's cache is a key/value cache (full or sliding window):
    the engine's fast paths then share a prefix's prefill between rows, continue a prefill in
    chunks, and drop finished rows. A recurrent layer (hybrid linear attention: Qwen3-Next,
    Jamba, Falcon-H1, Mamba 2, ...) supports none of that; its models are prefilled whole and
    decoded with every row in the batch."""
    layers = DynamicCache(config=model.config).layers
    return all(
        hasattr(layer, "batch_select_indices")
        and not any("LinearAttention" in k.__name__ for k in type(layer).__mro__)
        for layer in layers
    )


@dataclass(frozen=True)
class Finish:
    """When a row is finished: an end-of-sequence token, a stop string in its text, or its
    ``done_if`` predicate (one per row, or ``None``) holding for its text."""

    eos_ids: frozenset[int]
    stop: Sequence[str] = ()
    done_if: Sequence[DoneIf] | None = None

    @property
    def reads_text(self) -> bool:
        return bool(self.stop) or self.done_if is not None

    def by_text(self, row: int, text: str) -> bool:
        if any(s in text for s in self.stop):
            return True
        return self.done_if is not None and self.done_if[row](text)


def row_uniforms(seeds: Sequence[int], n: int, steps: int) -> torch.Tensor:
    """``[len(seeds) * n, steps]`` float64 uniforms in [0, 1); prompt ``i``'s ``n`` rows come
    from a generator seeded with ``seeds[i]`` alone."""
    draws = [
        torch.rand(n, steps, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
        for s in seeds
    ]
    return torch.cat(draws) if draws else torch.empty(0, steps, dtype=torch.float64)


def sample_tokens(logits: torch.Tensor, temperature: float, u: torch.Tensor | None) -> torch.Tensor:
    """One token per row: ``argmax`` when ``temperature`` is 0, else the token whose cumulative
    probability under ``softmax(logits / temperature)`` first exceeds ``u`` x the total."""
    if temperature == 0:
        return logits.argmax(-1)
    cdf = torch.softmax(logits.float() / temperature, dim=-1).cumsum(-1)
    total = cdf[:, -1:]
    # u < 1, but u * total may round up to total; stay strictly below so the search lands on
    # a token with non-zero probability.
    below = torch.nextafter(total, torch.zeros_like(total))
    target = torch.minimum(u.to(cdf)[:, None] * total, below)
    return torch.searchsorted(cdf, target, right=True)[:, 0]


@torch.inference_mode()
def decode(
    model: PreTrainedModel,
    tokenizer,
    last: torch.Tensor,
    mask: torch.Tensor,
    cache,
    max_new_tokens: int,
    temperature: float,
    uniforms: torch.Tensor | None,
    finish: Finish,
    prune: bool = True,
) -> tuple[list[list[int]], int]:
    """Continue prefilled rows; returns each row's new tokens (without EOS) and the number of
    token positions forwarded.

    ``last`` is ``[rows]``, each row's last prompt token (not yet in ``cache``); ``mask`` is
    the attention mask over the cached positions plus that token. ``prune``: finished rows
    leave the batch and the cache (else they stay, their tokens unread).
    """
    shared = isinstance(cache, SharedPrefixCache)
    with shared_prefix_attention(model, cache) if shared else contextlib.nullcontext():
        device = last.device
        rows = last.shape[0]
        out: list[list[int]] = [[] for _ in range(rows)]
        alive = list(range(rows))  # original row of each batch position
        over: set[int] = set()  # finished rows kept in the batch (prune=False)
        cur = last[:, None]
        pos = mask.sum(-1, keepdim=True) - 1
        forwarded = 0
        for step in range(max_new_tokens):
            logits = model(
                input_ids=cur,
                attention_mask=None if shared else mask,  # (the shared cache masks the prompts)
                position_ids=pos,
                use_cache=True,
                **cache_kwarg(model, cache),
            ).logits[:, -1]
            if shared and step == 0:
                cache.check()
            forwarded += len(alive)
            u = uniforms[alive, step].to(device) if temperature > 0 else None
            nxt = sample_tokens(logits, temperature, u)
            done: set[int] = set(over)
            for b, (row, token) in enumerate(zip(alive, nxt.tolist(), strict=True)):
                if b in over:
                    continue
                if token in finish.eos_ids:
                    done.add(b)
                else:
                    out[row].append(token)
            todo = [b for b in range(len(alive)) if b not in done]
            if finish.reads_text and todo:  # (batch_decode([]) returns [""] in transformers 5)
                texts = tokenizer.batch_decode(
                    [out[alive[b]] for b in todo], skip_special_tokens=True
                )
                done.update(
                    b for b, text in zip(todo, texts, strict=True) if finish.by_text(alive[b], text)
                )
            if step == max_new_tokens - 1 or len(done) == len(alive):
                break
            if done and not prune:
                over = done
            elif done:
                keep = [b for b in range(len(alive)) if b not in done]
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                pos, nxt = pos[index], nxt[index]
                mask = mask if shared else mask[index]
                alive = [alive[b] for b in keep]
            if not shared:
                mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
            pos = pos + 1
            cur = nxt[:, None]
        return out, forwarded
