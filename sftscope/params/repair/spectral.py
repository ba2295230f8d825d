"""``spectral``: keep the top share r of each matrix's singular directions of its change,
Δ ≈ U_k·diag(S_k)·V_kᵀ with k = round(r·min(m, n)), a low-rank filter of what fine-tuning
wrote. The SVD of each matrix is computed once for every strength of a sweep (its factors up to
the largest k are kept on the CPU); tensors that are not matrices keep their change."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sftscope.params.repair.base import RepairContext, RepairMethod


def rank_of(strength: float, shape: Sequence[int]) -> int:
    return round(strength * min(shape))


class Spectral(RepairMethod):
    def __init__(self) -> None:
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def prepare(self, ctx: RepairContext, strengths: Sequence[float]) -> None:
        self.factors = {}
        for name, p, s in ctx.pairs("spectral: SVD of every change"):
            if p.dim() != 2:
                continue
            k = rank_of(max(strengths), p.shape)
            u, sv, vh = torch.linalg.svd(s - p, full_matrices=False)
            self.factors[name] = ((u[:, :k] * sv[:k]).cpu(), vh[:k].cpu())

    def repaired(
        self, ctx: RepairContext, name: str, p: torch.Tensor, s: torch.Tensor, strength: float
    ) -> torch.Tensor | None:
        if name not in self.factors:
            return None
        us, vh = self.factors[name]
        k = rank_of(strength, p.shape)
        return p + us[:, :k].to(p.device) @ vh[:k].to(p.device)
