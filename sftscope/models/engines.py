"""The inference engine: batched generation and teacher-forced scoring.

Every stage talks to a model through two calls, so a faster backend (e.g. vLLM) can be added
by implementing :class:`Engine` without touching the stages (the factory,
:mod:`sftscope.models.factory`, builds the one a stage names; vLLM's is
:mod:`sftscope.models.vllm_engine`):

* ``generate`` — batches of token-sorted prompts whose shared prefixes are prefilled once, KV
  cache, greedy or pure temperature sampling (no top-k/top-p truncation, so probabilities mean
  what the probe assumes), ``n`` samples per prompt sharing the prompt's prefill, stop strings,
  and an optional per-prompt early exit once a sample's outcome is decided.
* ``score`` — per-token (temperature-scaled) log-probabilities of given continuations.

Determinism: each prompt's samples come from its own random stream, seeded by ``seed`` and
the prompt's position in the call, and a row leaves the batch once it is finished (EOS, stop
string, or decided); so the same prompts and seed give the same samples at any batch size,
with or without early exit (see :mod:`sftscope.models.decoding`).

On CUDA the model is bf16 with SDPA attention (:func:`sftscope.models.loading.load_model`) and
``batch_size="auto"`` sizes batches from the free GPU memory (:mod:`sftscope.models.batching`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel

from sftscope.errors import SftscopeError
from sftscope.models.batching import auto_batch_size
from sftscope.models.decoding import (
    DoneIf,
    Finish,
    cache_kwarg,
    decode,
    plain_cache,
    row_uniforms,
)
from sftscope.models.shared_prefix import VERSION as SHARED_PREFIX_VERSION
from sftscope.models.shared_prefix import SharedPrefixCache, supports_shared_prefix


class Engine(Protocol):
    """What the stages need from a model: two calls, nothing about batching or devices.

    Implemented by :class:`HFEngine` (below) and :class:`~sftscope.models.vllm_engine.VLLMEngine`
    (its module docstring gives the mapping onto vLLM's requests). Optional attributes, read
    with ``getattr``: ``info`` (engine, version, device type: recorded in stage outputs) and
    ``tokens_forwarded`` (the probe's throughput log).
    """

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
        """``n`` completions per prompt (greedy when temperature is 0), cut at stop strings.

        ``done_if[i](text)`` may end prompt ``i``'s sequences early once their outcome is decided;
        it is an optimisation a backend may ignore, so it must never change what is counted.
        ``desc`` labels the progress bar."""
        ...

    def score(
        self,
        prompts: Sequence[str],
        continuations: Sequence[str],
        desc: str = "score",
        temperature: float = 1.0,
    ) -> list[list[float]]:
        """Log-probability of each continuation token given the prompt and earlier tokens,
        under the temperature-scaled distribution ``softmax(logits / temperature)``."""
        ...


MIN_SHARED_PREFIX = 16  # tokens prompts must share for their prefix to be prefilled once


def _common_prefix_len(*rows: Sequence[int]) -> int:
    """Length of the longest token prefix all ``rows`` share."""
    n = 0
    for column in zip(*rows, strict=False):  # stops at the shortest row
        if any(t != column[0] for t in column[1:]):
            break
        n += 1
    return n


def _shared_prefixes(rows: Sequence[Sequence[int]]) -> tuple[list[Sequence[int]], list[int]]:
    """Split token-sorted ``rows`` into prefix groups: (distinct prefixes, group of each row).

    Consecutive rows sharing at least ``MIN_SHARED_PREFIX`` tokens with the run's first row
    form a group whose prefix is what they all share (always leaving each row one token, which
    ``generate`` feeds); any other row is its own group with everything but its last token.
    """
    runs: list[list[int]] = []
    for i, row in enumerate(rows):
        if runs and _common_prefix_len(rows[runs[-1][0]], row) >= MIN_SHARED_PREFIX:
            runs[-1].append(i)
        else:
            runs.append([i])
    prefixes: list[Sequence[int]] = []
    group_of_row = [0] * len(rows)
    for run in runs:
        members = [rows[i] for i in run]
        cut = min(_common_prefix_len(*members), min(len(r) for r in members) - 1)
        if len(run) > 1 and cut >= MIN_SHARED_PREFIX:
            parts = [(run, members[0][:cut])]
        else:
            parts = [([i], rows[i][:-1]) for i in run]
        for part, prefix in parts:
            for i in part:
                group_of_row[i] = len(prefixes)
            prefixes.append(prefix)
    return prefixes, group_of_row


def left_pad(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as a left-padded ``[batch, width]`` id tensor and its attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest stop string."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def encode_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Prompts' token ids with the tokenizer's special tokens, except for a text that already
    starts with its BOS (a chat template's rendering): a second BOS would change the answers."""
    encoded = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    bos = getattr(tokenizer, "bos_token", None)
    if bos:
        rendered = [i for i, t in enumerate(texts) if t.startswith(bos)]
        if rendered:
            plain = tokenizer([texts[i] for i in rendered], add_special_tokens=False)["input_ids"]
            for i, ids in zip(rendered, plain, strict=True):
                encoded[i] = ids
    return encoded


def stop_token_ids(tokenizer, stop: Sequence[str]) -> frozenset[int]:
    """The stop strings that are single tokens of the vocabulary (a chat template's end of turn,
    ``<|im_end|>``): matched as ids, since decoding skips special tokens."""
    vocab = tokenizer.get_vocab()
    return frozenset(vocab[s] for s in stop if s in vocab)


def encode_prompts(
    tokenizer, prompts: Sequence[str], temperature: float, n: int
) -> list[list[int]]:
    """The prompts' token ids (:func:`encode_texts`), after the checks every engine's
    ``generate`` makes."""
    if temperature <= 0 and n > 1:
        raise ValueError("greedy decoding with n > 1 would repeat one answer n times")
    encoded = encode_texts(tokenizer, prompts)
    if any(not e for e in encoded):
        raise ValueError("generate: a prompt encodes to no tokens")
    return encoded


def max_positions(config) -> int | None:
    """The positions a model has (``max_position_embeddings``, GPT-2's ``n_positions``), from
    its text config; None when the config does not say."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


def eos_ids(generation_eos: int | Sequence[int] | None, tokenizer) -> frozenset[int]:
    """Where a sequence ends: the generation config's end ids and the tokenizer's."""
    ids = {generation_eos} if isinstance(generation_eos, int) else set(generation_eos or ())
    return frozenset(ids | ({tokenizer.eos_token_id} - {None}))


class HFEngine:
    """:class:`Engine` over a transformers causal LM (CPU or CUDA).

    ``batch_size`` is prompts per batch (a prompt's ``n`` samples ride along), or ``"auto"``:
    sized per call from the free GPU memory and the call's longest sequence on CUDA, a fixed
    32 on CPU (:func:`sftscope.models.batching.auto_batch_size`)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer,
        batch_size: int | Literal["auto"] = 32,
        progress: bool = True,
        shared_prefix: bool = True,
    ) -> None:
        if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size {batch_size!r}: expected a positive int or 'auto'")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.last_batch_size: int | None = None  # what the latest call used
        self.progress = progress
        self.tokens_forwarded = 0  # non-padding token positions run through the model
        self.plain_cache = plain_cache(model)  # else: no prefix sharing, no row dropping
        # each prompt's cache kept once for its samples, where the model allows it
        self.shared_prefix = shared_prefix and self.plain_cache and supports_shared_prefix(model)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def info(self) -> dict[str, str]:
        import transformers

        decode = SHARED_PREFIX_VERSION if self.shared_prefix else "dynamic-cache"
        return {
            "engine": "hf",
            "version": transformers.__version__,
            "device": self.device.type,
            "decode": decode,
        }

    def _encode(self, texts: Sequence[str], special: bool) -> list[list[int]]:
        if special:
            return encode_texts(self.tokenizer, texts)
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def _check_fits(self, rows: Sequence[Sequence[int]], new: int, what: str) -> None:
        """One error line when the longest ``what`` plus ``new`` tokens outgrows the model's
        positions (a learned position table would fail with an IndexError deep in the model,
        rotary ones would silently run past what the model was trained on)."""
        limit = max_positions(self.model.config)
        longest = max(range(len(rows)), key=lambda i: len(rows[i]))
        if limit is not None and len(rows[longest]) + new > limit:
            text = self.tokenizer.decode(rows[longest][:16], skip_special_tokens=True)[:40]
            raise SftscopeError(
                f"{what} {longest} ({text!r}...) is {len(rows[longest])} tokens (+{new} new), "
                f"more than the model's {limit} positions; use fewer few-shot exemplars or "
                "shorter prompts"
            )

    def _left_pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return left_pad(rows, self.tokenizer.pad_token_id, self.device)

    def _batch_size(self, tokens: int, rows: int = 1, logit_positions: int = 1) -> int:
        """Prompts per batch for a call whose longest sequence is ``tokens`` long."""
        size = self.batch_size
        if size == "auto":
            size = auto_batch_size(self.model, tokens, rows, logit_positions)
        self.last_batch_size = size
        return size

    def _prefix_batches(self, encoded: Sequence[Sequence[int]], size: int) -> list[list[int]]:
        """Batches of prompts in token order, so prompts sharing a prefix (the same few-shot
        exemplars) sit together and their prefix is prefilled once (see :meth:`_prefill`)."""
        order = sorted(range(len(encoded)), key=lambda i: (list(encoded[i]), i))
        return [order[i : i + size] for i in range(0, len(order), size)]

    def _prefill(self, rows: Sequence[Sequence[int]], n: int, new_tokens: int = 1):
        """Run every prompt but its last token through the model; return the batch layout and
        the KV cache that ``generate`` continues from.

        Rows (in token order) form groups that share at least ``MIN_SHARED_PREFIX`` tokens;
        each group's shared prefix is computed once (one padded forward over the distinct
        prefixes) and its cache gathered to the group's rows; a row without partners is its
        own group. Each row's remainder follows, laid out as ``[pad][prefix][pad][rest]``, with
        position ids from the attention mask, so every token keeps its unpadded position.
        The ``n`` samples of a prompt share its prefill: decoded against one copy of it, with
        room for ``new_tokens`` positions of their own (:mod:`sftscope.models.shared_prefix`),
        or, where the model's attention does not allow that, in a cache repeated ``n`` times.
        """
        if not self.plain_cache:
            return self._prefill_whole(rows, n)
        prefixes, group_of_row = _shared_prefixes(rows)
        rests = [r[len(prefixes[g]) :] for r, g in zip(rows, group_of_row, strict=True)]
        pre_ids, pre_mask = self._left_pad(prefixes)
        cache = DynamicCache(config=self.model.config)
        self.tokens_forwarded += int(pre_mask.sum())
        if pre_ids.shape[1]:
            self.model(
                input_ids=pre_ids,
                attention_mask=pre_mask,
                position_ids=(pre_mask.cumsum(-1) - 1).clamp(min=0),
                **cache_kwarg(self.model, cache),
                use_cache=True,
                logits_to_keep=1,
            )
            cache.batch_select_indices(torch.tensor(group_of_row, device=self.device))
        rest_ids, rest_mask = self._left_pad(rests)
        index = torch.tensor(group_of_row, device=self.device)
        ids = torch.cat([pre_ids[index], rest_ids], dim=1)
        mask = torch.cat([pre_mask[index], rest_mask], dim=1)
        done, width = pre_ids.shape[1], ids.shape[1]
        self.tokens_forwarded += int(mask[:, done : width - 1].sum())
        if width - 1 > done:
            position_ids = (mask[:, : width - 1].cumsum(-1) - 1).clamp(min=0)
            self.model(
                input_ids=ids[:, done : width - 1],
                attention_mask=mask[:, : width - 1],
                position_ids=position_ids[:, done:],
                **cache_kwarg(self.model, cache),
                use_cache=True,
                logits_to_keep=1,
            )
        if self.shared_prefix and width > 1:  # the prompts' cache kept once for their samples
            cache = SharedPrefixCache(cache, mask[:, : width - 1], n, capacity=new_tokens)
        elif n > 1:
            cache.batch_repeat_interleave(n)
        if n > 1:
            ids, mask = ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
        return ids, mask, cache

    def _prefill_whole(self, rows: Sequence[Sequence[int]], n: int):
        """:meth:`_prefill` for a model with recurrent cache layers: every row's prompt (each
        repeated ``n`` times) in one left-padded forward, nothing shared or gathered."""
        rows = [r for r in rows for _ in range(n)]
        ids, mask = self._left_pad(rows)
        cache = DynamicCache(config=self.model.config)
        self.tokens_forwarded += int(mask[:, :-1].sum())
        if ids.shape[1] > 1:
            self.model(
                input_ids=ids[:, :-1],
                attention_mask=mask[:, :-1],
                position_ids=(mask[:, :-1].cumsum(-1) - 1).clamp(min=0),
                **cache_kwarg(self.model, cache),
                use_cache=True,
                logits_to_keep=1,
            )
        return ids, mask, cache

    @torch.inference_mode()
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
        if not prompts:
            return []
        encoded = encode_prompts(self.tokenizer, prompts, temperature, n)
        self._check_fits(encoded, max_new_tokens, "prompt")
        ends = eos_ids(self.model.generation_config.eos_token_id, self.tokenizer)
        ends |= stop_token_ids(self.tokenizer, stop)
        out: list[list[str]] = [[] for _ in prompts]
        bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not self.progress)
        size = self._batch_size(max(map(len, encoded)) + max_new_tokens, n)
        for idx in self._prefix_batches(encoded, size):
            ids, mask, cache = self._prefill([encoded[i] for i in idx], n, max_new_tokens)
            rows = [idx[j // n] for j in range(len(idx) * n)]
            uniforms = None
            if temperature > 0:  # one stream per prompt: see sftscope.models.decoding
                uniforms = row_uniforms([seed * 1_000_003 + i for i in idx], n, max_new_tokens)
            finish = Finish(
                ends, tuple(stop), None if done_if is None else [done_if[i] for i in rows]
            )
            tokens, forwarded = decode(
                self.model,
                self.tokenizer,
                ids[:, -1],
                mask,
                cache,
                max_new_tokens,
                temperature,
                uniforms,
                finish,
                prune=self.plain_cache,
            )
            self.tokens_forwarded += forwarded
            texts = self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
            for i, text in zip(rows, texts, strict=True):
                out[i].append(cut_at_stop(text, stop))
            bar.update(len(idx))
        bar.close()
        return out

    def _score_batch(
        self,
        prompts: Sequence[Sequence[int]],
        conts: Sequence[Sequence[int]],
        temperature: float,
    ) -> list[list[float]]:
        """Score one batch, running each distinct prompt once.

        Rows sharing a prompt (one fact-template, several aliases) are adjacent; the distinct
        prompts go through one left-padded forward whose last logits predict every row's first
        continuation token, their cache is gathered to the rows, and the continuations (right-
        padded) follow in a second forward whose logits predict the remaining tokens.
        """
        if not self.plain_cache:
            return self._score_whole(prompts, conts, temperature)
        distinct: list[Sequence[int]] = []
        group_of_row: list[int] = []
        for p in prompts:
            if not distinct or list(distinct[-1]) != list(p):
                distinct.append(p)
            group_of_row.append(len(distinct) - 1)
        pre_ids, pre_mask = self._left_pad(distinct)
        cache = DynamicCache(config=self.model.config)
        first = (
            self.model(
                input_ids=pre_ids,
                attention_mask=pre_mask,
                position_ids=(pre_mask.cumsum(-1) - 1).clamp(min=0),
                **cache_kwarg(self.model, cache),
                use_cache=True,
                logits_to_keep=1,
            )
            .logits[:, -1]
            .float()
        )
        self.tokens_forwarded += int(pre_mask.sum())
        index = torch.tensor(group_of_row, device=self.device)
        first_lp = torch.log_softmax(first / temperature, dim=-1)[index]
        width = max(len(c) for c in conts) - 1
        rest_lp = None
        if width > 0:
            cache.batch_select_indices(index)
            pad = self.tokenizer.pad_token_id
            rest = torch.full((len(conts), width), pad, dtype=torch.long)
            rest_mask = torch.zeros((len(conts), width), dtype=torch.long)
            for j, c in enumerate(conts):
                rest[j, : len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)
                rest_mask[j, : len(c) - 1] = 1
            rest, rest_mask = rest.to(self.device), rest_mask.to(self.device)
            mask = torch.cat([pre_mask[index], rest_mask], dim=1)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, pre_ids.shape[1] :]
            logits = self.model(
                input_ids=rest,
                attention_mask=mask,
                position_ids=position_ids,
                **cache_kwarg(self.model, cache),
                use_cache=True,
            ).logits.float()
            self.tokens_forwarded += int(rest_mask.sum())
            rest_lp = torch.log_softmax(logits / temperature, dim=-1)
        scores = []
        for j, c in enumerate(conts):
            values = [first_lp[j, c[0]].item()]
            if len(c) > 1:
                targets = torch.tensor(c[1:], device=self.device)
                values += rest_lp[j, : len(c) - 1].gather(-1, targets[:, None])[:, 0].tolist()
            scores.append(values)
        return scores

    def _score_whole(
        self,
        prompts: Sequence[Sequence[int]],
        conts: Sequence[Sequence[int]],
        temperature: float,
    ) -> list[list[float]]:
        """:meth:`_score_batch` for a model with recurrent cache layers: each row's prompt and
        continuation in one left-padded forward, without a cache."""
        ids, mask = self._left_pad([list(p) + list(c) for p, c in zip(prompts, conts, strict=True)])
        logits = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=False,
        ).logits.float()
        self.tokens_forwarded += int(mask.sum())
        width = ids.shape[1]
        scores = []
        for j, c in enumerate(conts):  # row j's continuation ends at the right edge
            at = torch.arange(width - len(c) - 1, width - 1, device=self.device)
            lp = torch.log_softmax(logits[j, at] / temperature, dim=-1)
            targets = torch.tensor(c, device=self.device)
            scores.append(lp.gather(-1, targets[:, None])[:, 0].tolist())
        return scores

    @torch.inference_mode()
    def score(
        self,
        prompts: Sequence[str],
        continuations: Sequence[str],
        desc: str = "score",
        temperature: float = 1.0,
    ) -> list[list[float]]:
        """Continuations are tokenised on their own (no special tokens) and appended to the
        prompt's tokens, the same split the SFT stage uses, so scores match what is trained."""
        if len(prompts) != len(continuations):
            raise ValueError("score: prompts and continuations differ in length")
        if not prompts:
            return []
        p_ids = self._encode(prompts, special=True)
        c_ids = self._encode(continuations, special=False)
        self._check_fits([p + c for p, c in zip(p_ids, c_ids, strict=True)], 0, "scored prompt")
        out: list[list[float]] = [[] for _ in prompts]
        bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not self.progress)
        order = sorted(range(len(prompts)), key=lambda i: (p_ids[i], c_ids[i], i))
        longest = max(len(p) + len(c) for p, c in zip(p_ids, c_ids, strict=True))
        size = self._batch_size(longest, 1, max(map(len, c_ids)))
        for b in range(0, len(order), size):
            idx = [i for i in order[b : b + size] if c_ids[i]]
            if idx:
                scores = self._score_batch(
                    [p_ids[i] for i in idx], [c_ids[i] for i in idx], temperature
                )
                for i, values in zip(idx, scores, strict=True):
                    out[i] = values
            bar.update(len(order[b : b + size]))
        bar.close()
        return out
