"""Everything the report shows, read from a finished run folder (never recomputed here).

Cells of the same level and size are aggregated over seeds (mean, sample sd, n), so every
number in the report carries its spread; the per-cell rows stay available for the appendix.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sftscope.config import GridConfig
from sftscope.errors import SftscopeError
from sftscope.io import read_yaml
from sftscope.layout import KNOWLEDGE_LOG, SUMMARY, RunLayout
from sftscope.outputs import ProbeSummary
from sftscope.report.results import (
    answer_transition_tables,
    cell_order,
    cell_table,
    read_manifest,
    restore_tables,
    transition_tables,
)

METRICS = ("in_domain_mean", "ood_mean", "in_domain", "ood", "kl_paper", "kl_full")


def spread(values: list[float | None]) -> dict[str, float | int | None]:
    """Mean, sample sd (None for one value) and n over the values that exist."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "sd": None, "n": 0}
    sd = statistics.stdev(vals) if len(vals) > 1 else None
    return {"mean": statistics.fmean(vals), "sd": sd, "n": len(vals)}


def _split_cell(name: str) -> tuple[str, str, str]:
    level, size, seed = name.split("-", 2)
    return level, size, seed


def by_group(cells: Iterable[tuple[str, Any]]) -> dict[tuple[str, str], list[Any]]:
    """Per-cell values grouped by (training level, size), the seeds of a group together, in
    cell order."""
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for name, value in sorted(cells, key=lambda c: cell_order(c[0])):
        level, size, _ = _split_cell(name)
        groups[(level, size)].append(value)
    return groups


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (training level, size) with each metric's spread over seeds."""
    groups = by_group((r["cell"], r) for r in rows if r["cell"] != "base")
    out = []
    for (level, size), members in groups.items():
        row: dict[str, Any] = {
            "level": level,
            "size": size,
            "seeds": [_split_cell(m["cell"])[2] for m in members],
        }
        for key in METRICS:
            row[key] = spread([m[key] for m in members])
        row["per_level"] = [
            spread(
                [m["in_domain_per_level"][k] if m["in_domain_per_level"] else None for m in members]
            )
            for k in range(5)
        ]
        row["kl_full_per_level"] = [
            spread([m["kl_full_per_level"][k] for m in members]) for k in range(5)
        ]
        out.append(row)
    return out


def aggregate_transitions(ts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Kept / lost / gained per (training level, size), spread over seeds."""
    return [
        {
            "level": lv,
            "size": sz,
            "known": members[0]["known_before"],
            "unknown": members[0]["unknown_before"],
            **{k: spread([m[k] for m in members]) for k in ("kept", "lost", "gained")},
        }
        for (lv, sz), members in by_group(ts.items()).items()
    ]


def aggregate_answers(ts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Answer transitions per (training level, size): kept / lost / gained overall and kept
    per base mastery level, spread over seeds."""
    return [
        {
            "level": lv,
            "size": sz,
            "seeds": len(members),
            "right": members[0]["all"]["right_before"],
            "wrong": members[0]["all"]["wrong_before"],
            **{k: spread([m["all"][k] for m in members]) for k in ("kept", "lost", "gained")},
            "kept_per_level": [
                spread([m["per_level"][k]["kept"] for m in members]) for k in range(5)
            ],
            "right_per_level": [members[0]["per_level"][k]["right_before"] for k in range(5)],
        }
        for (lv, sz), members in by_group(ts.items()).items()
    ]


def read_run_config(path: Path) -> GridConfig:
    """The run's ``config.yaml``, validated as the grid config it was written from (so the
    report reads its settings, defaults included, instead of restating them)."""
    raw = read_yaml(path, "run config")
    try:
        return GridConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "config"
        raise SftscopeError(f"{path}: not a grid config (field {field!r}: {err['msg']})") from None


CURVES = ("knowledge/known_kept", "knowledge/unknown_gained", "knowledge/kl_paper")


def knowledge_curves(root: Path) -> list[dict[str, Any]]:
    """The cells' knowledge while training (``watch: true``: ``models/<cell>/knowledge_log.
    jsonl``), one :func:`curve` per (training level, size)."""
    from sftscope.io import read_jsonl

    layout = RunLayout(root)
    logs = [
        (cell.parent.name, read_jsonl(cell))
        for cell in sorted((layout.root / "models").glob(f"*/{KNOWLEDGE_LOG}"))
    ]
    return [
        curve(runs, level=level, size=size, label=f"level {level}, {size} facts")
        for (level, size), runs in by_group(logs).items()
    ]


def curve(runs: list[list[dict[str, Any]]], **meta: Any) -> dict[str, Any]:
    """Knowledge logs of one setting (its seeds) as one curve: the steps and each metric's
    spread over the runs at every step, with ``meta`` (its ``label`` names it in figures)."""
    steps = sorted({r["step"] for rows in runs for r in rows})
    at = [{r["step"]: r for r in rows} for rows in runs]
    entry: dict[str, Any] = {**meta, "seeds": len(runs), "steps": steps}
    for metric in CURVES:
        entry[metric] = [spread([a.get(s, {}).get(metric) for a in at]) for s in steps]
    return entry


def collect(root: Path) -> dict[str, Any]:
    """The run's config, probes, per-cell and aggregated accuracy/KL, transitions and the
    parameter-level results (each section empty when the run has none)."""
    root, layout = Path(root), RunLayout(root)
    manifest = read_manifest(root)
    config = read_run_config(layout.config)
    split = config.eval.split
    rows = cell_table(root)
    if not rows:
        raise SftscopeError(f"{root}: no evaluated cells (run sftscope run first)")
    return {
        "root": str(root),
        "config": config,
        "versions": manifest.get("versions", {}),
        "split": split,
        "probes": {
            name: s
            for name in ("train", split)
            if (s := ProbeSummary.read_if(layout.probe(name) / SUMMARY))
        },
        "base": next((r for r in rows if r["cell"] == "base"), None),
        "groups": aggregate(rows),
        "transitions": aggregate_transitions(transition_tables(root, split)),
        "answers": aggregate_answers(answer_transition_tables(root)),
        "params": restore_tables(root),
        "curves": knowledge_curves(root),
    }
