"""Calibrate the likelihood estimator's level thresholds against the sampling protocol.

R̂ (probability of producing an alias right away) and R (share of samples containing an alias
anywhere in 32 tokens) measure different things, so the paper's thresholds do not transfer.
Fit four thresholds on facts probed both ways, save them, and pass them to later likelihood
probes with ``calibration=FILE``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftscope.errors import SftscopeError
from sftscope.io import atomic_write_json, atomic_write_jsonl, read_jsonl
from sftscope.layout import MASTERY, SUMMARY
from sftscope.mastery import N_LEVELS, fit_thresholds, histogram, level_of, read_calibration
from sftscope.outputs import ProbeSummary


def _mastery(folder: Path, method: str) -> dict[str, dict[str, Any]]:
    path = Path(folder) / MASTERY
    if not path.exists():
        raise SftscopeError(f"{path}: not found (run sftscope probe first)")
    rows = {r["id"]: r for r in read_jsonl(path) if r.get("level") is not None}
    wrong = {r.get("method") for r in rows.values()} - {method}
    if wrong:
        raise SftscopeError(f"{path}: expected a {method} probe, found {sorted(map(str, wrong))}")
    return rows


def agreement_matrix(pred: list[int], ref: list[int]) -> list[list[int]]:
    """Confusion counts: rows = reference level, columns = predicted level."""
    m = [[0] * N_LEVELS for _ in range(N_LEVELS)]
    for p, r in zip(pred, ref, strict=True):
        m[r][p] += 1
    return m


def calibrate(labels: Path, scores: Path, out: Path) -> dict[str, Any]:
    """Fit on the facts both probes share; write and return the calibration record."""
    ref = _mastery(labels, "sampling")
    est = _mastery(scores, "likelihood")
    shared = [i for i in est if i in ref]
    if len(shared) < N_LEVELS:
        raise SftscopeError(f"{labels} and {scores} share {len(shared)} facts; need more")
    r_hat = [est[i]["R"] for i in shared]
    levels = [ref[i]["level"] for i in shared]
    thresholds, agreement = fit_thresholds(r_hat, levels)
    pred = [level_of(x, thresholds) for x in r_hat]
    result = {
        "thresholds": list(thresholds),
        "agreement": agreement,
        "n": len(shared),
        "confusion": agreement_matrix(pred, levels),
        "labels": str(labels),
        "scores": str(scores),
    }
    atomic_write_json(out, result)
    return result


def relevel(probe_dir: Path, calibration: Path, out: Path) -> ProbeSummary:
    """Relabel a finished likelihood probe with calibrated thresholds, without the model:
    writes ``out/mastery.jsonl`` and ``out/summary.json`` (R-hat unchanged, levels refitted)."""
    _mastery(probe_dir, "likelihood")  # validates the folder and the method
    rows = read_jsonl(Path(probe_dir) / MASTERY)  # all rows, unprobed ones included
    cal = read_calibration(calibration)
    for r in rows:
        if r["R"] is not None:
            r["level"] = level_of(r["R"], cal)
    relabelled = {
        "thresholds": list(cal),
        "calibration": str(calibration),
        "histogram": histogram(rows),
    }
    before = ProbeSummary.read_if(Path(probe_dir) / SUMMARY)
    if before is not None:
        summary = before.model_copy(update=relabelled)
    else:  # (a probe folder without its summary: what the records say)
        probed = sum(r["R"] is not None for r in rows)
        summary = ProbeSummary(method="likelihood", n_probed=probed, **relabelled)
    atomic_write_jsonl(Path(out) / MASTERY, rows)
    summary.write(Path(out) / SUMMARY)
    return summary
