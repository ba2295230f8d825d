"""Mastery arithmetic shared by the probe methods: levels, early-exit decisions, the likelihood
estimator's alias probabilities, threshold calibration (and reading a calibration file), SliCK
categories, the level histogram.

Pure functions with no model in sight, so each is tested against a hand computation.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sftscope.data.matching import contains_answer, normalize, settled
from sftscope.errors import SftscopeError
from sftscope.layout import MASTERY

N_LEVELS = 5


def level_of(r: float, thresholds: Sequence[float]) -> int:
    """Level k = how many thresholds lie strictly below R: with the paper's (0, .25, .5, .75),
    R=0 → 0, (0, .25] → 1, (.25, .5] → 2, (.5, .75] → 3, (.75, 1] → 4."""
    return bisect_left(list(thresholds), r)


def decided(text: str, answers: Sequence[str]) -> bool:
    """True once ``text`` contains a gold alias that no later token can undo.

    Containment is on word boundaries, so "India" at the very end can still become "Indiana";
    only the settled part of the text counts (:func:`sftscope.data.matching.settled`).
    """
    head = settled(text)
    return bool(head) and contains_answer(head, answers)


def prefix_free(aliases: Iterable[str]) -> list[str]:
    """Aliases no other alias is a word-prefix of: generating "New York City" means generating
    "New York" first, so summing both would count one event twice."""
    forms = {a: normalize(a) for a in aliases}
    forms = {a: f for a, f in forms.items() if f}
    keep: dict[str, str] = {}  # normalised form -> first alias with it
    for a, f in forms.items():
        extends_another = any(f.startswith(g + " ") for g in forms.values())
        if not extends_another and f not in keep:
            keep[f] = a
    return list(keep.values())


def alias_probability(logprob_sums: Iterable[float]) -> float:
    """P(the continuation is one of the aliases) = Σ_a Π_t p(t); the events are disjoint once
    aliases are prefix-free; capped at 1 against rounding."""
    return min(1.0, sum(math.exp(lp) for lp in logprob_sums))


def fit_thresholds(
    scores: Sequence[float], levels: Sequence[int], n_levels: int = N_LEVELS
) -> tuple[tuple[float, ...], float]:
    """Thresholds on ``scores`` whose levels agree most often with ``levels``.

    Exact: sort by score, then dynamic programming over non-decreasing level assignments
    (equal scores must share a level). Thresholds sit halfway (geometrically, when both sides
    are positive) between the last score of one level and the first of the next.
    Returns (thresholds, agreement on the fitting set).
    """
    if len(scores) != len(levels) or not scores:
        raise ValueError("fit_thresholds needs equally many scores and levels, at least one")
    by_value: dict[float, Counter] = {}
    for s, lv in zip(scores, levels, strict=True):
        by_value.setdefault(float(s), Counter())[int(lv)] += 1
    values = sorted(by_value)
    best = [[0] * n_levels for _ in values]
    back = [[0] * n_levels for _ in values]
    for g, v in enumerate(values):
        run_max, run_arg = -1, 0
        for k in range(n_levels):
            prev = best[g - 1][k] if g else 0
            if prev > run_max:
                run_max, run_arg = prev, k
            best[g][k] = run_max + by_value[v][k]
            back[g][k] = run_arg
    k = max(range(n_levels), key=lambda j: best[-1][j])
    agreement = best[-1][k] / len(scores)
    assigned = [0] * len(values)
    for g in range(len(values) - 1, -1, -1):
        assigned[g] = k
        k = back[g][k]
    thresholds = []
    for k in range(1, n_levels):
        below = [v for v, a in zip(values, assigned, strict=True) if a < k]
        above = [v for v, a in zip(values, assigned, strict=True) if a >= k]
        if not above:
            thresholds.append(values[-1])  # nothing reaches level k: no score exceeds this
        elif not below:
            lo = above[0]
            thresholds.append(lo / 2 if lo > 0 else lo - 1.0)
        else:
            lo, hi = below[-1], above[0]
            thresholds.append(math.sqrt(lo * hi) if lo > 0 else (lo + hi) / 2)
    return tuple(thresholds), agreement


SLICK_LEVEL = {"Unknown": 0, "WeaklyKnown": 1, "MaybeKnown": 2, "HighlyKnown": 4}


def slick_category(p_greedy: float, p_sampled: float) -> str:
    """Gekhman et al. (2024): HighlyKnown = greedy always right; MaybeKnown = sometimes;
    WeaklyKnown = greedy never but sampling sometimes; Unknown = never."""
    if p_greedy == 1.0:
        return "HighlyKnown"
    if p_greedy > 0:
        return "MaybeKnown"
    return "WeaklyKnown" if p_sampled > 0 else "Unknown"


def slick_level(p_greedy: float, p_sampled: float) -> int:
    """SliCK's four categories on the five-level scale: MaybeKnown splits at a greedy success
    rate of 1/2 into levels 2 and 3, so every level is populated and ordered by knowledge."""
    cat = slick_category(p_greedy, p_sampled)
    if cat == "MaybeKnown" and p_greedy > 0.5:
        return 3
    return SLICK_LEVEL[cat]


def read_levels(path: str | Path) -> dict[str, int | None]:
    """Fact id -> mastery level from a probe folder or its ``mastery.jsonl`` (None: unprobed)."""
    from sftscope.errors import SftscopeError
    from sftscope.io import read_jsonl

    path = Path(path)
    if path.is_dir():
        path = path / MASTERY
    if not path.is_file():
        raise SftscopeError(f"{path}: mastery file not found (run sftscope probe first)")
    out: dict[str, int | None] = {}
    for k, row in enumerate(read_jsonl(path), 1):
        if not isinstance(row, dict) or "id" not in row or "level" not in row:
            raise SftscopeError(f"{path}: row {k}: expected fields 'id' and 'level'")
        out[str(row["id"])] = row["level"]
    return out


def histogram(records: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    """Facts per level, per relation (in first-seen order) and in total."""
    hist: dict[str, list[int]] = {}
    for r in records:
        if r["level"] is not None:
            hist.setdefault(r["relation"], [0] * N_LEVELS)[r["level"]] += 1
    hist["total"] = [sum(h[k] for h in hist.values()) for k in range(N_LEVELS)]
    return hist


def read_calibration(path: Path) -> tuple[float, ...]:
    """The four thresholds saved by :func:`calibrate`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        thresholds = tuple(float(x) for x in data["thresholds"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SftscopeError(f"{path}: not a calibration file ({e})") from None
    if len(thresholds) != N_LEVELS - 1 or list(thresholds) != sorted(thresholds):
        raise SftscopeError(f"{path}: expected {N_LEVELS - 1} ascending thresholds")
    return thresholds
