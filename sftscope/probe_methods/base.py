"""What every probe method shares: the method protocol, the inputs a probe plan gives it, the
record it writes, the sampling loop of the two sampling methods, and the few-shot exemplar
rules of the question-prompted ones (a fact is never its own exemplar)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any, Protocol

from sftscope.config import ProbeConfig
from sftscope.data.matching import contains_answer, normalize
from sftscope.data.schema import QAItem
from sftscope.mastery import decided, level_of
from sftscope.prompts import pick_exemplars

if TYPE_CHECKING:  # the engine (torch, transformers) loads only when a model runs
    from sftscope.models.engines import Engine

Record = dict[str, Any]


@dataclass(frozen=True)
class ProbeInputs:
    """What a method reads besides the facts: the levels' ``thresholds``, the mapping
    ``templates`` per relation (template methods) or the few-shot exemplar ``sets`` per
    relation (question methods)."""

    thresholds: tuple[float, ...]
    templates: dict[str, Sequence[str]] = field(default_factory=dict)
    sets: dict[str, list[list[QAItem]]] = field(default_factory=dict)


class ProbeMethod(Protocol):
    """One probe method. ``generations``: it samples, and its samples are kept
    (``generations.jsonl.gz``); ``sets_field``: for a question-prompted method (its registry
    entry says ``question``), the config field giving its number of exemplar sets;
    ``decodes``: it generates, so its results depend on the engine's decode (a resumed probe
    refuses to mix two decodes), where a scoring method's do not."""

    decodes: bool
    generations: bool
    sets_field: str

    def run(
        self,
        engine: Engine,
        items: Sequence[QAItem],
        inputs: ProbeInputs,
        cfg: ProbeConfig,
        seed: int,
    ) -> tuple[list[Record], list[Record]]:
        """(mastery records, generation records) of one chunk of facts."""
        ...


def record(item: QAItem, method: str, r: float | None, level: int | None, **extra: Any) -> Record:
    return {
        "id": item.id,
        "relation": item.relation,
        "split": item.split,
        "R": r,
        "level": level,
        "method": method,
        **extra,
    }


def sample(
    engine: Engine,
    items: Sequence[QAItem],
    prompts_of: Sequence[Sequence[str]],
    cfg: ProbeConfig,
    seed: int,
    stop: Sequence[str] = (),
    per: str = "per_template",
) -> tuple[list[Record], list[Record]]:
    """``samples`` samples of every prompt of every item; an item's R is its share of samples
    that contain a gold answer, and ``per`` (``per_template``, ``per_set``) its share per
    prompt (the token-level KL picks each relation's best mapping template from it)."""
    prompts = [p for ps in prompts_of for p in ps]
    owner = [i for i, ps in enumerate(prompts_of) for _ in ps]
    done_if = [partial(decided, answers=items[i].accepted) for i in owner]
    outs = engine.generate(
        prompts,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        n=cfg.samples,
        seed=seed,
        stop=stop,
        done_if=done_if if cfg.early_exit else None,
        desc="probe",
    )
    per_item: list[list[tuple[str, list[str]]]] = [[] for _ in items]
    for i, prompt, samples in zip(owner, prompts, outs, strict=True):
        per_item[i].append((prompt, samples))
    records, gens = [], []
    for it, rows in zip(items, per_item, strict=True):
        hits = [sum(contains_answer(x, it.accepted) for x in s) for _, s in rows]
        total = sum(len(s) for _, s in rows)
        correct = sum(hits)
        r = correct / total
        shares = [h / len(s) for h, (_, s) in zip(hits, rows, strict=True)]
        records.append(
            record(
                it,
                cfg.method,
                r,
                level_of(r, cfg.thresholds),
                n_correct=correct,
                n_total=total,
                **{per: shares},
            )
        )
        gens.append({"id": it.id, "prompts": [p for p, _ in rows], "samples": [s for _, s in rows]})
    return records, gens


def exemplar_sets(
    pool: Sequence[QAItem], n_sets: int, shots: int, seed: int, spare: int = 0
) -> dict[str, list[list[QAItem]]]:
    """``n_sets`` seeded draws of ``shots + spare`` candidate exemplars per relation (SliCK,
    the question probe); a fact takes the first ``shots`` that are not itself."""
    sets: dict[str, list[list[QAItem]]] = {}
    for s in range(n_sets):
        for rel, chosen in pick_exemplars(pool, shots + spare, seed * 7919 + s).items():
            sets.setdefault(rel, []).append(chosen)
    return sets


@lru_cache(maxsize=1 << 16)
def _normalized(question: str) -> str:
    return normalize(question)


def fact_key(item: QAItem) -> tuple[str, str]:
    """What makes two rows the same fact: relation and normalised question."""
    return item.relation, _normalized(item.question)


def shots_for(item: QAItem, candidates: Sequence[QAItem], k: int) -> list[QAItem]:
    """The first ``k`` candidates that are not ``item``'s own fact (nor a copy of it)."""
    own = fact_key(item)
    return [c for c in candidates if c.id != item.id and fact_key(c) != own][:k]


def spare_for(pool: Sequence[QAItem]) -> int:
    """Spare candidates per exemplar set when the probed items are the pool: the most copies
    of one fact, so that a fact skipping its own copies still finds ``shots`` others."""
    return max(Counter(fact_key(it) for it in pool).values(), default=0)
