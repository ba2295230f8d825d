"""``magnitude``: keep the share d of each tensor's change largest in |Δ| and drop the rest, as
TIES trims a task vector (Yadav et al. 2023). Ties at the cut are taken in position order (as a
stable sort would), so the kept set is exact and reproducible. The cut of every tensor at every
strength is found once per sweep (by selection, not a sort); a point then only compares."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sftscope.params.repair.base import RepairContext, RepairMethod


class Magnitude(RepairMethod):
    def __init__(self) -> None:
        self.cuts: dict[tuple[str, float], float] = {}

    def prepare(self, ctx: RepairContext, strengths: Sequence[float]) -> None:
        self.cuts = {}
        for name, p, s in ctx.pairs("magnitude: the cut of every tensor"):
            size = (s - p).abs().reshape(-1).cpu()
            for x in strengths:
                n = round(x * size.numel())
                if n:  # the n-th largest |Δ|
                    self.cuts[name, x] = float(torch.kthvalue(size, size.numel() - n + 1).values)

    def repaired(
        self, ctx: RepairContext, name: str, p: torch.Tensor, s: torch.Tensor, strength: float
    ) -> torch.Tensor:
        delta = (s - p).reshape(-1)
        n = round(strength * delta.numel())
        if n == 0:
            return p.clone()
        size, cut = delta.abs(), self.cuts[name, strength]
        keep = size > cut
        if cut > 0:  # ties at a zero cut are unchanged weights: keeping them changes nothing
            ties = (size == cut).nonzero().flatten()
            keep[ties[: n - int(keep.sum())]] = True
        return p + (delta * keep).reshape(p.shape)
