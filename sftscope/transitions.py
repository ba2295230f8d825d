"""Knowledge transitions: how SFT moved each held-out fact's mastery, base level -> level after.

Accuracy per level (the paper's tables) mixes two effects: the tuned model learning the QA
format, and the facts it knew before being kept or lost. Probing the tuned model with the same
mapping templates, settings and thresholds as the base model isolates the second: a fact of base
level 4 that falls to level 0 was forgotten in the model's own declarative phrasing, whatever the
QA prompt does. The grid writes ``probe/after/<cell>/`` when ``transitions: true``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sftscope.data.schema import Domain, QAItem
from sftscope.errors import SftscopeError
from sftscope.io import read_jsonl
from sftscope.layout import MASTERY, RECORDS
from sftscope.mastery import N_LEVELS

KNOWN = 3  # levels 3-4 (R > .5 with the paper's thresholds) count as known, 0-1 as unknown


def read_mastery(folder: Path) -> dict[str, dict[str, Any]]:
    """Probed facts (level not None) of a probe folder, by id."""
    path = Path(folder) / MASTERY
    if not path.exists():
        raise SftscopeError(f"{path}: not found (run sftscope probe first)")
    return {r["id"]: r for r in read_jsonl(path) if r.get("level") is not None}


def transitions(
    before: dict[str, dict[str, Any]],
    after: dict[str, dict[str, Any]],
    group: Callable[[dict[str, Any]], str] | None = None,
) -> dict[str, Any]:
    """Level matrix (rows: level before, columns: level after); per group of facts (base level
    by default, or ``group(row_before)``) the levels after and the mean R before and after; and
    the kept / lost / gained shares. Only facts probed both times count."""
    ids = [i for i in before if i in after]
    matrix = [[0] * N_LEVELS for _ in range(N_LEVELS)]
    rows: dict[str, dict[str, Any]] = {}
    for i in ids:
        b, a = before[i], after[i]
        matrix[b["level"]][a["level"]] += 1
        key = group(b) if group else str(b["level"])
        row = rows.setdefault(
            key, {"facts": 0, "r_before": 0.0, "r_after": 0.0, "after": [0] * N_LEVELS}
        )
        row["facts"] += 1
        row["after"][a["level"]] += 1
        row["r_before"] += b["R"]
        row["r_after"] += a["R"]
    for row in rows.values():
        row["r_before"] /= row["facts"]
        row["r_after"] /= row["facts"]
    if group is None:
        rows = dict(sorted(rows.items()))
    known_rows, unknown_rows = matrix[KNOWN:], matrix[: KNOWN - 1]
    n_known, n_unknown = sum(map(sum, known_rows)), sum(map(sum, unknown_rows))
    kept = sum(sum(r[KNOWN:]) for r in known_rows)
    lost = sum(sum(r[: KNOWN - 1]) for r in known_rows)
    gained = sum(sum(r[KNOWN:]) for r in unknown_rows)
    return {
        "facts": len(ids),
        "matrix": matrix,
        "groups": rows,
        "known_before": n_known,
        "kept": kept / n_known if n_known else None,
        "lost": lost / n_known if n_known else None,
        "unknown_before": n_unknown,
        "gained": gained / n_unknown if n_unknown else None,
    }


def probe_transitions(before_dir: Path, after_dir: Path) -> dict[str, Any]:
    return transitions(read_mastery(before_dir), read_mastery(after_dir))


def answer_transitions(
    before: dict[str, tuple[bool, int | None]], after: dict[str, tuple[bool, int | None]]
) -> dict[str, Any]:
    """The same test questions answered before SFT (base model, few-shot) and after (tuned
    model, SFT prompt), as :func:`read_answers` gives them: of the in-domain items answered
    right before, the share still right (kept) or now wrong (lost); of those answered wrong,
    the share now right (gained) — overall and per base mastery level. Cheap (no re-probe),
    but it mixes format with knowledge: the two models see different prompts."""
    ids = [i for i in before if i in after]

    def tally(keys: list[str]) -> dict[str, Any]:
        right = [i for i in keys if before[i][0]]
        wrong = [i for i in keys if not before[i][0]]
        kept = sum(after[i][0] for i in right)
        gained = sum(after[i][0] for i in wrong)
        return {
            "items": len(keys),
            "right_before": len(right),
            "wrong_before": len(wrong),
            "kept": kept / len(right) if right else None,
            "lost": (len(right) - kept) / len(right) if right else None,
            "gained": gained / len(wrong) if wrong else None,
        }

    per_level = [tally([i for i in ids if before[i][1] == k]) for k in range(N_LEVELS)]
    return {"all": tally(ids), "per_level": per_level}


def read_answers(folder: Path) -> dict[str, tuple[bool, int | None]]:
    """An eval folder's in-domain items by id: (answered right, base mastery level)."""
    path = Path(folder) / RECORDS
    if not path.exists():
        raise SftscopeError(f"{path}: not found (run sftscope eval first)")
    return {
        r["id"]: (bool(r["containment"]), r.get("level"))
        for r in read_jsonl(path)
        if r["domain"] == Domain.IN_DOMAIN.value
    }


def change_of(before: int, after: int) -> str | None:
    """``lost`` (known, level 3-4, to unknown, 0-1), ``gained`` (the reverse) or None."""
    if before >= KNOWN and after < KNOWN - 1:
        return "lost"
    if before < KNOWN - 1 and after >= KNOWN:
        return "gained"
    return None


def fact_changes(
    items: list[QAItem],
    before: dict[str, dict],
    after: dict[str, dict],
    correct: dict[str, dict[str, bool]],
) -> list[dict[str, Any]]:
    """Every fact lost or gained, in item order, with both probes and both answers."""
    rows = []
    for it in items:
        b, a = before.get(it.id), after.get(it.id)
        change = change_of(b["level"], a["level"]) if b and a else None
        if change is None:
            continue
        row = {
            "id": it.id,
            "relation": it.relation,
            "domain": it.domain.value,
            "question": it.question,
            "answers": list(it.answers),
            "change": change,
            "base_level": b["level"],
            "base_R": b["R"],
            "tuned_level": a["level"],
            "tuned_R": a["R"],
        }
        row.update({f"{name}_correct": c.get(it.id) for name, c in correct.items()})
        rows.append(row)
    return rows


def change_counts(rows: list[dict], before: dict[str, dict], after: dict[str, dict]) -> dict:
    """Facts lost and gained by base level (facts of the level probed both times) and by
    relation (its known and unknown facts before)."""
    both = [i for i in before if i in after]
    by_level = [{"facts": 0, "lost": 0, "gained": 0} for _ in range(N_LEVELS)]
    by_relation: dict[str, dict[str, int]] = {}
    for i in both:
        b = before[i]
        by_level[b["level"]]["facts"] += 1
        rel = by_relation.setdefault(
            b["relation"], {"known": 0, "lost": 0, "unknown": 0, "gained": 0}
        )
        rel["known"] += b["level"] >= KNOWN
        rel["unknown"] += b["level"] < KNOWN - 1
    for r in rows:
        by_level[r["base_level"]][r["change"]] += 1
        by_relation[r["relation"]][r["change"]] += 1
    return {
        "n_lost": sum(r["change"] == "lost" for r in rows),
        "n_gained": sum(r["change"] == "gained" for r in rows),
        "by_level": by_level,
        "by_relation": by_relation,
    }
