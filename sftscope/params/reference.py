"""The materialising reference for restoration: what the paper's code does, kept for checking.

Load both checkpoints whole, build each group's flat fp32 score vector, sort it stably (score,
then position), restore the first n = floor(N * k / 100). Memory grows with the model (two
models plus the flat vectors), and every k repeats the sort; :mod:`sftscope.params.restore`
must give the same weights bit for bit. Used by the tests and ``benchmarks/restore_bench.py``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file

from sftscope.params.diff import natural_key, relative_change
from sftscope.params.restore import group_of, random_scores
from sftscope.params.structure import structure_of
from sftscope.params.tensors import open_checkpoint


def load_all(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted({info.file for info in open_checkpoint(folder).tensors.values()})
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(f))
    return out


def _select(flat: torch.Tensor, n: int, descending: bool, method: str) -> torch.Tensor:
    """The first ``n`` of ``flat`` ranked by value (``descending`` or not), ties by index."""
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    if n == 0:
        return mask
    if method == "sort":  # the obvious way: a stable sort
        mask[torch.sort(flat, descending=descending, stable=True).indices[:n]] = True
        return mask
    # "kth": the n-th value by selection, then the lowest-index ties (less memory than a sort)
    t = torch.kthvalue(flat, flat.numel() - n + 1 if descending else n).values
    mask = flat > t if descending else flat < t
    ties = (flat == t).nonzero().flatten()
    mask[ties[: n - int(mask.sum())]] = True
    return mask


def reference_restore(
    base_dir: Path,
    tuned_dir: Path,
    ks: Iterable[float],
    scope: str = "global",
    strategy: str = "top",
    region: str = "paper",
    seed: int = 0,
    method: str = "sort",
) -> Iterator[tuple[float, dict[str, torch.Tensor]]]:
    """(k, restored state dict) for each k in turn; ``method`` "sort" or "kth" (same result)."""
    base, tuned = load_all(base_dir), load_all(tuned_dir)
    structure = structure_of(base_dir)
    names = sorted(structure.names(list(base), region), key=natural_key)
    groups: dict[Hashable, list[str]] = {}
    for n in names:
        groups.setdefault(group_of(n, scope, structure.role(n).layer), []).append(n)
    flats = {}
    for g, members in groups.items():
        parts = []
        for n in members:
            r = relative_change(base[n], tuned[n])
            parts.append((random_scores(n, r.shape, seed) if strategy == "random" else r).flatten())
        flats[g] = torch.cat(parts)
        del parts
    for k in ks:
        restored = dict(tuned)
        for g, members in groups.items():
            flat = flats[g]
            mask = _select(flat, math.floor(flat.numel() * k / 100), strategy != "bottom", method)
            start = 0
            for n in members:
                m = mask[start : start + base[n].numel()].view(base[n].shape)
                restored[n] = torch.where(m, base[n], tuned[n])
                start += base[n].numel()
            del mask
        yield k, restored
