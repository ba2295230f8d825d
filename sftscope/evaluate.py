"""Closed-book QA evaluation (docs/method.md §4): per-item records and accuracy summaries.

Greedy decoding, 16 new tokens, stop at the first newline; an answer is correct under
*containment* (the paper: a gold alias appears in the output on word boundaries) and under
*exact match* (lm-eval convention). Records are per item, in the manner of
lm-evaluation-harness, so any later aggregate (per mastery level, per cell) is recomputable.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftscope.config import EvalConfig, dump_config
from sftscope.config.base import CHAT_INSTRUCTION
from sftscope.data.dataset import Dataset, load_items
from sftscope.data.matching import match
from sftscope.data.readers import resolve_dataset
from sftscope.data.schema import Domain, QAItem
from sftscope.errors import SftscopeError
from sftscope.io import atomic_write_jsonl, atomic_write_text
from sftscope.layout import RECORDS, SUMMARY
from sftscope.mastery import N_LEVELS, read_levels
from sftscope.models.factory import engine_info
from sftscope.outputs import EvalSummary
from sftscope.prompts import ChatFormat, PromptStyle, build_prompt, pick_exemplars

if TYPE_CHECKING:  # the engine (torch, transformers) loads only when a model runs
    from sftscope.models.engines import Engine

STOP = ("\n",)


def exemplar_pool(dataset: Dataset, split: str, relations: Sequence[str]) -> list[QAItem]:
    """Few-shot exemplars come from train; when train itself is evaluated, from dev, so no
    prompt ever contains its own answer."""
    source = "dev" if split == "train" else "train"
    return load_items(dataset, [source], relations)


def evaluate_items(
    engine: Engine,
    items: Sequence[QAItem],
    style: PromptStyle = "fewshot",
    exemplars: dict[str, list[QAItem]] | None = None,
    max_new_tokens: int = 16,
    fold_accents: bool = False,
    chat_instruction: str = CHAT_INSTRUCTION,
) -> list[dict[str, Any]]:
    """Generate greedily for every item and score it; one record per item, in input order.
    A chat prompt's answer is cut at the template's end of turn (and the first newline)."""
    chat = ChatFormat(engine.tokenizer, chat_instruction) if style == "chat" else None
    stop = STOP if chat is None else (*STOP, *filter(None, [chat.end_of_turn()]))
    prompts = [build_prompt(it, style, exemplars or {}, chat) for it in items]
    outputs = engine.generate(prompts, max_new_tokens=max_new_tokens, stop=stop, desc="eval")
    records = []
    for it, prompt, (raw,) in zip(items, prompts, outputs, strict=True):
        prediction = raw.strip()
        m = match(prediction, it.accepted, fold_accents=fold_accents)
        records.append(
            {
                "id": it.id,
                "relation": it.relation,
                "domain": it.domain.value,
                "question": it.question,
                "answers": list(it.accepted),
                "prompt": prompt,
                "prediction": prediction,
                "containment": m.containment,
                "exact": m.exact,
            }
        )
    return records


def _acc(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    return {
        "n": n,
        "containment": sum(r["containment"] for r in rows) / n if n else None,
        "exact": sum(r["exact"] for r in rows) / n if n else None,
    }


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy (both criteria) per relation, in-domain, out-of-domain and overall.

    Group accuracies are micro-averages over items; ``macro_relations`` is the unweighted mean
    over relations, which does not let one large relation dominate.
    """
    records = list(records)
    by_rel: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_rel[r["relation"]].append(r)
    per_relation = {
        rel: {"domain": rows[0]["domain"], **_acc(rows)} for rel, rows in by_rel.items()
    }
    rel_accs = [v for v in per_relation.values() if v["n"]]
    macro = {
        key: sum(v[key] for v in rel_accs) / len(rel_accs) if rel_accs else None
        for key in ("containment", "exact")
    }
    return {
        "overall": _acc(records),
        "in_domain": _acc([r for r in records if r["domain"] == Domain.IN_DOMAIN.value]),
        "ood": _acc([r for r in records if r["domain"] == Domain.OOD.value]),
        "macro_relations": macro,
        "per_relation": per_relation,
    }


def level_breakdown(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy per mastery level of the test items, and the paper's headline: the unweighted
    mean over levels (docs/method.md §4), in-domain, out-of-domain and overall. Levels without items
    are listed in ``missing_levels`` and left out of the mean."""
    out: dict[str, Any] = {}
    for key, domain in (("in_domain", Domain.IN_DOMAIN), ("ood", Domain.OOD), ("overall", None)):
        rows = [
            r
            for r in records
            if r.get("level") is not None and (domain is None or r["domain"] == domain.value)
        ]
        per_level = [_acc([r for r in rows if r["level"] == k]) for k in range(N_LEVELS)]
        filled = [v for v in per_level if v["n"]]
        out[key] = {
            "per_level": per_level,
            "mean_of_levels": {
                c: sum(v[c] for v in filled) / len(filled) if filled else None
                for c in ("containment", "exact")
            },
            "missing_levels": [k for k, v in enumerate(per_level) if not v["n"]],
        }
    return out


def prepare_eval(cfg: EvalConfig) -> tuple[list[QAItem], dict[str, list[QAItem]]]:
    """Everything that can fail on bad input, done before a model is loaded or a file written."""
    dataset = resolve_dataset(cfg.data, cfg.data_dir, cfg.columns)
    items = load_items(dataset, [cfg.split], cfg.relations, cfg.limit_per_relation)
    if not items:
        raise SftscopeError(f"no items to evaluate in {dataset.root} (split {cfg.split})")
    exemplars: dict[str, list[QAItem]] = {}
    if cfg.prompt == "fewshot" and cfg.n_shots:
        relations = sorted({it.relation for it in items})
        pool = exemplar_pool(dataset, cfg.split, relations)
        exemplars = pick_exemplars(pool, cfg.n_shots, cfg.seed)
    return items, exemplars


def run_eval(cfg: EvalConfig, engine: Engine | None = None) -> EvalSummary:
    """The ``sftscope eval`` stage: writes records.jsonl, summary.json and config.yaml; with
    ``mastery`` set, records carry each item's level and the summary a per-level breakdown."""
    items, exemplars = prepare_eval(cfg)
    levels = read_levels(cfg.mastery) if cfg.mastery is not None else None
    if engine is None:
        from sftscope.models.factory import engine_for

        engine = engine_for(cfg)
    if cfg.prompt == "chat":  # a tokenizer without a template: one line naming the model
        ChatFormat(engine.tokenizer, cfg.chat_instruction, model=f"model {cfg.model!r}")
    records = evaluate_items(
        engine,
        items,
        cfg.prompt,
        exemplars,
        cfg.max_new_tokens,
        cfg.fold_accents,
        cfg.chat_instruction,
    )
    fields: dict[str, Any] = {}
    if levels is not None:
        for r in records:
            r["level"] = levels.get(r["id"])
        fields = {
            "by_level": level_breakdown(records),
            "unprobed": sum(r["level"] is None for r in records),
        }
    summary = EvalSummary(
        model=cfg.model,
        data=cfg.data,
        split=cfg.split,
        prompt=cfg.prompt,
        engine=engine_info(engine),
        **summarize(records),
        **fields,
    )
    out = Path(cfg.out)
    atomic_write_jsonl(out / RECORDS, records)
    atomic_write_text(out / "config.yaml", dump_config(cfg))
    summary.write(out / SUMMARY)  # last: its presence marks completion
    return summary
