"""Balanced training subsets: composition, small pools, no eval overlap, determinism, errors."""

from __future__ import annotations

import pytest

from sftscope.data.schema import Domain, QAItem
from sftscope.errors import SftscopeError
from sftscope.subsets import allocate, draw_subset, subset_name


def _items(rel: str, n: int, split: str = "train") -> list[QAItem]:
    return [
        QAItem(
            id=f"{rel}/{split}/{i}",
            relation=rel,
            subject=f"s{i}",
            question=f"{rel} q{i}?",
            answers=(f"a{i}",),
            split=split,
            domain=Domain.IN_DOMAIN,
        )
        for i in range(n)
    ]


def test_allocate_equal_shares_and_remainder() -> None:
    assert allocate(60, {"A": 100, "B": 100, "C": 100}) == {"A": 20, "B": 20, "C": 20}
    assert allocate(10, {"A": 100, "B": 100, "C": 100}) == {"A": 4, "B": 3, "C": 3}


def test_allocate_spreads_a_small_pool_over_the_others() -> None:
    # A can give 5 of its 20: the other 15 are shared by B and C (and C's cap binds next).
    assert allocate(60, {"A": 5, "B": 100, "C": 24}) == {"A": 5, "B": 31, "C": 24}
    assert sum(allocate(60, {"A": 5, "B": 100, "C": 24}).values()) == 60
    assert allocate(7, {"A": 0, "B": 10}) == {"A": 0, "B": 7}


def test_balanced_composition_and_level_filter() -> None:
    pool = _items("P1", 50) + _items("P2", 50) + _items("P3", 8)
    levels = {it.id: (1 if int(it.id.rsplit("/", 1)[1]) % 2 else 2) for it in pool}
    sub = draw_subset(pool, levels, level=1, size=30, seed=0)
    assert sub.composition == {"P1": 13, "P2": 13, "P3": 4}  # P3 has only 4 level-1 facts
    assert sub.pools == {"P1": 25, "P2": 25, "P3": 4}
    assert len(sub.items) == 30 and all(levels[it.id] == 1 for it in sub.items)
    assert len({it.id for it in sub.items}) == 30
    rows = sub.rows()
    assert {r["level"] for r in rows} == {1} and rows[0].keys() >= {"id", "question", "answer"}
    assert sub.name == subset_name(1, 30, 0) == "1-30-0"


def test_same_seed_same_subset_and_sizes_are_nested() -> None:
    pool = _items("P1", 100) + _items("P2", 100)
    levels = dict.fromkeys((it.id for it in pool), 3)
    a = draw_subset(pool, levels, 3, 40, seed=7)
    b = draw_subset(pool, levels, 3, 40, seed=7)
    c = draw_subset(pool, levels, 3, 40, seed=8)
    big = draw_subset(pool, levels, 3, 120, seed=7)
    assert [it.id for it in a.items] == [it.id for it in b.items]
    assert {it.id for it in a.items} != {it.id for it in c.items}
    assert {it.id for it in a.items} <= {it.id for it in big.items}


def test_mixed_draws_from_every_level_and_all_takes_the_pool() -> None:
    pool = _items("P1", 40)
    levels = {it.id: i % 5 for i, it in enumerate(pool)}
    mixed = draw_subset(pool, levels, "mixed", "all", seed=0)
    assert len(mixed.items) == 40 and {levels[it.id] for it in mixed.items} == set(range(5))
    assert len(draw_subset(pool, levels, 4, "all", seed=0).items) == 8


def test_no_overlap_with_eval_items() -> None:
    pool = _items("P1", 10)
    test = [
        it.model_copy(update={"id": f"P1/test/{k}", "split": "test"})
        for k, it in enumerate(pool[:3])
    ]  # the same questions under test ids
    levels = dict.fromkeys((it.id for it in pool), 0)
    sub = draw_subset(pool, levels, 0, "all", seed=0, eval_items=test)
    assert len(sub.items) == 7 and sub.excluded_overlap == 3
    assert not {it.question for it in sub.items} & {it.question for it in test}


def test_size_larger_than_pool_names_level_and_relations() -> None:
    pool = _items("P1", 10) + _items("P2", 10)
    levels = {it.id: 4 if it.relation == "P1" else 0 for it in pool}
    with pytest.raises(SftscopeError, match=r"level 4: size 60 asked, but only 10 .*P1 10, P2 0"):
        draw_subset(pool, levels, 4, 60, seed=0, relations=["P1", "P2"])
    with pytest.raises(SftscopeError, match="level 3: no probed training facts"):
        draw_subset(pool, levels, 3, 5, seed=0)
    unprobed = dict.fromkeys(it.id for it in pool)
    with pytest.raises(SftscopeError, match="no probed"):
        draw_subset(pool, unprobed, "mixed", 5, seed=0)
