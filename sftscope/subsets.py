"""Training sets by size x mastery level x seed, balanced across relations (docs/method.md §1.4).

The paper draws N facts of one mastery level "keeping a balanced distribution across the
topics". Where a relation's pool of that level is smaller than its share, all of it is taken
and the shortfall is spread evenly over the other relations (water-filling); the composition
actually drawn is recorded beside the set. Within a relation, facts are taken from one seeded
shuffle, so for a fixed seed the 60-fact set is contained in the 240-fact set: sizes differ
only in how much data is added, not in which facts happen to be drawn.

Training facts never share a question with the evaluation items (checked on the normalised
question text, since datasets may repeat a fact across splits).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from sftscope.config import StageConfig, runtime
from sftscope.data.matching import normalize
from sftscope.data.schema import QAItem
from sftscope.errors import SftscopeError

MIXED = "mixed"
ALL = "all"
Level = int | str  # 0..4 or "mixed"
Size = int | str  # N or "all"


def subset_name(level: Level, size: Size, seed: int) -> str:
    """The cell name ``<level>-<size>-<seed>`` used for subsets/, models/ and eval/."""
    return f"{level}-{size}-{seed}"


def allocate(size: int, pools: Mapping[str, int]) -> dict[str, int]:
    """Facts per relation: equal shares, small pools taken whole and their shortfall spread
    over the others; the remainder of an uneven split goes to the relations in sorted order."""
    take = dict.fromkeys(pools, 0)
    open_rels = sorted(pools)
    left = size
    while open_rels and left > 0:
        share = left // len(open_rels)
        small = [r for r in open_rels if pools[r] - take[r] <= share]
        if small:  # these cannot meet an equal share: take them whole, share the rest again
            for r in small:
                left -= pools[r] - take[r]
                take[r] = pools[r]
                open_rels.remove(r)
            continue
        extra = left - share * len(open_rels)
        for k, r in enumerate(open_rels):
            take[r] += share + (1 if k < extra else 0)
        left = 0
    return take


@dataclass
class Subset:
    """One drawn training set and where its facts came from."""

    level: Level
    size: Size
    seed: int
    items: list[QAItem]
    levels: dict[str, int | None]  # of the drawn facts
    composition: dict[str, int]
    pools: dict[str, int]
    excluded_overlap: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return subset_name(self.level, self.size, self.seed)

    def rows(self) -> list[dict[str, Any]]:
        """JSONL rows: what ``sftscope train --train-file`` reads (question + answer)."""
        return [
            {
                "id": it.id,
                "relation": it.relation,
                "question": it.question,
                "answer": it.target,
                "level": self.levels.get(it.id),
            }
            for it in self.items
        ]

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "level": self.level,
            "size": self.size,
            "seed": self.seed,
            "n": len(self.items),
            "composition": self.composition,
            "pools": self.pools,
            "excluded_overlap_with_eval": self.excluded_overlap,
            **self.meta,
        }


def draw_subset(
    pool: Sequence[QAItem],
    levels: Mapping[str, int | None],
    level: Level,
    size: Size,
    seed: int,
    eval_items: Sequence[QAItem] = (),
    relations: Sequence[str] | None = None,
) -> Subset:
    """Draw one balanced set of ``size`` facts of mastery ``level`` (or of any level for
    ``"mixed"``) from ``pool``; ``levels`` maps fact id to its probed level (None: unprobed)."""
    if level != MIXED and level not in range(5):
        raise SftscopeError(f"level {level!r}: expected 0..4 or {MIXED!r}")
    if size != ALL and not (isinstance(size, int) and size > 0):
        raise SftscopeError(f"size {size!r}: expected a positive integer or {ALL!r}")
    held_out = {(it.relation, normalize(it.question)) for it in eval_items}
    by_rel: dict[str, list[QAItem]] = defaultdict(list)
    excluded = 0
    for rel in relations or ():
        by_rel[rel] = []
    for it in pool:
        lv = levels.get(it.id)
        if lv is None or (level != MIXED and lv != level):
            continue
        if relations is not None and it.relation not in relations:
            continue
        if (it.relation, normalize(it.question)) in held_out:
            excluded += 1
            continue
        by_rel[it.relation].append(it)
    pools = {rel: len(v) for rel, v in sorted(by_rel.items())}
    total = sum(pools.values())
    if total == 0:
        raise SftscopeError(f"level {level}: no probed training facts of this level")
    n = total if size == ALL else size
    if n > total:
        have = ", ".join(f"{r} {c}" for r, c in pools.items())
        raise SftscopeError(
            f"level {level}: size {size} asked, but only {total} facts of this level exist ({have})"
        )
    composition = allocate(n, pools)
    picked: list[QAItem] = []
    for rel, facts in sorted(by_rel.items()):
        order = sorted(facts, key=lambda it: it.id)
        random.Random(f"subset:{seed}:{level}:{rel}").shuffle(order)
        picked.extend(order[: composition[rel]])
    random.Random(f"order:{seed}:{level}:{size}").shuffle(picked)  # mix relations
    picked_levels = {it.id: levels.get(it.id) for it in picked}  # not a copy of the whole map
    return Subset(level, size, seed, picked, picked_levels, composition, pools, excluded)


class SubsetConfig(StageConfig):
    """The grid's subset stage: one balanced set drawn from the run's item snapshot."""

    items: Path = Field(description="the run's data/items.jsonl (train and evaluation items)")
    mastery: Path = Field(description="the base model's probe of the train split")
    relations: list[str] = Field(description="the in-domain relations trained on")
    eval_split: str = Field(description="the evaluation split, whose questions are held out")
    level: int | Literal["mixed"]
    size: int | Literal["all"]
    seed: int
    out: Path = runtime(description="the subset's JSONL file")


def run_subset(cfg: SubsetConfig) -> dict[str, Any]:
    from sftscope.io import atomic_write_jsonl, read_jsonl
    from sftscope.mastery import read_levels

    rows = [QAItem.model_validate(r) for r in read_jsonl(cfg.items)]
    pool = [it for it in rows if it.split == "train"]
    held_out = [it for it in rows if it.split == cfg.eval_split]
    sub = draw_subset(
        pool, read_levels(cfg.mastery), cfg.level, cfg.size, cfg.seed, held_out, cfg.relations
    )
    atomic_write_jsonl(cfg.out, sub.rows())
    return sub.summary()
