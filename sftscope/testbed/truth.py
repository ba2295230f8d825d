"""Check sftscope's estimates against the testbed's ground truth: a fact's exposure count.

On a real model a mastery level is itself an estimate; on the testbed each fact was stated a
known number of times, so the probe's R should rise with exposure (Spearman ρ), and the
knowledge-transition table can be read per exposure bucket instead of per estimated level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftscope.data.dataset import load_items, open_dataset
from sftscope.errors import SftscopeError
from sftscope.mastery import N_LEVELS
from sftscope.stats import spearman
from sftscope.testbed.world import BUCKETS, bucket_of
from sftscope.transitions import read_mastery, transitions


def exposures(data_dir: Path) -> dict[str, int]:
    """Fact id -> exposure (the item's ``popularity``) over every split of a testbed dataset."""
    ds = open_dataset(data_dir)
    out = {
        it.id: int(it.popularity)
        for it in load_items(ds, ["train", "dev", "test"])
        if it.popularity is not None
    }
    if not out:
        raise SftscopeError(f"{data_dir}: no exposure counts (not a testbed dataset?)")
    return out


def probe_vs_exposure(probe_dir: Path, data_dir: Path) -> dict[str, Any]:
    """Per exposure bucket: facts, mean R and the level histogram; ρ(R, exposure) overall."""
    exp = exposures(data_dir)
    rows = [r for r in read_mastery(probe_dir).values() if r["id"] in exp]
    if not rows:
        raise SftscopeError(f"{probe_dir}: no probed fact is in {data_dir}")
    buckets: dict[str, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: exp[r["id"]]):
        b = buckets.setdefault(
            bucket_of(exp[r["id"]]), {"facts": 0, "mean_R": 0.0, "levels": [0] * N_LEVELS}
        )
        b["facts"] += 1
        b["mean_R"] += r["R"]
        b["levels"][r["level"]] += 1
    for b in buckets.values():
        b["mean_R"] /= b["facts"]
    rho = spearman([r["R"] for r in rows], [exp[r["id"]] for r in rows])
    return {
        "facts": len(rows),
        "method": rows[0].get("method"),
        "spearman": rho,
        "buckets": buckets,
    }


def transitions_by_exposure(before: Path, after: Path, data_dir: Path) -> dict[str, Any]:
    """The knowledge-transition table with rows per exposure bucket (ground truth)."""
    exp = exposures(data_dir)
    t = transitions(read_mastery(before), read_mastery(after), lambda r: bucket_of(exp[r["id"]]))
    order = [bucket_of(lo) for lo, _ in BUCKETS]
    t["groups"] = {b: t["groups"][b] for b in order if b in t["groups"]}
    return t
