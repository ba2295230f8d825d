"""Restoration in place (``restore --eval --no-save``, the grid's default): the fine-tuned
model is loaded once on the evaluation device and no checkpoint is written, so a sweep costs
one model load instead of a write and a load per output.

The selection is computed once, by the written path's own arithmetic: the ranking passes of
:class:`~sftscope.params.restore.Restorer`, then its third pass without the writing, which
keeps, per weight, the one-byte code of :meth:`~sftscope.params.restore.Restorer.codes`: the
first output, in ascending k, that restores it. A k sweep's selections are nested (the entries
of a smaller k are the first of a larger one's, in the same total order of score then
position), so restoring output j in place only copies the base values of the weights whose
code is j into the model that holds output j - 1. Layer blocks copy whole tensors: the base
ones of the block, the tuned ones of the block before. The restored weights equal, element for
element, what the written path saves and loading casts (``where(code <= j, base, tuned)`` in
the checkpoint's dtype, cast to the model's).
Memory: the model, one byte per region weight on the CPU, and one tensor pair at a time.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from sftscope.errors import SftscopeError
from sftscope.params.restore import Output, Restorer
from sftscope.params.tensors import read_tensor


def region_weights(
    model: torch.nn.Module, names: list[str], root: Path, otherwise: str
) -> dict[str, torch.Tensor]:
    """The loaded model's weights of the region ``names``, to edit in place; one error line
    (ending with ``otherwise``, what to do instead) when one is not a weight of the model
    (fused or renamed on loading) or shares its storage with another (tied: editing it would
    change its twin as well)."""
    state = model.state_dict(keep_vars=True)
    missing = [n for n in names if n not in state]
    if missing:
        raise SftscopeError(
            f"{root}: tensor {missing[0]} of the region is not a weight of the loaded model; "
            + otherwise
        )
    owners: dict[int, str] = {}
    region = set(names)
    for name, t in state.items():
        other = owners.setdefault(t.data_ptr(), name)
        if other != name and (name in region or other in region):
            raise SftscopeError(
                f"{root}: {name} and {other} share one weight in the loaded model; " + otherwise
            )
    return {n: state[n] for n in names}


class InPlace:
    """Puts the outputs of one restore into a loaded model, one after another."""

    def __init__(self, restorer: Restorer) -> None:
        self.restorer = restorer
        self.weights: dict[str, torch.Tensor] | None = None
        self.order = restorer.order
        self.rank = {o.label: j for j, o in enumerate(self.order)}
        self.codes: dict[str, torch.Tensor] = {}
        self.current = -1  # rank of the output the model holds (-1: the tuned model)

    def prepare(self) -> None:
        """Pass 3 without writing: every output's statistics, and the codes of a k sweep."""
        r = self.restorer
        for name, p, s in r.pairs("restore in place: select", device=r.device):
            code = r.codes(name, p, s)
            if code is not None:  # (layer blocks: whole tensors, nothing to keep)
                self.codes[name] = code.cpu()
        r.check_counts()

    def attach(self, model: torch.nn.Module) -> None:
        """The loaded (fine-tuned) model whose weights ``apply`` changes."""
        r = self.restorer
        self.weights = region_weights(model, r.names, r.tuned.root, "restore with save: true")

    def apply(self, out: Output) -> None:
        """Make the model hold ``out``; the outputs of a k sweep go in ascending k."""
        assert self.weights is not None, "attach() a model first"
        j, r = self.rank[out.label], self.restorer
        if r.cfg.layers:
            before = self.order[self.current].block if self.current >= 0 else None
            for name in self._each(out.label):
                now = r.in_block(name, out.block)
                if now != r.in_block(name, before):
                    self._copy(name, read_tensor(r.base if now else r.tuned, name))
        else:
            if j <= self.current:
                raise ValueError(f"{out.label}: a k sweep is restored in ascending k")
            for name in self._each(out.label):
                code = self.codes[name]
                if j == self.current + 1:  # the usual step: only this output's own weights
                    take = code == j
                else:  # (after outputs skipped because their evals were done)
                    take = (code <= j) & (code > self.current) if self.current >= 0 else code <= j
                if bool(take.any()):  # (where + copy: several times faster than w[take] = …)
                    w = self.weights[name]
                    p = read_tensor(r.base, name).to(w.device, w.dtype)
                    with torch.no_grad():
                        w.copy_(torch.where(take.to(w.device), p, w))
        self.current = j

    def _each(self, label: str):
        return tqdm(
            self.restorer.names, desc=f"restore in place: {label}", unit="tensor", leave=False
        )

    def _copy(self, name: str, values: torch.Tensor) -> None:
        assert self.weights is not None
        w = self.weights[name]
        with torch.no_grad():
            w.copy_(values.to(w.device, w.dtype))
