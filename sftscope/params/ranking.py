"""Exact top-n / bottom-n selection over scores streamed tensor by tensor (docs/method.md §7).

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

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

SHIFT = 16
NBINS = 1 << (31 - SHIFT)  # non-negative fp32 bit patterns are < 2**31
NSUB = 1 << SHIFT


def _bits(scores: torch.Tensor) -> torch.Tensor:
    return scores.contiguous().view(torch.int32).flatten()  # (int32: bincount takes it as is)


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
        self._present: dict[tuple[Hashable, int], np.ndarray] = {}  # (tensor, bin) -> bits

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

    def refine(self, group: Hashable, scores: torch.Tensor, tensor: Hashable = None) -> None:
        """Count, per distinct value, this tensor's entries inside the planned bins; with a
        ``tensor`` name, also keep which values it holds there (8 KiB per tensor and bin), so
        :meth:`holds` can tell later whether it holds a cut's value."""
        needed = [b for (g, b) in self._sub if g == group]
        if not needed:
            return
        bits = _bits(scores)
        hi = bits >> SHIFT
        wanted = torch.tensor(needed, dtype=hi.dtype, device=hi.device)
        inside = torch.isin(hi, wanted).nonzero().flatten()
        if not inside.numel():
            return
        hi_in, lo_in = hi[inside], bits[inside] & (NSUB - 1)
        values = scores.flatten()[inside].double() if self.keep_sums else None
        for b in needed:
            at = hi_in == b
            counts = torch.bincount(lo_in[at], minlength=NSUB).cpu()
            self._sub[(group, b)] += counts
            if tensor is not None and bool(counts.any()):
                self._present[(tensor, b)] = np.packbits(counts.numpy() > 0)
            if values is not None:
                self._sub_sums[(group, b)] += torch.bincount(
                    lo_in[at], weights=values[at], minlength=NSUB
                ).cpu()

    def holds(self, tensor: Hashable, value: float) -> bool:
        """Whether ``tensor`` (refined under that name) holds an entry equal to ``value``, the
        value of one of the planned cuts."""
        bits = int(torch.tensor([value], dtype=torch.float32).view(torch.int32))
        packed = self._present.get((tensor, bits >> SHIFT))
        lo = bits & (NSUB - 1)
        return packed is not None and bool((packed[lo >> 3] >> (7 - (lo & 7))) & 1)

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
                total = (
                    float(self._best_first(self.sums[group])[:j].sum())
                    + float(sums[:i].sum())
                    + float(value) * ties
                )
            out[(group, n)] = Cut(n, float(value), ties, total)
        return out


class Selector:
    """Applies cuts tensor by tensor; tensors of a group must come in position order, since
    the entries equal to a cut's value are taken first-come while its ties last."""

    def __init__(self, descending: bool) -> None:
        self.descending = descending
        self.ties_left: dict[Hashable, int] = {}

    def codes(
        self,
        cuts: Sequence[tuple[Hashable, Cut]],
        scores: torch.Tensor,
        holds: Callable[[float], bool] | None = None,
    ) -> torch.Tensor:
        """Per entry of ``scores``, the index in ``cuts`` of the first cut selecting it, as
        uint8 (``len(cuts)``: none). ``cuts`` are ``(key, cut)`` of one group in ascending
        ``n``: each selection is the first ``n`` of one order (score, then position), so each
        holds the one before, and one code per entry says which selections take it. ``key``
        names the tie budget this tensor draws on; ``holds(value)`` may say that the tensor
        has no entry equal to a cut's value, which saves looking for one.

        The cuts an entry is not strictly beyond form a prefix, so counting them gives the
        code: one comparison per cut. Entries equal to a cut's value are then taken first-come
        while the cut's ties last (in position order, across the group's tensors)."""
        flat = scores.flatten()
        code = torch.zeros(flat.shape, dtype=torch.uint8, device=flat.device)
        short = torch.empty(flat.shape, dtype=torch.bool, device=flat.device)
        for _, cut in cuts:
            if not cut.n:  # takes nothing
                code.add_(1)
                continue
            (torch.le if self.descending else torch.ge)(flat, cut.value, out=short)
            code.add_(short)
        for j, (key, cut) in enumerate(cuts):
            left = self.ties_left.setdefault(key, cut.ties)
            if not left or (holds is not None and not holds(cut.value)):
                continue
            ties = torch.eq(flat, cut.value, out=short).nonzero().flatten()[:left]
            code[ties] = torch.clamp(code[ties], max=j)
            self.ties_left[key] = left - ties.numel()
        return code.view(scores.shape)
