"""Exact top-n / bottom-n selection over scores streamed tensor by tensor (PAPER.md §7).

Weights are ranked inside a *group* (the whole region, one layer, or one tensor) by a score (the
relative change, or a seeded random number), ties broken by position — the flat index in the
group's tensor order, lower first — so a selection is exactly the first ``n`` entries of a stable
sort of the flattened group. No flat vector is ever built; three streamed passes instead:

1. :meth:`Ranking.count` — a histogram of each group's scores. Scores are finite non-negative
   fp32 numbers, whose bit patterns order like their values, so ``bits >> 16`` is a monotone
   bin index (128 bins per octave) at the cost of a shift.
2. :meth:`Ranking.collect` — the scores and positions inside the one bin that holds each
   wanted ``n``-th entry (after :meth:`Ranking.plan`).
3. :meth:`Ranking.mask` — per tensor, the selected entries: a score beyond the cut's, or equal
   to it at a position up to the cut's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import torch

SHIFT = 16
NBINS = 1 << (31 - SHIFT)  # non-negative fp32 bit patterns are < 2**31


def bins_of(scores: torch.Tensor) -> torch.Tensor:
    """Monotone bin of each (finite, non-negative, fp32) score."""
    return (scores.contiguous().view(torch.int32) >> SHIFT).long()


@dataclass(frozen=True)
class Cut:
    """The last selected entry of one (group, n): every entry ranked before it is selected."""

    n: int
    value: float | None  # its score (None when n is 0)
    position: int  # its position in the group (-1 when n is 0)
    total: float | None  # sum of the selected scores (when the ranking keeps sums)


class Ranking:
    """Streamed exact ranking of scores per group; ``descending`` for top-n (else bottom-n).

    Call :meth:`count` for every tensor, :meth:`plan` once, :meth:`collect` for every tensor
    (same tensors, same order, same positions), then :meth:`cuts` and :meth:`mask`."""

    def __init__(self, descending: bool = True, sums: bool = False) -> None:
        self.descending = descending
        self.keep_sums = sums
        self.counts: dict[Hashable, torch.Tensor] = {}
        self.sums: dict[Hashable, torch.Tensor] = {}
        self._need: dict[Hashable, dict[int, int]] = defaultdict(dict)  # group -> n -> bin
        self._before: dict[tuple[Hashable, int], int] = {}
        self._found: dict[tuple[Hashable, int], list[tuple[torch.Tensor, torch.Tensor]]] = (
            defaultdict(list)
        )

    def size(self, group: Hashable) -> int:
        return int(self.counts[group].sum())

    def count(self, group: Hashable, scores: torch.Tensor) -> None:
        b = bins_of(scores).flatten()
        if group not in self.counts:
            self.counts[group] = torch.zeros(NBINS, dtype=torch.long)
            if self.keep_sums:
                self.sums[group] = torch.zeros(NBINS, dtype=torch.float64)
        self.counts[group] += torch.bincount(b, minlength=NBINS)
        if self.keep_sums:
            weights = scores.flatten().double()
            self.sums[group] += torch.bincount(b, weights=weights, minlength=NBINS)

    def _from_best(self, t: torch.Tensor) -> torch.Tensor:
        return t.flip(0) if self.descending else t

    def plan(self, wanted: dict[Hashable, Iterable[int]]) -> None:
        """For each group, the counts ``n`` to select; finds the bin holding each n-th entry."""
        for group, ns in wanted.items():
            ordered = self._from_best(self.counts[group])
            cum = ordered.cumsum(0)
            for n in ns:
                if not 0 <= n <= int(cum[-1]):
                    raise ValueError(f"cannot select {n} of {int(cum[-1])} entries")
                if n == 0:
                    continue
                j = int(torch.searchsorted(cum, n))  # first bin (from the best end) reaching n
                self._need[group][n] = NBINS - 1 - j if self.descending else j
                self._before[(group, n)] = int(cum[j] - ordered[j])

    def collect(self, group: Hashable, scores: torch.Tensor, offset: int) -> None:
        """Keep this tensor's entries in the planned bins; ``offset`` = its first position."""
        if not self._need.get(group):
            return
        flat = scores.flatten()
        b = bins_of(flat)
        for bin_id in set(self._need[group].values()):
            where = (b == bin_id).nonzero().flatten()
            if where.numel():
                self._found[(group, bin_id)].append((flat[where], where + offset))

    def cuts(self) -> dict[tuple[Hashable, int], Cut]:
        """The cut of every planned (group, n), and (n = 0) trivial cuts."""
        out: dict[tuple[Hashable, int], Cut] = {}
        for group, needs in self._need.items():
            for n, bin_id in needs.items():
                found = self._found[(group, bin_id)]
                values = torch.cat([v for v, _ in found])
                positions = torch.cat([p for _, p in found])  # ascending: collected in order
                order = torch.sort(values, descending=self.descending, stable=True).indices
                take = n - self._before[(group, n)]
                last = order[take - 1]
                total = None
                if self.keep_sums:
                    better = self._from_best(self.sums[group])[: self._bins_before(bin_id)]
                    total = float(better.sum()) + float(values[order[:take]].double().sum())
                out[(group, n)] = Cut(n, float(values[last]), int(positions[last]), total)
        return out

    def _bins_before(self, bin_id: int) -> int:
        """How many bins rank before ``bin_id`` (from the best end)."""
        return NBINS - 1 - bin_id if self.descending else bin_id

    def mask(self, scores: torch.Tensor, offset: int, cut: Cut) -> torch.Tensor:
        """Boolean mask (scores' shape) of the entries this cut selects."""
        if cut.n == 0:
            return torch.zeros_like(scores, dtype=torch.bool)
        flat = scores.flatten()
        value = torch.tensor(cut.value, dtype=flat.dtype)
        sel = flat > value if self.descending else flat < value
        ties = (flat == value).nonzero().flatten()
        sel[ties[ties + offset <= cut.position]] = True
        return sel.view(scores.shape)
