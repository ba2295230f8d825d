"""Mastery arithmetic: level boundaries, early-exit decisions, R-hat, calibration, SliCK."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from sftscope.mastery import (
    alias_probability,
    decided,
    fit_thresholds,
    level_of,
    prefix_free,
    slick_category,
    slick_level,
)

PAPER = (0.0, 0.25, 0.5, 0.75)


@pytest.mark.parametrize(
    ("r", "level"),
    [
        (0.0, 0),
        (1e-9, 1),
        (0.1, 1),
        (0.25, 1),
        (0.2500001, 2),
        (0.5, 2),
        (0.51, 3),
        (0.75, 3),
        (0.76, 4),
        (1.0, 4),
    ],
)
def test_paper_level_boundaries(r: float, level: int) -> None:
    assert level_of(r, PAPER) == level


def test_level_with_210_samples() -> None:
    # The paper's 21 x 10 protocol: 1 of 210 is level 1; 53/210 > .25 is level 2.
    assert level_of(1 / 210, PAPER) == 1
    assert level_of(52 / 210, PAPER) == 1 and level_of(53 / 210, PAPER) == 2
    assert level_of(210 / 210, PAPER) == 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" France", False),  # "France" may still grow into "Frances..."
        (" France and", True),
        (" in India", False),
        (" in Indiana, USA", False),
        (" in India\n", True),
        (" India.com is", True),  # a period is a word break: "india com is"
        ("", False),
    ],
)
def test_decided_only_when_no_later_token_can_undo_it(text: str, expected: bool) -> None:
    answers = ["France"] if "France" in text else ["India"]
    assert decided(text, answers) is expected


def test_a_decided_prefix_stays_correct_whatever_follows() -> None:
    """Early exit must never change R: once ``decided``, every continuation still contains a
    gold answer, initials (which join across spaces) included."""
    import itertools

    from sftscope.data.matching import contains_answer

    pieces = [
        " B",
        ".",
        " C.",
        " J.",
        "K.",
        " Rowling",
        " India",
        "na",
        " ",
        "\n",
        ".com",
        " a",
        "L",
        "B.com",
        " x.y",
    ]
    answers = [["B"], ["India"], ["J. K. Rowling"], ["K"]]
    for gold in answers:
        for n in range(1, 5):
            for prefix in itertools.product(pieces, repeat=n):
                text = "".join(prefix)
                if not decided(text, gold):
                    continue
                for tail in pieces:
                    assert contains_answer(text + tail, gold), (text, tail, gold)
    assert not decided(" type B. ", ["B"])  # " C." next would make it "bc"
    assert decided(" type B. and", ["B"])


def test_prefix_free_aliases() -> None:
    assert prefix_free(["New York", "New York City", "NYC"]) == ["New York", "NYC"]
    assert prefix_free(["USA", "U.S.A.", "United States", "United States of America"]) == [
        "USA",
        "United States",
    ]
    assert prefix_free(["", "Paris"]) == ["Paris"]


def test_alias_probability_hand_computed() -> None:
    assert alias_probability([math.log(0.2), math.log(0.3)]) == pytest.approx(0.5)
    assert alias_probability([math.log(0.2) + math.log(0.5)]) == pytest.approx(0.1)
    assert alias_probability([0.0, 0.0]) == 1.0
    assert alias_probability([]) == 0.0


def test_fit_thresholds_separable() -> None:
    scores = [0.001, 0.002, 0.01, 0.02, 0.1, 0.2, 0.4, 0.5, 0.8, 0.9]
    levels = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    thresholds, agreement = fit_thresholds(scores, levels)
    assert agreement == 1.0
    assert [level_of(s, thresholds) for s in scores] == levels
    assert list(thresholds) == sorted(thresholds)


def test_fit_thresholds_is_optimal_against_brute_force() -> None:
    rng = random.Random(0)
    for _ in range(30):
        n = rng.randint(5, 9)
        scores = [rng.choice([0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9]) for _ in range(n)]
        levels = [rng.randint(0, 4) for _ in range(n)]
        _, agreement = fit_thresholds(scores, levels)
        values = sorted(set(scores))
        cuts = [-1.0] + values  # a threshold at v puts v below it
        best = 0
        for ts in itertools.combinations_with_replacement(cuts, 4):
            hits = sum(level_of(s, ts) == lv for s, lv in zip(scores, levels, strict=True))
            best = max(best, hits)
        assert agreement == pytest.approx(best / n)


def test_slick_categories_and_levels() -> None:
    assert slick_category(1.0, 0.0) == "HighlyKnown" and slick_level(1.0, 0.0) == 4
    assert slick_category(0.3, 0.0) == "MaybeKnown" and slick_level(0.3, 0.0) == 2
    assert slick_level(0.7, 0.0) == 3
    assert slick_category(0.0, 0.1) == "WeaklyKnown" and slick_level(0.0, 0.1) == 1
    assert slick_category(0.0, 0.0) == "Unknown" and slick_level(0.0, 0.0) == 0
