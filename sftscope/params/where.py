"""Where the large updates are (docs/method.md §7.5, Tables 9–10): of the weights a top-k% restore
selected, the share in each decoder layer and in each module type, beside that layer's or
module's share of the region's weights. The second column is what makes the first readable:
a module holding 27 % of the weights and 27 % of the selected ones is not special.

Read from a restore folder (``restore_stats.tsv``, ``selection.json``); nothing is recomputed.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any


def _shares(
    rows: list[dict[str, str]], key, ks: dict[str, float], order: list[str]
) -> list[dict[str, Any]]:
    """Per group: share of the region's weights and, per k, of the weights selected at k."""
    weights: dict[str, int] = defaultdict(int)
    chosen: dict[tuple[str, str], int] = defaultdict(int)
    first = next(iter(ks))
    for row in rows:
        group = key(row)
        if row["output"] == first:
            weights[group] += int(row["numel"])
        chosen[(row["output"], group)] += int(row["restored"])
    total = sum(weights.values())
    picked = {label: sum(v for (lab, _), v in chosen.items() if lab == label) for label in ks}
    return [
        {
            "group": g,
            "weights": weights[g] / total,
            "selected": {
                ks[lab]: chosen[(lab, g)] / picked[lab] if picked[lab] else 0.0 for lab in ks
            },
        }
        for g in order
        if g in weights
    ]


# The module of a row of a restore folder written before rows carried one (LLaMA names).
_LEGACY_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _module(row: dict[str, str]) -> str:
    """The row's module (the structure map's label); for an older folder, from the name."""
    if row.get("module"):
        return row["module"]
    name = f"{row['tensor']}."
    return next((m for m in _LEGACY_MODULES if f".{m}." in name), "other")


def update_shares(restore_dir: Path) -> dict[str, Any] | None:
    """Per-layer and per-module shares of the selected weights for every k of a restore sweep
    (layer-block outputs are not a selection and are skipped); None without a k sweep."""
    restore_dir = Path(restore_dir)
    stats, selection = restore_dir / "restore_stats.tsv", restore_dir / "selection.json"
    if not stats.exists() or not selection.exists():
        return None
    sel = json.loads(selection.read_text(encoding="utf-8"))
    ks = {o["label"]: o["k"] for o in sel["outputs"] if o.get("k") is not None}
    if not ks:
        return None
    with open(stats, encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["output"] in ks]

    def layer(row: dict[str, str]) -> str:
        return row["layer"] if row["layer"].isdigit() else "other"

    layers = sorted(
        {layer(r) for r in rows}, key=lambda g: (g == "other", int(g) if g != "other" else 0)
    )

    return {
        "region": sel["region"],
        "scope": sel["scope"],
        "strategy": sel["strategy"],
        "ks": sorted(ks.values()),
        "per_layer": _shares(rows, layer, ks, layers),
        "per_module": _shares(rows, _module, ks, list(dict.fromkeys(map(_module, rows)))),
    }
