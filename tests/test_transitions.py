"""Knowledge transitions (base level -> level after SFT) and the rank correlation they use."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sftscope.stats import ranks, spearman
from sftscope.transitions import transitions


def _rows(levels_r: list[tuple[int, float]]) -> dict[str, dict]:
    return {str(i): {"id": str(i), "level": lv, "R": r} for i, (lv, r) in enumerate(levels_r)}


def test_transition_matrix_and_shares_by_hand() -> None:
    before = _rows([(4, 0.9), (4, 0.8), (3, 0.6), (0, 0.0), (1, 0.1), (2, 0.4)])
    after = _rows([(4, 1.0), (0, 0.0), (3, 0.7), (3, 0.6), (1, 0.2), (2, 0.5)])
    after["extra"] = {"id": "extra", "level": 4, "R": 1.0}  # probed after only: ignored
    t = transitions(before, after)
    assert t["facts"] == 6
    assert t["matrix"][4] == [1, 0, 0, 0, 1] and t["matrix"][3] == [0, 0, 0, 1, 0]
    assert t["matrix"][0] == [0, 0, 0, 1, 0] and t["matrix"][1] == [0, 1, 0, 0, 0]
    assert t["known_before"] == 3 and t["kept"] == pytest.approx(2 / 3)
    assert t["lost"] == pytest.approx(1 / 3)
    assert t["unknown_before"] == 2 and t["gained"] == pytest.approx(1 / 2)
    g4 = t["groups"]["4"]
    assert g4["facts"] == 2 and g4["after"] == [1, 0, 0, 0, 1]
    assert g4["r_before"] == pytest.approx(0.85) and g4["r_after"] == pytest.approx(0.5)
    assert list(t["groups"]) == ["0", "1", "2", "3", "4"]
    by_parity = transitions(before, after, lambda r: "even" if int(r["id"]) % 2 == 0 else "odd")
    assert by_parity["groups"]["even"]["facts"] == 3 and by_parity["matrix"] == t["matrix"]


def test_no_known_facts_gives_none_not_a_division_error() -> None:
    t = transitions(_rows([(0, 0.0)]), _rows([(4, 1.0)]))
    assert t["kept"] is None and t["lost"] is None and t["gained"] == 1.0


def test_spearman_with_ties_matches_hand_computation() -> None:
    assert ranks([10, 20, 20, 5]) == [1.0, 2.5, 2.5, 0.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x = [0, 1.5, 1.5, 3], y = [0, 1, 2, 3]: Pearson of those = 0.9486832...
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / math.sqrt(10))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1], [2]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1])


def test_answer_transitions_from_two_evals(tmp_path: Path) -> None:
    """Kept / lost / gained from the base and tuned eval records of the same items, overall
    and per base level; out-of-domain items and items missing on one side do not count."""
    from sftscope.io import atomic_write_jsonl
    from sftscope.transitions import answer_transitions, read_answers

    def rec(i: int, right: bool, level: int, domain: str = "in-domain") -> dict:
        return {"id": f"P17/test/{i}", "domain": domain, "containment": right, "level": level}

    before = [
        rec(0, True, 4),
        rec(1, True, 4),
        rec(2, False, 0),
        rec(3, False, 0),
        rec(4, True, 2),
        rec(5, True, 3, "out-of-domain"),
        rec(6, True, 4),
    ]
    after = [
        rec(0, True, 4),
        rec(1, False, 4),
        rec(2, True, 0),
        rec(3, False, 0),
        rec(4, True, 2),
        rec(5, False, 3, "out-of-domain"),
    ]
    atomic_write_jsonl(tmp_path / "b" / "records.jsonl", before)
    atomic_write_jsonl(tmp_path / "a" / "records.jsonl", after)
    t = answer_transitions(read_answers(tmp_path / "b"), read_answers(tmp_path / "a"))
    assert t["all"] == {
        "items": 5,
        "right_before": 3,
        "wrong_before": 2,
        "kept": 2 / 3,
        "lost": 1 / 3,
        "gained": 0.5,
    }
    assert t["per_level"][4]["kept"] == 0.5 and t["per_level"][0]["gained"] == 0.5
    assert t["per_level"][1]["items"] == 0 and t["per_level"][1]["kept"] is None
