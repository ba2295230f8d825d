"""``interpolate``: WiSE-FT, the base plus a share α of the change, θ = p + α·(s − p); α = 1 is
the fine-tuned model, α = 0 the base (Wortsman et al. 2022)."""

from __future__ import annotations

import torch

from sftscope.params.repair.base import RepairContext, RepairMethod


class Interpolate(RepairMethod):
    def repaired(
        self, ctx: RepairContext, name: str, p: torch.Tensor, s: torch.Tensor, strength: float
    ) -> torch.Tensor:
        return p + strength * (s - p)
