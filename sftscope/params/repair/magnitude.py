"""``magnitude``: keep the share d of each tensor's change largest in |Δ| and drop the rest, as
TIES trims a task vector (Yadav et al. 2023). Ties at the cut are taken in position order (a
stable sort), so the kept set is exact and reproducible."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sftscope.params.repair.base import RepairContext


class Magnitude:
    def prepare(self, ctx: RepairContext, strengths: Sequence[float]) -> None:
        pass

    def repaired(
        self, ctx: RepairContext, name: str, p: torch.Tensor, s: torch.Tensor, strength: float
    ) -> torch.Tensor:
        delta = (s - p).reshape(-1)
        n = round(strength * delta.numel())
        order = torch.sort(delta.abs(), descending=True, stable=True).indices
        keep = torch.zeros_like(delta, dtype=torch.bool)
        keep[order[:n]] = True
        return p + (delta * keep).reshape(p.shape)
