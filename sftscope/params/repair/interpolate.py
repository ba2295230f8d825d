"""``interpolate``: WiSE-FT, the base plus a share α of the change, θ = p + α·(s − p); α = 1 is
the fine-tuned model, α = 0 the base (Wortsman et al. 2022)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sftscope.params.repair.base import RepairContext


class Interpolate:
    def prepare(self, ctx: RepairContext, strengths: Sequence[float]) -> None:
        pass

    def repaired(
        self, ctx: RepairContext, name: str, p: torch.Tensor, s: torch.Tensor, strength: float
    ) -> torch.Tensor:
        return p + strength * (s - p)
