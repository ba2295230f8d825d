"""What every repair method shares: the pair of checkpoints and the region, streamed tensor by
tensor, and the in-place application to a loaded fine-tuned model with its exact undo.

A method maps one region tensor's base value ``p`` and fine-tuned value ``s`` (fp32, on the
compute device) and a strength to the repaired tensor, or None to leave it as fine-tuned
(:class:`RepairMethod`); it may precompute once for all its strengths (:meth:`~RepairMethod.
prepare`, e.g. the SVD of every matrix's change). :class:`Repairer` writes the repaired tensors
into the model, cast to its dtype; :meth:`Repairer.undo` copies the fine-tuned checkpoint's
tensors back, which equal what loading put there (the same cast), so the model is bit-identical
to the loaded one before the next point and one model load serves a whole sweep.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sftscope.params.diff import natural_key, region_names
from sftscope.params.inplace import region_weights
from sftscope.params.structure import structure_of
from sftscope.params.tensors import (
    Checkpoint,
    ShardWriter,
    check_compatible,
    iter_pairs,
    plan_of,
    read_tensor,
)


@dataclass
class RepairContext:
    """The checked pair of checkpoints, the region's tensors (natural order) with their decoder
    layers, and where the arithmetic runs."""

    base: Checkpoint
    tuned: Checkpoint
    region: str = "paper"
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    names: list[str] = field(default_factory=list)
    layers: dict[str, int | None] = field(default_factory=dict)
    num_layers: int = 0

    def __post_init__(self) -> None:
        check_compatible(self.base, self.tuned)
        structure = structure_of(self.base.config_root)
        self.names = sorted(region_names(self.base, self.region, structure), key=natural_key)
        self.layers = {n: structure.role(n).layer for n in self.names}
        self.num_layers = 1 + max((v for v in self.layers.values() if v is not None), default=0)

    def pairs(self, desc: str) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        """(name, base, tuned) of the region in fp32 on the compute device, with a bar."""
        for name, p, s in tqdm(
            iter_pairs(self.base, self.tuned, self.names, self.device),
            total=len(self.names),
            desc=desc,
            unit="tensor",
            leave=False,
        ):
            yield name, p.float(), s.float()

    def generator(self, name: str) -> torch.Generator:
        """A CPU generator seeded by the context's seed and the tensor's name alone, so a
        tensor's draws do not depend on the order or the device tensors are processed on."""
        return torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{name}".encode()))


class RepairMethod:
    """One way to repair (a subclass per module; its strengths are checked against its
    registry entry before it runs)."""

    def prepare(self, ctx: RepairContext, strengths: Sequence[float]) -> None:
        """Work done once for every strength of a sweep (nothing, unless a method needs it)."""

    def check(self, ctx: RepairContext, strengths: Sequence[float]) -> None:
        """A one-line error for a strength this model cannot take (before anything runs)."""

    def default_grid(self, ctx: RepairContext) -> list[float]:
        """The strengths swept when neither the config nor the registry entry gives them
        (a grid that depends on the model, as the layer blocks do)."""
        raise NotImplementedError

    def repaired(
        self, ctx: RepairContext, name: str, p: torch.Tensor, s: torch.Tensor, strength: float
    ) -> torch.Tensor | None:
        """Tensor ``name`` repaired at ``strength`` (fp32), or None to keep the fine-tuned one."""
        raise NotImplementedError


class Repairer:
    """Applies repairs to one loaded fine-tuned model, one point at a time, each undone."""

    def __init__(self, ctx: RepairContext, model: torch.nn.Module) -> None:
        self.ctx = ctx
        self.weights = region_weights(
            model, ctx.names, ctx.tuned.root, "repair applies in place only (use another region)"
        )
        self.changed: list[str] = []

    def apply(self, method: RepairMethod, strength: float, label: str = "") -> None:
        """Put ``method`` at ``strength`` into the model (after undoing the previous point)."""
        self.undo()
        for name, p, s in self.ctx.pairs(f"repair {label}".strip()):
            values = method.repaired(self.ctx, name, p, s, strength)
            if values is None:
                continue
            w = self.weights[name]
            with torch.no_grad():
                w.copy_(values.to(w.device, w.dtype))
            self.changed.append(name)

    def undo(self) -> None:
        """The fine-tuned weights back, exactly as loading put them."""
        for name in self.changed:
            w = self.weights[name]
            with torch.no_grad():
                w.copy_(read_tensor(self.ctx.tuned, name).to(w.device, w.dtype))
        self.changed = []


def save_repaired(ctx: RepairContext, method: RepairMethod, strength: float, out: Path) -> Path:
    """The repaired model as a checkpoint in ``out`` (safetensors in the fine-tune's dtype, its
    config and tokenizer beside), streamed tensor by tensor and moved into place when complete:
    it loads with ``from_pretrained``."""
    plan = sorted(plan_of(ctx.tuned), key=lambda e: natural_key(e[0]))
    writer = ShardWriter(out, plan)
    region = set(ctx.names)
    try:
        names = [e[0] for e in plan]
        for name, p, s in iter_pairs(ctx.base, ctx.tuned, names, ctx.device):
            values = (
                method.repaired(ctx, name, p.float(), s.float(), strength)
                if name in region
                else None
            )
            writer.add(name, s if values is None else values.to(s.dtype))
        writer.close(side_files_from=(ctx.tuned.root, ctx.tuned.config_root, ctx.base.config_root))
    except BaseException:
        writer.abort()
        raise
    return out
