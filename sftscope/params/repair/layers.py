"""``layers``: a block of consecutive decoder layers restored entirely to its base weights (the
paper's Table 11 restores 4-layer blocks, §7.5), the strength being the block's first layer.
The default grid is every block of ``WIDTH`` layers from layer 0, from the model's depth."""

from __future__ import annotations

import torch

from sftscope.errors import SftscopeError
from sftscope.params.repair.base import RepairContext, RepairMethod

WIDTH = 4


def block(first: float, num_layers: int) -> tuple[int, int]:
    """The layers a strength restores: ``first`` .. ``first + WIDTH - 1`` (within the model)."""
    start = int(first)
    if start != first or not 0 <= start < num_layers:
        raise SftscopeError(
            f"repair method 'layers': first layer {first:g} is not a layer of 0..{num_layers - 1}"
        )
    return start, min(start + WIDTH, num_layers) - 1


class Layers(RepairMethod):
    def default_grid(self, ctx: RepairContext) -> list[float]:
        return [float(x) for x in range(0, ctx.num_layers, WIDTH)]

    def check(self, ctx: RepairContext, strengths) -> None:
        for x in strengths:
            block(x, ctx.num_layers)

    def repaired(
        self, ctx: RepairContext, name: str, p: torch.Tensor, s: torch.Tensor, strength: float
    ) -> torch.Tensor | None:
        a, b = block(strength, ctx.num_layers)
        layer = ctx.layers[name]
        return p.clone() if layer is not None and a <= layer <= b else None
