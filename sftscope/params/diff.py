"""Relative change of every weight (docs/method.md §7.1) and how concentrated it is (§7.2).

Which tensors a region holds, and each tensor's layer, block, module and expert, come from the
architecture (:mod:`sftscope.params.structure`), so the tables read the same on LLaMA, GPT-2,
GPT-NeoX, Phi-3 or a mixture of experts.

r_i = |s_i - p_i| / (|p_i| + 1e-8) in fp32, for the tensors of a region (the paper's: decoder
layer weights, norms excluded). Streamed tensor by tensor; the concentration table (share of the
total r held by the top k% of weights) is exact without a flat vector: two streamed histogram
passes find each k's threshold value (:mod:`sftscope.params.ranking`). With a ``device``
(``compute_device: cuda``) the arithmetic runs there, tensor pair by tensor pair; the statistics
come back as Python numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from sftscope.config import PAPER_K, DiffConfig
from sftscope.errors import SftscopeError
from sftscope.layout import CONCENTRATION, DIFF, DIFF_TSV
from sftscope.params.ranking import Ranking
from sftscope.params.structure import Role, Structure, structure_of
from sftscope.params.tensors import Checkpoint, check_compatible, iter_pairs

EPS = 1e-8


def natural_key(name: str) -> list:
    """Sort key putting ``layers.2`` before ``layers.10``: the canonical tensor order of a
    ranking's positions, independent of how a checkpoint is sharded."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)
    ]


def relative_change(base: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor:
    p, s = base.float(), tuned.float()
    d = (s - p).abs_()  # in place where possible: two temporaries instead of four
    return d.div_(p.abs().add_(EPS))


def region_names(ckpt: Checkpoint, region: str, structure: Structure | None = None) -> list[str]:
    """The checkpoint's tensors in ``region`` (see :mod:`sftscope.params.structure`)."""
    structure = structure or structure_of(ckpt.config_root)
    names = structure.names(ckpt.names, region)
    if not names:
        raise SftscopeError(f"region {region!r} selects no tensor of {ckpt.root}")
    return names


def tensor_stats(
    name: str, role: Role, module: str, base: torch.Tensor, tuned: torch.Tensor, r: torch.Tensor
) -> dict:
    delta = tuned.float() - base.float()
    return {
        "tensor": name,
        "layer": role.layer,
        "block": role.block,
        "module": module,
        "expert": role.expert,
        "numel": r.numel(),
        "mean": float(r.double().mean()),
        "max": float(r.max()),
        "sum": float(r.double().sum()),
        "delta_l2": float(delta.double().norm()),
        "changed": int((delta != 0).sum()),
        # weights whose base value is exactly 0 get r = |delta| / 1e-8: a few can dominate Σr
        "zero_base": int((base == 0).sum()),
        "zero_base_sum": float(r[base == 0].double().sum()),
    }


def concentration(
    base: Checkpoint,
    tuned: Checkpoint,
    names: Sequence[str],
    ks: Iterable[float] = PAPER_K,
    each: Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
    nonzero_base: bool = False,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Share of Σr held by the top k% of the region's weights, exactly, in two streamed passes
    (see :mod:`sftscope.params.ranking`); with ``nonzero_base``, of the weights whose base value
    is not exactly 0 (their r = |Δ|/1e-8 can swamp everything else). Both are ranked in the
    same passes: the one not asked for is returned under ``other``.

    The top n_k = floor(N * k / 100) values are summed; ties do not matter for a sum.
    ``each(name, base, tuned, r)`` is called for every tensor during the first pass, so per-tensor
    statistics need no pass of their own."""

    groups = ("all", "nonzero")  # every weight; the weights whose base value is not 0

    def count(p: torch.Tensor, r: torch.Tensor, step) -> None:
        step("all", r)
        step("nonzero", r[p != 0])

    ranking = Ranking(descending=True, sums=True)
    for name, p, s in iter_pairs(base, tuned, names, device):
        r = relative_change(p, s)
        if each is not None:
            each(name, p, s, r)
        count(p, checked(name, r), ranking.count)
    want = {g: {k: math.floor(ranking.size(g) * k / 100) for k in ks} for g in groups}
    ranking.plan({g: set(want[g].values()) for g in groups})
    if any(n for g in groups for n in want[g].values()):
        for _, p, s in iter_pairs(base, tuned, names, device):
            count(p, relative_change(p, s), ranking.refine)
    cuts = ranking.cuts()

    def table(g: str) -> dict[str, Any]:
        n, total = ranking.size(g), float(ranking.sums[g].sum())
        rows = []
        for k, nk in want[g].items():
            if nk == 0:
                rows.append({"k": k, "count": 0, "share": 0.0, "threshold": None})
                continue
            cut = cuts[(g, nk)]
            rows.append(
                {
                    "k": k,
                    "count": nk,
                    "share": cut.total / total if total else 0.0,
                    "threshold": cut.value,
                }
            )
        return {"n": n, "total": total, "rows": rows}

    main, other = ("nonzero", "all") if nonzero_base else ("all", "nonzero")
    return {**table(main), "other": table(other)}


def checked(name: str, r: torch.Tensor) -> torch.Tensor:
    """``r`` itself; a NaN or inf (from a NaN/inf weight) is an error naming the tensor."""
    if not bool(torch.isfinite(r).all()):
        raise SftscopeError(f"tensor {name}: NaN or inf in the relative change")
    return r


def run_diff(cfg: DiffConfig) -> dict[str, Any]:
    """The ``sftscope diff`` stage: :func:`diff_checkpoints` of ``cfg.base`` (a path, hub id or
    ``smollm2``) and ``cfg.tuned``; the device is checked before the base is resolved."""
    from sftscope.models.loading import resolve_device, resolve_model

    resolve_device(cfg.compute_device, "--compute-device")
    return diff_checkpoints(
        Path(resolve_model(cfg.base)),
        cfg.tuned,
        cfg.out,
        cfg.region,
        cfg.nonzero_base,
        cfg.compute_device,
    )


def diff_checkpoints(
    base_dir: Path,
    tuned_dir: Path,
    out: Path,
    region: str = "paper",
    nonzero_base: bool = False,
    compute_device: str = "cpu",
) -> dict[str, Any]:
    """Per-tensor TSV, per-layer / per-module JSON and the concentration table of two
    checkpoint folders; ``compute_device`` (auto, cpu, cuda[:N]) is where the arithmetic runs."""
    from sftscope.io import atomic_write_json, atomic_write_text, tsv_text
    from sftscope.models.loading import resolve_device
    from sftscope.params.lora import open_weights

    device = resolve_device(compute_device, "--compute-device")
    base, tuned = open_weights(base_dir), open_weights(tuned_dir, base=base_dir)
    check_compatible(base, tuned)
    structure = structure_of(base.config_root)
    names = region_names(base, region, structure)
    modules = structure.modules_of(names)
    stats: list[dict[str, Any]] = []

    def collect(name: str, p: torch.Tensor, s: torch.Tensor, r: torch.Tensor) -> None:
        role = structure.role(name)
        stats.append(tensor_stats(name, role, modules[name], p, s, checked(name, r)))

    conc = concentration(base, tuned, names, each=collect, nonzero_base=nonzero_base, device=device)

    def group(key: str) -> dict[str, Any]:
        out: dict[str, dict[str, float]] = {}
        for row in stats:
            if row[key] is None and key == "expert":  # (not an expert's tensor)
                continue
            g = out.setdefault(str(row[key]), {"numel": 0, "sum": 0.0, "max": 0.0})
            g["numel"] += row["numel"]
            g["sum"] += row["sum"]
            g["max"] = max(g["max"], row["max"])
        for g in out.values():
            g["mean"] = g["sum"] / g["numel"]
        return out

    cols = (
        "tensor",
        "layer",
        "block",
        "module",
        "expert",
        "numel",
        "mean",
        "max",
        "sum",
        "delta_l2",
        "changed",
        "zero_base",
        "zero_base_sum",
    )
    atomic_write_text(Path(out) / DIFF_TSV, tsv_text(cols, stats))
    total = conc["other"]["total"] if nonzero_base else conc["total"]  # over every weight
    zero = {
        "weights": sum(row["zero_base"] for row in stats),
        "share_of_r": sum(row["zero_base_sum"] for row in stats) / total if total else 0.0,
    }
    atomic_write_json(
        Path(out) / CONCENTRATION,
        {"region": region, "nonzero_base": nonzero_base, "zero_base": zero, **conc},
    )
    summary = {
        "region": region,
        "tensors": len(stats),
        "weights": conc["n"],
        "zero_base": zero,
        "per_layer": group("layer"),
        "per_block": group("block"),
        "per_module": group("module"),
        "per_expert": group("expert"),
        "nonzero_base": nonzero_base,
        "concentration": conc["rows"],
    }
    atomic_write_json(Path(out) / DIFF, summary)
    return summary
