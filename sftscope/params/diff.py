"""Relative change of every weight (PAPER.md §7.1) and how concentrated it is (§7.2).

r_i = |s_i - p_i| / (|p_i| + 1e-8) in fp32, for the tensors of a region (the paper's: decoder
layer weights, norms excluded). Streamed tensor by tensor; the concentration table (share of the
total r held by the top k% of weights) is exact without a flat vector: pass 1 fills a histogram
of log10 r (counts and sums per bin), which brackets each k's threshold inside one bin; pass 2
collects only that bin's values and sorts them.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from sftscope.errors import SftscopeError
from sftscope.params.tensors import Checkpoint, check_compatible, iter_pairs

EPS = 1e-8
PAPER_K = (1, 3, 5, 10, 20, 40, 60)
REGIONS = ("paper", "attention", "mlp", "embedding", "all")
_LAYER = re.compile(r"\.layers\.(\d+)\.")
_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Histogram over log10 r: 1e-12 .. 1e12 in 4,800 bins (200 per decade); r below goes to bin 0.
_LO, _HI, _BINS = -12.0, 12.0, 4800


def layer_of(name: str) -> int | None:
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def module_of(name: str) -> str:
    return next((m for m in _MODULES if f".{m}." in f"{name}."), "other")


def in_region(name: str, region: str) -> bool:
    """The paper's region is every decoder-layer parameter except norms; ``re:PATTERN``
    selects tensors whose name matches the regular expression."""
    if region.startswith("re:"):
        return re.search(region[3:], name) is not None
    if region == "all":
        return True
    if region == "embedding":
        return "embed_tokens" in name or "lm_head" in name
    in_layers = layer_of(name) is not None and "norm" not in name
    if region == "paper":
        return in_layers
    if region == "attention":
        return in_layers and "self_attn" in name
    if region == "mlp":
        return in_layers and ".mlp." in name
    raise SftscopeError(f"region {region!r}: expected one of {', '.join(REGIONS)} or re:PATTERN")


def relative_change(base: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor:
    p, s = base.float(), tuned.float()
    return (s - p).abs() / (p.abs() + EPS)


def region_names(ckpt: Checkpoint, region: str) -> list[str]:
    names = [n for n in ckpt.names if in_region(n, region)]
    if not names:
        raise SftscopeError(f"region {region!r} selects no tensor of {ckpt.root}")
    return names


def _bins(r: torch.Tensor) -> torch.Tensor:
    x = torch.log10(r.double().clamp_min(10.0**_LO))
    return ((x - _LO) / (_HI - _LO) * _BINS).long().clamp(0, _BINS - 1)


def tensor_stats(name: str, base: torch.Tensor, tuned: torch.Tensor, r: torch.Tensor) -> dict:
    delta = tuned.float() - base.float()
    return {
        "tensor": name,
        "layer": layer_of(name),
        "module": module_of(name),
        "numel": r.numel(),
        "mean": float(r.double().mean()),
        "max": float(r.max()),
        "sum": float(r.double().sum()),
        "delta_l2": float(delta.double().norm()),
        "changed": int((delta != 0).sum()),
    }


def concentration(
    base: Checkpoint,
    tuned: Checkpoint,
    names: Sequence[str],
    ks: Iterable[float] = PAPER_K,
    each: Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
) -> dict[str, Any]:
    """Share of Σr held by the top k% of the region's weights, exactly, in two streamed passes.

    The top n_k = floor(N * k / 100) values are summed; ties do not matter for a sum.
    ``each(name, base, tuned, r)`` is called for every tensor during the first pass, so per-tensor
    statistics need no pass of their own."""
    counts = torch.zeros(_BINS, dtype=torch.float64)
    sums = torch.zeros(_BINS, dtype=torch.float64)
    for name, p, s in iter_pairs(base, tuned, names):
        r = relative_change(p, s)
        if each is not None:
            each(name, p, s, r)
        r = r.flatten()
        b = _bins(r)
        counts.index_add_(0, b, torch.ones_like(r, dtype=torch.float64))
        sums.index_add_(0, b, r.double())
    n, total = int(counts.sum()), float(sums.sum())
    # From the top bin down: how many values lie strictly above each bin.
    above_count = torch.flip(torch.cumsum(torch.flip(counts, [0]), 0), [0]) - counts
    above_sum = torch.flip(torch.cumsum(torch.flip(sums, [0]), 0), [0]) - sums
    want = {k: math.floor(n * k / 100) for k in ks}
    bracket = {}
    for k, nk in want.items():
        if nk == 0:
            continue
        b = int(((above_count < nk) & (above_count + counts >= nk)).nonzero()[-1])
        bracket[k] = b
    inside: dict[int, list[torch.Tensor]] = defaultdict(list)
    if bracket:
        needed = set(bracket.values())
        for _, p, s in iter_pairs(base, tuned, names):
            r = relative_change(p, s).flatten()
            b = _bins(r)
            for bin_id in needed:
                sel = r[b == bin_id]
                if sel.numel():
                    inside[bin_id].append(sel.double())
    rows = []
    for k, nk in want.items():
        if nk == 0:
            rows.append({"k": k, "count": 0, "share": 0.0, "threshold": None})
            continue
        b = bracket[k]
        vals = torch.sort(torch.cat(inside[b]), descending=True).values
        take = nk - int(above_count[b])
        top = float(above_sum[b]) + float(vals[:take].sum())
        rows.append({"k": k, "count": nk, "share": top / total if total else 0.0,
                     "threshold": float(vals[take - 1])})  # fmt: skip
    return {"n": n, "total": total, "rows": rows}


def run_diff(base_dir: Path, tuned_dir: Path, out: Path, region: str = "paper") -> dict[str, Any]:
    """``sftscope diff``: per-tensor TSV, per-layer / per-module JSON, concentration table."""
    from sftscope.io import atomic_write_json, atomic_write_text
    from sftscope.params.tensors import open_checkpoint

    base, tuned = open_checkpoint(base_dir), open_checkpoint(tuned_dir)
    check_compatible(base, tuned)
    names = region_names(base, region)
    stats: list[dict[str, Any]] = []

    def collect(name: str, p: torch.Tensor, s: torch.Tensor, r: torch.Tensor) -> None:
        row = tensor_stats(name, p, s, r)
        if not math.isfinite(row["sum"]):
            raise SftscopeError(f"tensor {name}: NaN or inf in the relative change")
        stats.append(row)

    conc = concentration(base, tuned, names, each=collect)

    def group(key: str) -> dict[str, Any]:
        out: dict[str, dict[str, float]] = {}
        for row in stats:
            g = out.setdefault(str(row[key]), {"numel": 0, "sum": 0.0, "max": 0.0})
            g["numel"] += row["numel"]
            g["sum"] += row["sum"]
            g["max"] = max(g["max"], row["max"])
        for g in out.values():
            g["mean"] = g["sum"] / g["numel"]
        return out

    cols = ("tensor", "layer", "module", "numel", "mean", "max", "sum", "delta_l2", "changed")
    tsv = (
        "\t".join(cols)
        + "\n"
        + "".join("\t".join(str(row[c]) for c in cols) + "\n" for row in stats)
    )
    atomic_write_text(Path(out) / "diff_summary.tsv", tsv)
    atomic_write_json(Path(out) / "concentration.json", {"region": region, **conc})
    summary = {"region": region, "tensors": len(stats), "per_layer": group("layer"),
               "per_module": group("module"), "concentration": conc["rows"]}  # fmt: skip
    atomic_write_json(Path(out) / "diff.json", summary)
    return summary
