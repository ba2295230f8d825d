"""Token level (docs/method.md §6): how far fine-tuning moves the output distribution.

*Paper KL.* Test facts the base model masters (level 4) and, per relation, the one mapping
template with the highest success rate in the probe; only facts whose base completion under that
template starts with the answer (within ``answer_within`` tokens) are kept. At the first
predicted token, the fine-tuned model's top-k logits and the base model's logits at the same ids
are each softmaxed, and KL(fine-tuned || base) is taken over those k tokens.

*Full-vocabulary KL* (beyond the paper). Every test fact, the gold answer teacher-forced under
both models with the same prompt, KL(fine-tuned || base) over the whole vocabulary at every answer
token, in fp32, a chunk of positions at a time; plus the change of the gold answer's
log-likelihood (confidence gained or lost), aggregated per mastery level and per relation.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from sftscope.config import KLConfig
from sftscope.data.schema import QAItem
from sftscope.layout import MASTERY
from sftscope.mastery import N_LEVELS
from sftscope.models.batching import auto_batch_size
from sftscope.models.engines import left_pad
from sftscope.models.factory import engine_info, hf_engine
from sftscope.models.process import say_once
from sftscope.outputs import FullKL, KLSummary, PaperKL


def topk_kl(tuned_logits: torch.Tensor, base_logits: torch.Tensor, k: int = 10) -> float:
    """The paper's measure at one position: softmax over the fine-tuned model's top-k ids, in
    both models, then KL(fine-tuned || base) over those k tokens."""
    ids = tuned_logits.float().topk(k).indices
    p = torch.log_softmax(tuned_logits.float()[ids], dim=-1)
    q = torch.log_softmax(base_logits.float()[ids], dim=-1)
    return float((p.exp() * (p - q)).sum())


def full_kl_rows(
    tuned_logits: torch.Tensor, base_logits: torch.Tensor, chunk: int | None = 256
) -> torch.Tensor:
    """KL(fine-tuned || base) over the whole vocabulary for each row of ``[n, vocab]`` logits,
    in fp32, ``chunk`` rows at a time (so the fp32 copies never exceed ``chunk x vocab``)."""
    n = tuned_logits.shape[0]
    step = chunk or n
    out = torch.empty(n, dtype=torch.float32)
    for a in range(0, n, max(step, 1)):
        p = torch.log_softmax(tuned_logits[a : a + step].float(), dim=-1)
        q = torch.log_softmax(base_logits[a : a + step].float(), dim=-1)
        out[a : a + step] = (p.exp() * (p - q)).sum(-1).cpu()
    return out


def answer_start(completion: str, aliases: Iterable[str]) -> int | None:
    """Character offset of the first accepted alias in ``completion`` (word-bounded,
    case-insensitive), or None."""
    best = None
    for alias in aliases:
        if not alias.strip():
            continue
        m = re.search(rf"(?<!\w){re.escape(alias.strip())}(?!\w)", completion, re.IGNORECASE)
        if m and (best is None or m.start() < best):
            best = m.start()
    return best


def answer_first(completion: str, aliases: Iterable[str], tokenizer, within: int) -> bool:
    """Whether the answer begins within the first ``within`` generated tokens: the text before
    it holds fewer than ``within`` tokens (a leading space alone counts as none)."""
    pos = answer_start(completion, aliases)
    if pos is None:
        return False
    before = completion[:pos]
    if not before.strip():
        return within > 0
    return len(tokenizer(before, add_special_tokens=False)["input_ids"]) < within


def best_templates(
    records: Iterable[dict[str, Any]], relations: Iterable[str]
) -> dict[str, int | None]:
    """Per relation, the index of the mapping template with the highest mean success in the
    probe (records with ``per_template``); None where the probe holds no such information."""
    sums: dict[str, list[float]] = {}
    counts: dict[str, int] = defaultdict(int)
    for r in records:
        pt = r.get("per_template")
        if not pt:
            continue
        acc = sums.setdefault(r["relation"], [0.0] * len(pt))
        for i, v in enumerate(pt[: len(acc)]):
            acc[i] += v
        counts[r["relation"]] += 1
    out: dict[str, int | None] = {}
    for rel in relations:
        acc = sums.get(rel)
        out[rel] = max(range(len(acc)), key=lambda i: (acc[i], -i)) if acc else None
    return out


def _stats(values: Sequence[float]) -> dict[str, Any]:
    n = len(values)
    if not n:
        return {"n": 0, "mean": None, "std": None}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"n": n, "mean": mean, "std": std}


def paper_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    by_rel: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by_rel[r["relation"]].append(r["kl"])
    return {
        **_stats([r["kl"] for r in rows]),
        "per_relation": {rel: _stats(v) for rel, v in by_rel.items()},
    }


def full_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean per-token KL and gold log-likelihood change per level, per relation, overall."""

    def block(group: Sequence[dict[str, Any]]) -> dict[str, Any]:
        kl = _stats([r["kl_mean"] for r in group])
        dl = [r["dlogp"] for r in group]
        return {
            "n": kl["n"],
            "kl_mean": kl["mean"],
            "kl_std": kl["std"],
            "dlogp_mean": sum(dl) / len(dl) if dl else None,
            "gained": sum(d > 0 for d in dl) / len(dl) if dl else None,
        }

    by_rel: dict[str, list] = defaultdict(list)
    for r in rows:
        by_rel[r["relation"]].append(r)
    return {
        "overall": block(rows),
        "per_level": [block([r for r in rows if r["level"] == k]) for k in range(N_LEVELS)],
        "per_relation": {rel: block(v) for rel, v in by_rel.items()},
    }


def paper_items(items: Sequence[QAItem], levels: dict[str, int | None], level: int) -> list[QAItem]:
    return [it for it in items if levels.get(it.id) == level and it.subject is not None]


# -- running both models ----------------------------------------------------------------------
@torch.inference_mode()
def tail_logits(model, rows: Sequence[Sequence[int]], keep: int, pad_id: int) -> torch.Tensor:
    """Logits at the last ``keep`` positions of left-padded ``rows`` (position ids from the
    mask, so padding does not shift positions): ``[batch, keep, vocab]``, never the full length."""
    ids, mask = left_pad(rows, pad_id, model.device)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        logits_to_keep=keep,
    )
    return out.logits


def kl_batch_size(batch_size: int | str, model, rows: Sequence[Sequence[int]], keep: int) -> int:
    """Facts per forward pass: ``batch_size``, or for ``auto`` what fits the free GPU memory
    (:func:`sftscope.models.batching.auto_batch_size`; its CPU size off CUDA) when each row is
    as long as the longest of ``rows`` and both models' logits at ``keep`` positions are held."""
    if batch_size != "auto":
        return int(batch_size)
    return auto_batch_size(model, max(map(len, rows)), logit_positions=2 * keep)


def paper_kl_rows(
    tuned,
    base,
    tokenizer,
    tuned_prompts: Sequence[str],
    base_prompts: Sequence[str],
    k: int,
    batch_size: int | str,
) -> list[float]:
    """KL at the first predicted token, one value per (tuned prompt, base prompt) pair."""
    if not tuned_prompts:
        return []
    enc_t = tokenizer(list(tuned_prompts))["input_ids"]
    enc_b = tokenizer(list(base_prompts))["input_ids"]
    pad = tokenizer.pad_token_id
    batch_size = kl_batch_size(batch_size, tuned, [*enc_t, *enc_b], 1)
    out: list[float] = []
    for a in range(0, len(enc_t), batch_size):
        lt = tail_logits(tuned, enc_t[a : a + batch_size], 1, pad)[:, -1]
        lb = tail_logits(base, enc_b[a : a + batch_size], 1, pad)[:, -1]
        out += [topk_kl(x, y, k) for x, y in zip(lt, lb, strict=True)]
    return out


def full_kl_items(
    tuned,
    base,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str],
    batch_size: int | str,
    chunk: int | None,
) -> list[dict[str, float]]:
    """Per item: mean KL over the answer tokens and the gold log-likelihood in both models."""
    if not prompts:
        return []
    p_ids = tokenizer(list(prompts))["input_ids"]
    c_ids = tokenizer([f" {a.strip()}" for a in answers], add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id
    rows = [p + c for p, c in zip(p_ids, c_ids, strict=True)]
    batch_size = kl_batch_size(batch_size, tuned, rows, max(map(len, c_ids)) + 1)
    out: list[dict[str, float]] = []
    for a in tqdm(range(0, len(p_ids), batch_size), desc="full-vocabulary KL", unit="batch"):
        conts, batch = c_ids[a : a + batch_size], rows[a : a + batch_size]
        keep = max(len(c) for c in conts) + 1
        lt = tail_logits(tuned, batch, keep, pad)
        lb = tail_logits(base, batch, keep, pad)
        for r, c in enumerate(conts):
            sl = slice(keep - 1 - len(c), keep - 1)  # the positions that predict the answer
            kl = full_kl_rows(lt[r, sl], lb[r, sl], chunk)
            target = torch.tensor(c, device=lt.device)[:, None]
            lp_t = torch.log_softmax(lt[r, sl].float(), -1).gather(-1, target).sum().item()
            lp_b = torch.log_softmax(lb[r, sl].float(), -1).gather(-1, target).sum().item()
            out.append(
                {
                    "kl_mean": float(kl.mean()),
                    "kl_max": float(kl.max()),
                    "logp_tuned": lp_t,
                    "logp_base": lp_b,
                    "dlogp": lp_t - lp_b,
                }
            )
    return out


# -- the stage ----------------------------------------------------------------------------------
_ESTIMATED: dict[tuple, int] = {}  # best template per (base, probe, relation, facts)


def run_kl(cfg: KLConfig, base_engine: Any = None) -> KLSummary:
    """The ``sftscope kl`` stage: writes ``cfg.out`` (summary JSON) and, beside it,
    ``<name>.records.jsonl`` (one line per fact and measure)."""
    from pathlib import Path

    from sftscope.data.dataset import load_items
    from sftscope.data.readers import resolve_dataset
    from sftscope.data.templates import fill, load_templates
    from sftscope.errors import SftscopeError
    from sftscope.io import atomic_write_jsonl, read_jsonl
    from sftscope.models.loading import load_model
    from sftscope.probe_methods.likelihood import likelihood_scores
    from sftscope.prompts import sft_prompt

    dataset = resolve_dataset(cfg.data, cfg.data_dir, cfg.columns)
    items = load_items(dataset, [cfg.split], cfg.relations, cfg.limit_per_relation)
    probe_file = Path(cfg.probe) / MASTERY if Path(cfg.probe).is_dir() else Path(cfg.probe)
    if not probe_file.is_file():
        raise SftscopeError(f"{probe_file}: probe not found (run sftscope probe on {cfg.split})")
    probe_rows = [r for r in read_jsonl(probe_file) if r.get("level") is not None]
    levels = {r["id"]: r["level"] for r in probe_rows}
    if not any(it.id in levels for it in items):
        raise SftscopeError(f"{probe_file}: probes none of the {cfg.split} items of {dataset.name}")
    relations = sorted({it.relation for it in items})
    table = load_templates(dataset.name, cfg.templates_file) if cfg.paper else {}
    missing = [r for r in relations if r not in table]
    if cfg.paper and missing:
        raise SftscopeError(
            f"no mapping templates for relation {missing[0]} of {dataset.name} "
            "(paper=false: only the full-vocabulary KL, which needs none)"
        )
    if not (cfg.paper or cfg.full):
        raise SftscopeError("paper=false and full=false: no KL to measure")

    tuned, tok = load_model(
        cfg.tuned, cfg.device, trust_remote_code=cfg.trust_remote_code, base=cfg.base
    )
    base, base_tok = load_model(cfg.base, cfg.device, trust_remote_code=cfg.trust_remote_code)
    if len(tok) != len(base_tok) or tok.get_vocab() != base_tok.get_vocab():
        raise SftscopeError(f"{cfg.tuned} and {cfg.base} do not share a vocabulary")
    if cfg.engine != "hf":
        say_once(
            f"kl: the token-level KL needs whole output distributions, which {cfg.engine} "
            "does not return; this stage runs on the HF engine"
        )
    engine = base_engine or hf_engine(base, base_tok, cfg.batch_size, progress=False)

    # Paper KL: level-k facts, best template per relation, answer-first filter.
    chosen = paper_items(items, levels, cfg.level) if cfg.paper else []
    best = best_templates(probe_rows, relations)
    by_rel: dict[str, list[QAItem]] = defaultdict(list)
    for it in chosen:
        by_rel[it.relation].append(it)
    for rel, group in by_rel.items():
        if best.get(rel) is None:  # probe without per-template success: estimate it here
            key = (cfg.base, str(probe_file), rel, tuple(it.id for it in group))
            if key not in _ESTIMATED:  # a grid asks once per relation, not once per cell
                scores = likelihood_scores(engine, group, {rel: table[rel].mapping}, 0.7)
                means = [sum(col) / len(col) for col in zip(*scores, strict=True)]
                _ESTIMATED[key] = max(range(len(means)), key=lambda i: (means[i], -i))
            best[rel] = _ESTIMATED[key]
    template = {rel: table[rel].mapping[best[rel]] for rel in by_rel}

    def prompt(it: QAItem, style: str) -> str:
        if style == "sft":
            return sft_prompt(it.question)
        return fill(template[it.relation], it.subject or "")

    completions = engine.generate(
        [prompt(it, "template") for it in chosen], max_new_tokens=cfg.answer_within + 16
    )
    kept = [
        it
        for it, (c,) in zip(chosen, completions, strict=True)
        if answer_first(c, it.accepted, base_tok, cfg.answer_within)
    ]
    kls = paper_kl_rows(
        tuned,
        base,
        tok,
        [prompt(it, cfg.tuned_prompt) for it in kept],
        [prompt(it, cfg.base_prompt) for it in kept],
        cfg.top_k,
        cfg.batch_size,
    )
    paper_rows = [
        {"measure": "paper", "id": it.id, "relation": it.relation, "kl": v}
        for it, v in zip(kept, kls, strict=True)
    ]
    summary = KLSummary(
        base=cfg.base, tuned=str(cfg.tuned), split=cfg.split, engine=engine_info(engine)
    )
    if cfg.paper:
        summary.paper = PaperKL(
            **{
                **paper_summary(paper_rows),
                "level": cfg.level,
                "candidates": len(chosen),
                "answer_first": len(kept),
                "top_k": cfg.top_k,
                "prompts": {"tuned": cfg.tuned_prompt, "base": cfg.base_prompt},
                "templates": template,
            }
        )
    full_rows: list[dict[str, Any]] = []
    if cfg.full:
        probed = [it for it in items if it.id in levels]
        values = full_kl_items(
            tuned,
            base,
            tok,
            [sft_prompt(it.question) for it in probed],
            [it.target for it in probed],
            cfg.batch_size,
            cfg.chunk_size,
        )
        full_rows = [
            {"measure": "full", "id": it.id, "relation": it.relation, "level": levels[it.id], **v}
            for it, v in zip(probed, values, strict=True)
        ]
        summary.full = FullKL(**full_summary(full_rows), prompt="sft (both models)")
    out = Path(cfg.out)
    atomic_write_jsonl(out.with_name(out.stem + ".records.jsonl"), paper_rows + full_rows)
    summary.write(out)
    return summary
