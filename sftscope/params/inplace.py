"""Restoration in place (``restore --eval --no-save``, the grid's default): the fine-tuned
model is loaded once on the evaluation device, the selection computed once (the ranking passes
of :class:`~sftscope.params.restore.Restorer`), and for each output every region tensor of
the loaded model is overwritten with ``torch.where(mask, base, tuned)`` and the model
evaluated. Each tensor is written whole from the two checkpoints, so the next output needs no
undo step and one output can never leak into the next. No checkpoint is written: a sweep costs
one model load instead of a write and a load per k.

The restored weights equal those the written path would save, element for element: the same
masks (each output's tensors visited in the same natural order, so the same tie budgets), and
``torch.where(mask, base, tuned)`` in the checkpoint's dtype before the cast to the model's,
exactly what loading the written checkpoint does. Memory: the model plus one tensor pair and
its mask at a time.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from sftscope.errors import SftscopeError
from sftscope.params.diff import checked, natural_key, relative_change
from sftscope.params.restore import Output, Restorer
from sftscope.params.tensors import read_tensor


class InPlace:
    """Puts one output's selection into a loaded model (replacing the previous one's)."""

    def __init__(self, restorer: Restorer) -> None:
        self.restorer = restorer
        self.weights: dict[str, torch.Tensor] | None = None
        self.counted: set[str] = set()  # outputs applied (their statistics in restorer.rows)

    def attach(self, model: torch.nn.Module) -> None:
        """The loaded model whose weights ``apply`` changes (loaded only if an eval is due)."""
        r = self.restorer
        state = model.state_dict(keep_vars=True)
        missing = [n for n in r.names if n not in state]
        if missing:
            raise SftscopeError(f"{r.tuned.root}: tensor {missing[0]} of the region is not a "
                                "weight of the loaded model; restore with save: true")  # fmt: skip
        owners: dict[int, str] = {}
        region = set(r.names)
        for name, t in state.items():  # a tied region weight would change its twin as well
            other = owners.setdefault(t.data_ptr(), name)
            if other != name and (name in region or other in region):
                raise SftscopeError(f"{r.tuned.root}: {name} and {other} share one weight in the "
                                    "loaded model; restore with save: true")  # fmt: skip
        self.weights = {n: state[n] for n in r.names}

    def _tensors(self, desc: str):
        return tqdm(self.restorer.names, desc=desc, unit="tensor", leave=False)

    def apply(self, out: Output, patch: bool = True) -> None:
        """``out``'s selected base values into the model (``patch=False``: only its statistics,
        for an output whose evaluations are already done)."""
        r = self.restorer
        if out.label in self.counted:  # the tie budgets of its selection are spent
            raise ValueError(f"{out.label}: applied twice")
        first = not self.counted
        for name in self._tensors(f"restore in place: {out.label}"):
            p = read_tensor(r.base, name).to(r.device)
            s = read_tensor(r.tuned, name).to(r.device)
            rc = relative_change(p, s)
            if r.cfg.layers and first:
                checked(name, rc)
            tensor_r = float(rc.sum())
            if first:
                r.total_r += tensor_r
            mask = r._mask(out, name, r._scores(name, rc))
            r._account(out, name, rc, mask, tensor_r)
            if patch:
                assert self.weights is not None, "attach() a model first"
                w = self.weights[name]
                with torch.no_grad():
                    w.copy_(torch.where(mask, p, s).to(w.device, w.dtype))
        self.counted.add(out.label)

    def rows(self) -> list[dict]:
        """The per-output, per-tensor statistics in the written path's order (tensor-major)."""
        order = {o.label: i for i, o in enumerate(self.restorer.outputs)}
        return sorted(
            self.restorer.rows, key=lambda row: (natural_key(row["tensor"]), order[row["output"]])
        )
