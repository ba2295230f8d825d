"""Exact top-n / bottom-n selection over scores streamed tensor by tensor (PAPER.md §7).

Weights are ranked inside a *group* (the whole region, one layer, or one tensor) by a score (the
relative change, or a seeded random number), ties broken by position — lower first, positions
counting through the group's tensors in natural name order — so a selection is exactly the first
``n`` entries of a stable sort of the flattened group. No flat vector and no list of values is
ever built; scores are finite non-negative fp32 numbers, whose bit patterns order like their
values, so a two-level radix histogram finds every cut exactly:

1. :meth:`Ranking.count` — counts per high 15 bits of the pattern (128 bins per octave).
2. :meth:`Ranking.refine` — in the bin holding each wanted n-th entry (see :meth:`Ranking.plan`),
   counts per low 16 bits: one count per distinct fp32 value. The n-th value ``t`` and how many
   entries equal to ``t`` are selected (``ties``) follow exactly, in bounded memory even when
   millions of weights share a value (unchanged weights, r = 0).
3. :class:`Selector` — per tensor, in group order: entries beyond ``t``, plus the first of the
   entries equal to ``t`` while the cut's ties last.

Scores may live on any device (``compute_device``): the histograms are computed where the
scores are and accumulated on the CPU. Counts are integers, so the cuts are the same on every
device; only the optional fp64 sums may differ in their last bits (GPU atomics add in any order).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import torch

SHIFT = 16
NBINS = 1 << (31 - SHIFT)  # non-negative fp32 bit patterns are < 2**31
NSUB = 1 << SHIFT


def _bits(scores: torch.Tensor) -> torch.Tensor:
    return scores.contiguous().view(torch.int32).flatten().long()


@dataclass(frozen=True)
class Cut:
    """Which entries of one group a selection of ``n`` takes: every entry ranked beyond
    ``value``, and the first ``ties`` entries equal to it (in position order)."""

    n: int
    value: float | None  # the n-th entry's score (None when n is 0)
    ties: int
    total: float | None  # sum of the selected scores (when the ranking keeps sums)


class Ranking:
    """Streamed exact ranking of scores per group; ``descending`` for top-n (else bottom-n).

    Call :meth:`count` for every tensor, :meth:`plan` once, :meth:`refine` for every tensor,
    then :meth:`cuts`."""

    def __init__(self, descending: bool = True, sums: bool = False) -> None:
        self.descending = descending
        self.keep_sums = sums
        self.counts: dict[Hashable, torch.Tensor] = {}
        self.sums: dict[Hashable, torch.Tensor] = {}
        self._bin_of: dict[tuple[Hashable, int], int] = {}  # (group, n) -> bin holding the n-th
        self._sub: dict[tuple[Hashable, int], torch.Tensor] = {}  # (group, bin) -> value counts
        self._sub_sums: dict[tuple[Hashable, int], torch.Tensor] = {}

    def size(self, group: Hashable) -> int:
        return int(self.counts[group].sum())

    def _best_first(self, t: torch.Tensor) -> torch.Tensor:
        return t.flip(0) if self.descending else t

    def count(self, group: Hashable, scores: torch.Tensor) -> None:
        hi = _bits(scores) >> SHIFT
        if group not in self.counts:
            self.counts[group] = torch.zeros(NBINS, dtype=torch.long)
            if self.keep_sums:
                self.sums[group] = torch.zeros(NBINS, dtype=torch.float64)
        self.counts[group] += torch.bincount(hi, minlength=NBINS).cpu()
        if self.keep_sums:
            weights = scores.flatten().double()
            self.sums[group] += torch.bincount(hi, weights=weights, minlength=NBINS).cpu()

    def plan(self, wanted: dict[Hashable, Iterable[int]]) -> None:
        """For each group, the counts ``n`` to select; finds the bin holding each n-th entry."""
        for group, ns in wanted.items():
            cum = self._best_first(self.counts[group]).cumsum(0)
            for n in ns:
                if not 0 <= n <= int(cum[-1]):
                    raise ValueError(f"cannot select {n} of {int(cum[-1])} entries")
                if n:
                    j = int(torch.searchsorted(cum, n))  # first bin, from the best end, reaching n
                    b = NBINS - 1 - j if self.descending else j
                    self._bin_of[(group, n)] = b
                    self._sub.setdefault((group, b), torch.zeros(NSUB, dtype=torch.long))
                    if self.keep_sums:
                        self._sub_sums.setdefault(
                            (group, b), torch.zeros(NSUB, dtype=torch.float64)
                        )

    def refine(self, group: Hashable, scores: torch.Tensor) -> None:
        """Count, per distinct value, this tensor's entries inside the planned bins."""
        needed = [b for (g, b) in self._sub if g == group]
        if not needed:
            return
        bits = _bits(scores)
        hi = bits >> SHIFT
        inside = torch.isin(hi, torch.tensor(needed, device=hi.device)).nonzero().flatten()
        if not inside.numel():
            return
        hi_in, lo_in = hi[inside], bits[inside] & (NSUB - 1)
        values = scores.flatten()[inside].double() if self.keep_sums else None
        for b in needed:
            at = hi_in == b
            self._sub[(group, b)] += torch.bincount(lo_in[at], minlength=NSUB).cpu()
            if values is not None:
                self._sub_sums[(group, b)] += torch.bincount(lo_in[at], weights=values[at],
                                                             minlength=NSUB).cpu()  # fmt: skip

    def cuts(self) -> dict[tuple[Hashable, int], Cut]:
        """The cut of every planned (group, n)."""
        out: dict[tuple[Hashable, int], Cut] = {}
        for (group, n), b in self._bin_of.items():
            counts = self.counts[group]
            j = NBINS - 1 - b if self.descending else b  # bins ranked before b
            before = int(self._best_first(counts)[:j].sum())
            sub = self._best_first(self._sub[(group, b)])
            cum = sub.cumsum(0)
            i = int(torch.searchsorted(cum, n - before))  # sub-bin (one value) reaching n
            low = NSUB - 1 - i if self.descending else i
            value = torch.tensor([(b << SHIFT) | low], dtype=torch.int32).view(torch.float32)
            ties = n - before - (int(cum[i - 1]) if i else 0)
            total = None
            if self.keep_sums:
                sums = self._best_first(self._sub_sums[(group, b)])
                total = (float(self._best_first(self.sums[group])[:j].sum())
                         + float(sums[:i].sum()) + float(value) * ties)  # fmt: skip
            out[(group, n)] = Cut(n, float(value), ties, total)
        return out


class Selector:
    """Applies cuts tensor by tensor; tensors of a group must come in position order, since
    the entries equal to a cut's value are taken first-come while its ties last."""

    def __init__(self, descending: bool) -> None:
        self.descending = descending
        self.ties_left: dict[Hashable, int] = {}

    def mask(self, key: Hashable, scores: torch.Tensor, cut: Cut) -> torch.Tensor:
        """Boolean mask (scores' shape) of the entries ``cut`` selects; ``key`` names the
        (selection, group) whose tie budget this tensor draws on."""
        if cut.n == 0:
            return torch.zeros_like(scores, dtype=torch.bool)
        flat = scores.flatten()
        value = torch.tensor(cut.value, dtype=flat.dtype, device=flat.device)
        sel = flat > value if self.descending else flat < value
        left = self.ties_left.setdefault(key, cut.ties)
        if left:
            ties = (flat == value).nonzero().flatten()[:left]
            sel[ties] = True
            self.ties_left[key] = left - ties.numel()
        return sel.view(scores.shape)
