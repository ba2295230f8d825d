"""``depth``: LiNeS-style scaling by depth (Wang et al. 2024): layer l of L keeps the share
λ_min + (1 − λ_min)·l/(L − 1) of its change, so shallow layers move back toward the base and
the top layer stays fine-tuned; tensors outside the decoder layers keep their change. (The
paper finds restoring layers 0-3 hurts most: this method tests the opposite bet.)"""

from __future__ import annotations

import torch

from sftscope.params.repair.base import RepairContext, RepairMethod


def share(layer: int | None, num_layers: int, low: float) -> float:
    """The share of its change layer ``layer`` keeps."""
    if layer is None or num_layers <= 1:
        return 1.0
    return low + (1.0 - low) * layer / (num_layers - 1)


class Depth(RepairMethod):
    def repaired(
        self, ctx: RepairContext, name: str, p: torch.Tensor, s: torch.Tensor, strength: float
    ) -> torch.Tensor | None:
        scale = share(ctx.layers[name], ctx.num_layers, strength)
        return None if scale == 1.0 else p + scale * (s - p)
