"""Computed verdicts on the paper's findings: reproduced / not reproduced / inconclusive, each
with the numbers and the test that decided it. Nothing here is written by hand per run.

Differences between grid cells use the seeds: a difference of means is called real when its
95 % interval (Welch's t, sd from the seeds) excludes 0; with one seed there is no
interval and the verdict is inconclusive. Restore-sweep and concentration numbers come from one
model each, so they are judged against stated margins instead.

Each verdict also says what it rests on (``basis``): seeds per compared group, test items per
evaluation, and the smallest difference the run could have detected — the narrowest 95 %
interval half-width among its seed comparisons, or, for one model, a 95 % binomial bound on a
difference between two accuracies over the same number of items (pessimistic for paired items).
"""

from __future__ import annotations

import math
from typing import Any

REPRODUCED, NOT, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
RESTORE_GAIN = 0.01  # restoration "helps" when the best small k gains >= 1 point
COLLAPSE_DROP = 0.05  # heavy restoration "collapses" when k >= 40 % loses >= 5 points
TOP1_SHARE = 0.5  # "most of the change" = at least half of the total relative change


# Student's t, 97.5 % quantile, by degrees of freedom (beyond 30: the normal 1.96).
_T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    30: 2.042,
}


def t975(df: float) -> float:
    """The quantile for the largest tabulated df not above ``df`` (conservative)."""
    usable = [k for k in _T975 if k <= max(df, 1)]
    return 1.96 if df > 30 else _T975[max(usable)]


def diff_ci(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float | None]:
    """a − b and the half-width of its 95 % Welch interval (None without two seeds a side)."""
    d = a["mean"] - b["mean"]
    if a["n"] < 2 or b["n"] < 2 or a["sd"] is None or b["sd"] is None:
        return d, None
    va, vb = a["sd"] ** 2 / a["n"], b["sd"] ** 2 / b["n"]
    if va + vb == 0:
        return d, 0.0
    df = (va + vb) ** 2 / (va**2 / (a["n"] - 1) + vb**2 / (b["n"] - 1))
    return d, t975(df) * math.sqrt(va + vb)


def binomial_mde(p: float | None, n: int) -> float | None:
    """Smallest difference between two accuracies near ``p`` on ``n`` items each that a 95 %
    test could tell from 0 (unpaired, so an upper bound for the same items)."""
    if p is None or not n:
        return None
    return 1.96 * math.sqrt(2 * max(p * (1 - p), 1 / (4 * n)) / n)


def _basis(seeds: int | None, items: int | None, mde: float | None, how: str) -> dict[str, Any]:
    return {"seeds": seeds, "items": items, "detectable": mde, "how": how}


def _pts(d: float, half: float | None) -> str:
    d += 0.0  # no "-0.0"
    return f"{100 * d:+.1f}" + ("" if half is None else f" ± {100 * half:.1f}") + " points"


def _sign(d: float, half: float | None) -> int:
    """+1 / −1 when the interval excludes 0, 0 when it does not or there is none."""
    if half is None or abs(d) <= half:
        return 0
    return 1 if d > 0 else -1


def _sizes(groups: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(g["size"] for g in groups))


def _group_basis(
    compared: list[tuple[dict, dict]], half: list[float | None], items: int | None
) -> dict[str, Any]:
    seeds = min((min(a["n"], b["n"]) for a, b in compared), default=None)
    widths = [h for h in half if h is not None]
    how = (
        "the narrowest 95 % interval half-width among the comparisons"
        if widths
        else "no interval: a side has fewer than two seeds"
    )
    return _basis(seeds, items, min(widths) if widths else None, how)


def peak_at_small_size(groups: list[dict[str, Any]], items: int | None = None) -> dict[str, Any]:
    """docs/method.md §5.1: accuracy peaks at a small training size and falls with more data."""
    claim = "accuracy peaks at a small training-set size and falls with more data"
    test = "per training level: best size vs the largest size (ID mean of levels), 95 % interval"
    lines, signs, compared, halves = [], [], [], []
    for level in dict.fromkeys(g["level"] for g in groups):
        own = [g for g in groups if g["level"] == level and g["in_domain_mean"]["mean"] is not None]
        if len(own) < 2:
            continue
        best = max(own, key=lambda g: g["in_domain_mean"]["mean"])
        last = own[-1]
        if best is last:  # rising: is the largest size better than the smallest?
            pair = (last["in_domain_mean"], own[0]["in_domain_mean"])
            d, half = diff_ci(*pair)
            signs.append(-_sign(d, half))
            lines.append(
                f"level {level}: largest size {last['size']} is best, "
                f"{_pts(d, half)} over size {own[0]['size']}"
            )
        else:
            pair = (best["in_domain_mean"], last["in_domain_mean"])
            d, half = diff_ci(*pair)
            signs.append(_sign(d, half))
            lines.append(
                f"level {level}: peak at size {best['size']}, {_pts(d, half)} over "
                f"size {last['size']}"
            )
        compared.append(pair)
        halves.append(half)
    return _verdict(claim, test, lines, signs, basis=_group_basis(compared, halves, items))


def level_moves_accuracy(groups: list[dict[str, Any]], items: int | None = None) -> dict[str, Any]:
    """docs/method.md §5.1: at a fixed size, which mastery level is trained on changes accuracy."""
    claim = "the training data's mastery level changes accuracy at a fixed size"
    test = "per size: best vs worst training level (ID mean of levels), 95 % interval"
    lines, signs, compared, halves = [], [], [], []
    for size in _sizes(groups):
        own = [g for g in groups if g["size"] == size and g["in_domain_mean"]["mean"] is not None]
        if len(own) < 2:
            continue
        hi = max(own, key=lambda g: g["in_domain_mean"]["mean"])
        lo = min(own, key=lambda g: g["in_domain_mean"]["mean"])
        d, half = diff_ci(hi["in_domain_mean"], lo["in_domain_mean"])
        signs.append(_sign(d, half))
        lines.append(f"size {size}: level {hi['level']} vs level {lo['level']} {_pts(d, half)}")
        compared.append((hi["in_domain_mean"], lo["in_domain_mean"]))
        halves.append(half)
    return _verdict(
        claim,
        test,
        lines,
        [s if s > 0 else 0 for s in signs],
        any_positive=True,
        basis=_group_basis(compared, halves, items),
    )


def top1_holds_most(params: dict[str, Any]) -> dict[str, Any]:
    """docs/method.md §7.2: the top 1 % of weights by relative change hold most of the change.

    Weights whose base value is exactly 0 (a dequantised GGUF has some) get r = |Δ|/1e-8; when
    they hold most of Σr the all-weights share says nothing, so the weights with a non-zero
    base value are judged instead, and the evidence says so."""
    claim = "the top 1 % most-changed weights hold most of the total relative change"
    test = (
        f"share of Σr held by the top 1 % ≥ {TOP1_SHARE:.0%} in every analysed cell "
        "(over the weights with a non-zero base value when exact zeros hold most of Σr)"
    )
    lines, signs = [], []
    for cell, entry in params.items():
        rows, note = entry.get("concentration", []), ""
        zero = entry.get("zero_base", {}).get("share_of_r", 0.0)
        if zero >= TOP1_SHARE and entry.get("concentration_nonzero"):
            rows = entry["concentration_nonzero"]
            note = (
                f" of the weights with a non-zero base value (the exactly-0 base weights "
                f"hold {100 * zero:.1f} % of Σr and are left out)"
            )
        share = next((r["share"] for r in rows if r["k"] == 1), None)
        if share is not None:
            signs.append(1 if share >= TOP1_SHARE else -1)
            lines.append(f"{cell}: {100 * share:.1f} %{note} (paper, LLaMA-3-8B: ~71 %)")
    basis = _basis(1, None, None, "exact: every weight of the region counted, one model a cell")
    return _verdict(claim, test, lines, signs, basis=basis)


def _sweep_rows(params: dict[str, Any]):
    for cell, entry in params.items():
        rows = [
            r
            for r in entry.get("sweep", {}).get("rows", [])
            if not r["label"].startswith("layers-")
        ]
        base = next((r for r in rows if r["k"] == 0), None)
        if base and len(rows) > 1:
            yield cell, base, [r for r in rows if r["k"] > 0]


def _sweep_basis(params: dict[str, Any], items: int | None, key: str = "sweep") -> dict[str, Any]:
    tuned = [
        r["in_domain"]
        for entry in params.values()
        for r in entry.get(key, {}).get("rows", [])
        if r["k"] == 0
    ]
    mde = binomial_mde(tuned[0], items) if tuned and items else None
    return _basis(
        1,
        items,
        mde,
        "one model per k: 95 % binomial bound on a difference of two accuracies over these items",
    )


def restoration_helps(params: dict[str, Any], items: int | None = None) -> dict[str, Any]:
    """docs/method.md §7.3: restoring a few most-changed weights improves the fine-tuned model."""
    claim = "restoring the most-changed weights (k ≤ 20 %) improves accuracy"
    test = f"best k ≤ 20 % vs unrestored (test ID accuracy): ≥ +{100 * RESTORE_GAIN:.0f} point"
    lines, signs = [], []
    for cell, base, rows in _sweep_rows(params):
        small = [r for r in rows if r["k"] <= 20]
        if not small:
            continue
        best = max(small, key=lambda r: r["in_domain"])
        d = best["in_domain"] - base["in_domain"]
        signs.append(1 if d >= RESTORE_GAIN else -1 if d <= 0 else 0)
        lines.append(f"{cell}: k = {best['k']:g} % {100 * d:+.1f} points")
    return _verdict(claim, test, lines, signs, basis=_sweep_basis(params, items))


def heavy_restoration_collapses(params: dict[str, Any], items: int | None = None) -> dict[str, Any]:
    """docs/method.md §7.3: restoring a large share of weights undoes the fine-tuning."""
    claim = "restoring a large share (k ≥ 40 %) of weights collapses accuracy"
    test = f"largest k ≥ 40 % vs unrestored (test ID accuracy): ≤ −{100 * COLLAPSE_DROP:.0f} points"
    lines, signs = [], []
    for cell, base, rows in _sweep_rows(params):
        heavy = [r for r in rows if r["k"] >= 40]
        if not heavy:
            continue
        r = max(heavy, key=lambda r: r["k"])
        d = r["in_domain"] - base["in_domain"]
        signs.append(1 if d <= -COLLAPSE_DROP else -1 if d >= 0 else 0)
        lines.append(f"{cell}: k = {r['k']:g} % {100 * d:+.1f} points")
    return _verdict(claim, test, lines, signs, basis=_sweep_basis(params, items))


def lowest_layers_critical(params: dict[str, Any], items: int | None = None) -> dict[str, Any]:
    """docs/method.md §7.5 (Table 11): restoring the lowest layers is the most harmful."""
    claim = "restoring the lowest layer block hurts most (lower layers are the most critical)"
    test = (
        f"the block holding layer 0 loses the most test ID accuracy, ≥ "
        f"{100 * COLLAPSE_DROP:.0f} points (another block losing ≥ "
        f"{100 * RESTORE_GAIN:.0f} point more: not reproduced)"
    )
    lines, signs = [], []
    for cell, entry in params.items():
        rows = entry.get("blocks", {}).get("rows", [])
        tuned = next((r for r in rows if r["k"] == 0), None)
        drops = {
            r["label"][len("layers-") :]: tuned["in_domain"] - r["in_domain"]
            for r in rows
            if tuned and r["label"].startswith("layers-")
        }
        low = next((b for b in drops if b.split("-")[0] == "0"), None)
        if low is None:
            continue
        others = {b: d for b, d in drops.items() if b != low}
        rival = max(others, key=lambda b: others[b]) if others else None
        text = f"{cell}: layers {low} {_pts(-drops[low], None)}"
        if rival is not None:
            text += f" (worst other block: layers {rival} {_pts(-others[rival], None)})"
        lines.append(text)
        if rival is not None and others[rival] - drops[low] >= RESTORE_GAIN:
            signs.append(-1)
        else:
            signs.append(1 if drops[low] >= COLLAPSE_DROP else 0)
    return _verdict(claim, test, lines, signs, basis=_sweep_basis(params, items, "blocks"))


def _verdict(
    claim: str,
    test: str,
    lines: list[str],
    signs: list[int],
    any_positive: bool = False,
    basis: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """All evidence for (or any, with any_positive) → reproduced; all against → not; else
    inconclusive (also when the run has nothing to test it with)."""
    if not signs:
        verdict, lines = INCONCLUSIVE, ["this run has no data for it"]
    elif (any_positive and any(s > 0 for s in signs)) or all(s > 0 for s in signs):
        verdict = REPRODUCED
    elif all(s < 0 for s in signs):
        verdict = NOT
    else:
        verdict = INCONCLUSIVE
    return {
        "claim": claim,
        "verdict": verdict,
        "test": test,
        "evidence": lines,
        "basis": basis or _basis(None, None, None, ""),
    }


def basis_text(basis: dict[str, Any]) -> str:
    """One line for the report: what a verdict rests on."""
    parts = []
    if basis.get("seeds") is not None:
        parts.append(f"{basis['seeds']} seed{'s' if basis['seeds'] != 1 else ''}")
    if basis.get("items"):
        parts.append(f"{basis['items']} test items")
    head = " × ".join(parts) or "no data"
    if basis.get("detectable") is not None:
        return f"{head}; detectable ≥ {100 * basis['detectable']:.1f} points ({basis['how']})"
    return f"{head}; {basis['how']}" if basis.get("how") else head


def findings(data: dict[str, Any]) -> list[dict[str, Any]]:
    g, p = data["groups"], data["params"]
    base = data.get("base") or {}
    items = base.get("in_domain_n") or next(
        (c.get("in_domain_n") for c in data.get("cells", []) if c.get("in_domain_n")), None
    )
    return [
        peak_at_small_size(g, items),
        level_moves_accuracy(g, items),
        top1_holds_most(p),
        restoration_helps(p, items),
        heavy_restoration_collapses(p, items),
        lowest_layers_critical(p, items),
    ]
