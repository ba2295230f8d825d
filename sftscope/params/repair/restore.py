"""``restore``: the paper's repair (docs/method.md §7.3), the top k % most-changed weights of the
region (one global ranking by relative change) back to their base values. The selection is the
restore stage's own (:class:`~sftscope.params.restore.Restorer`: exact cuts, nested over k), made
once for all the k of a sweep; each weight keeps a one-byte code, the first k that restores it."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sftscope.config import RestoreSettings
from sftscope.params.repair.base import RepairContext, RepairMethod
from sftscope.params.restore import Restorer


class Restore(RepairMethod):
    def __init__(self) -> None:
        self.codes: dict[str, torch.Tensor] = {}
        self.rank: dict[float, int] = {}

    def prepare(self, ctx: RepairContext, strengths: Sequence[float]) -> None:
        settings = RestoreSettings(k=sorted(set(strengths)), region=ctx.region, seed=ctx.seed)
        restorer = Restorer(settings, ctx.base, ctx.tuned, ctx.device)
        restorer.select()
        self.rank = {o.k: j for j, o in enumerate(restorer.order) if o.k is not None}
        for name, p, s in restorer.pairs("restore: select", device=ctx.device):
            self.codes[name] = restorer.codes(name, p, s).cpu()
        restorer.check_counts()

    def repaired(
        self, ctx: RepairContext, name: str, p: torch.Tensor, s: torch.Tensor, strength: float
    ) -> torch.Tensor:
        take = self.codes[name] <= self.rank[strength]
        return torch.where(take.to(p.device), p, s)
