"""The materialising reference for restoration: what the paper's code does, kept for checking.

Load both checkpoints whole, build each group's flat fp32 score vector, sort it stably (score,
then position), restore the first n = floor(N * k / 100). Memory grows with the model (two
models plus the flat vectors), and every k repeats the sort; :mod:`sftscope.params.restore`
must give the same weights bit for bit. Used by the tests and ``benchmarks/restore_bench.py``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file

from sftscope.params.diff import in_region, natural_key, relative_change
from sftscope.params.restore import group_of, random_scores
from sftscope.params.tensors import open_checkpoint


def load_all(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted({info.file for info in open_checkpoint(folder).tensors.values()})
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(f))
    return out


def reference_restore(
    base_dir: Path, tuned_dir: Path, ks: Iterable[float], scope: str = "global",
    strategy: str = "top", region: str = "paper", seed: int = 0,
) -> dict[float, dict[str, torch.Tensor]]:  # fmt: skip
    """Restored state dicts, one per k."""
    base, tuned = load_all(base_dir), load_all(tuned_dir)
    names = sorted((n for n in base if in_region(n, region)), key=natural_key)
    groups: dict[Hashable, list[str]] = {}
    for n in names:
        groups.setdefault(group_of(n, scope), []).append(n)
    scores = {}
    for n in names:
        r = relative_change(base[n], tuned[n])
        scores[n] = random_scores(n, r.shape, seed) if strategy == "random" else r
    out = {}
    for k in ks:
        restored = dict(tuned)
        for members in groups.values():
            flat = torch.cat([scores[n].flatten() for n in members])
            order = torch.sort(flat, descending=strategy != "bottom", stable=True).indices
            mask = torch.zeros(flat.numel(), dtype=torch.bool)
            mask[order[: math.floor(flat.numel() * k / 100)]] = True
            start = 0
            for n in members:
                m = mask[start : start + base[n].numel()].view(base[n].shape)
                restored[n] = torch.where(m, base[n], tuned[n])
                start += base[n].numel()
        out[k] = restored
    return out
