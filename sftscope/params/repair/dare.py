"""``dare``: drop a random share p of each tensor's change and rescale the rest by 1/(1 − p),
so the expected change is kept (Yu et al. 2024). The draws are seeded per tensor name (the
run's ``seed``), the same on any device and in any order."""

from __future__ import annotations

import torch

from sftscope.params.repair.base import RepairContext, RepairMethod


class Dare(RepairMethod):
    def repaired(
        self, ctx: RepairContext, name: str, p: torch.Tensor, s: torch.Tensor, strength: float
    ) -> torch.Tensor:
        keep = torch.rand(p.shape, generator=ctx.generator(name)) >= strength
        return p + (s - p) * keep.to(p.device) / (1.0 - strength)
