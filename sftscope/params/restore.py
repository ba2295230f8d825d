"""Restore selected fine-tuned weights to their pre-SFT values (docs/method.md §7.3, §7.5).

The paper ranks every weight of the region by its relative change r (one global ranking,
``torch.topk`` over a flat vector of the whole model) and sets the top k% back to the base
values, once per k. Here the ranking is exact and streamed (:mod:`sftscope.params.ranking`):
three passes over the two checkpoints, whatever the number of k values, and one output
checkpoint per k written tensor by tensor, so memory holds a tensor pair, not a model.

* scope: ``global`` (the paper: one ranking over the region), ``layer`` (one ranking per decoder
  layer) or ``tensor`` (one per tensor); tensors outside any layer form their own group.
* strategy: ``top`` (largest r first, the paper), ``bottom`` (smallest first) or ``random``
  (a seeded uniform score per weight, ranked like r; reproducible, and independent of which
  other tensors are in the region).
* ties: positions break them, lower first — the flat index in the group's tensors taken in
  natural name order (``layers.2`` before ``layers.10``, whatever the sharding) — so the
  selection equals the first n of a stable sort; n = floor(N * k / 100) per group.
* layer blocks: ``layers: [0-3, 4-7]`` restores every region tensor of those layers entirely,
  one output per block (the paper's Table 11), instead of the k sweep.

With ``compute_device: cuda`` each region tensor pair is moved to the GPU for the arithmetic
(r, scores, histograms, masks, the restored tensor) and comes back to the CPU for writing; the
restored checkpoints are bit-identical to a CPU run (see :mod:`sftscope.params.ranking`).

Outputs: ``OUT/<scope>-<strategy>-<k>/`` or ``OUT/layers-<a>-<b>/`` (``from_pretrained``-loadable,
config and tokenizer copied), ``OUT/selection.json`` (per output: count, cut per group, stats of
the selected r), ``OUT/restore_stats.tsv`` (per output and tensor), ``OUT/restore.yaml``. Built in
a temporary folder and renamed into place: a failed run leaves nothing.
"""

from __future__ import annotations

import json
import math
import shutil
import zlib
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from sftscope.config import RestoreConfig, RestoreSettings, dump_config, result_fields
from sftscope.errors import SftscopeError
from sftscope.io import atomic_write_json, atomic_write_text, read_yaml, replace_dir, tsv_text
from sftscope.params.diff import checked, natural_key, region_names, relative_change
from sftscope.params.lora import open_weights
from sftscope.params.ranking import Cut, Ranking, Selector
from sftscope.params.structure import structure_of
from sftscope.params.tensors import (
    Checkpoint,
    ShardWriter,
    WriteQueue,
    check_compatible,
    iter_pairs,
    plan_of,
)


def group_of(name: str, scope: str, layer: int | None) -> Hashable:
    """The ranking a tensor belongs to (``layer``: its decoder layer, None outside them)."""
    if scope == "global":
        return "all"
    if scope == "layer":
        return f"layer {layer}" if layer is not None else name
    return name


def random_scores(name: str, shape: torch.Size, seed: int) -> torch.Tensor:
    """Uniform [0, 1) scores, seeded by ``seed`` and the tensor's name only."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
    return torch.rand(shape, generator=g)


def parse_block(text: str) -> tuple[int, int]:
    a, sep, b = text.partition("-")
    try:
        lo, hi = int(a), int(b if sep else a)
    except ValueError:
        raise SftscopeError(f"layer block {text!r}: expected A-B, e.g. 0-3") from None
    if lo < 0 or hi < lo:
        raise SftscopeError(f"layer block {text!r}: expected 0 <= A <= B")
    return lo, hi


MAX_OUTPUTS = 255  # codes are uint8: 0 … m - 1, and m for "none"


@dataclass
class Output:
    """One restored checkpoint: a k of the sweep, or a layer block."""

    label: str
    k: float | None = None
    block: tuple[int, int] | None = None
    cuts: dict[Hashable, Cut] = field(default_factory=dict)
    count: int = 0
    sum_r: float = 0.0


class Restorer:
    """The three passes of one ``sftscope restore`` (see the module docstring)."""

    def __init__(
        self,
        cfg: RestoreSettings,
        base: Checkpoint,
        tuned: Checkpoint,
        device: torch.device | None = None,
    ) -> None:
        self.cfg, self.base, self.tuned = cfg, base, tuned
        self.device = device or torch.device("cpu")
        structure = structure_of(base.config_root)
        self.names = sorted(region_names(base, cfg.region, structure), key=natural_key)
        self.layers = {n: structure.role(n).layer for n in self.names}
        self.blocks = {n: structure.role(n).block for n in self.names}
        self.modules = structure.modules_of(self.names)
        self.groups = {n: group_of(n, cfg.scope, self.layers[n]) for n in self.names}
        self.sizes: dict[Hashable, int] = {}
        for n in self.names:
            self.sizes[self.groups[n]] = self.sizes.get(self.groups[n], 0) + base.numel(n)
        descending = cfg.strategy != "bottom"
        self.ranking = Ranking(descending=descending)
        self.selector = Selector(descending=descending)
        if cfg.layers:
            self.outputs = [
                Output(f"layers-{a}-{b}", block=(a, b)) for a, b in map(parse_block, cfg.layers)
            ]
            for out in self.outputs:
                if not any(self.in_block(n, out.block) for n in self.names):
                    raise SftscopeError(
                        f"layer block {out.label[7:]} holds no tensor of region "
                        f"{cfg.region!r} in {base.root}"
                    )
            self.order = list(self.outputs)
        else:
            self.outputs = [Output(f"{cfg.scope}-{cfg.strategy}-{k:g}", k=k) for k in cfg.k]
            # Ascending k: each selection holds the one before (the first n of one total order).
            self.order = sorted(self.outputs, key=lambda o: o.k or 0.0)
        if len(self.order) > MAX_OUTPUTS:
            raise SftscopeError(f"{len(self.order)} outputs: at most {MAX_OUTPUTS} in one restore")
        self.total_r = 0.0
        self.rows: list[dict[str, Any]] = []

    def in_block(self, name: str, block: tuple[int, int] | None) -> bool:
        """Whether tensor ``name`` lies in the layer ``block`` (False for no block)."""
        layer = self.layers[name]
        return block is not None and layer is not None and block[0] <= layer <= block[1]

    def _scores(self, name: str, r: torch.Tensor) -> torch.Tensor:
        if self.cfg.strategy == "random":  # drawn on the CPU: the same numbers on any device
            return random_scores(name, r.shape, self.cfg.seed).to(r.device)
        return r

    def pairs(self, desc: str, names=None, device: torch.device | None = None):
        """(name, base, tuned) of ``names`` (default: the region, in natural order), with a
        progress bar."""
        names = names or self.names
        return tqdm(
            iter_pairs(self.base, self.tuned, names, device),
            total=len(names),
            desc=desc,
            unit="tensor",
            leave=False,
        )

    def select(self) -> None:
        """Passes 1 and 2: the exact cut of every (group, k)."""
        if self.cfg.layers:
            return
        for name, p, s in self.pairs("restore: rank", device=self.device):
            r = checked(name, relative_change(p, s))
            self.ranking.count(self.groups[name], self._scores(name, r))
        wanted = {
            g: {math.floor(size * k / 100) for k in self.cfg.k} for g, size in self.sizes.items()
        }
        self.ranking.plan(wanted)
        for name, p, s in self.pairs("restore: cut", device=self.device):
            scores = self._scores(name, relative_change(p, s))
            self.ranking.refine(self.groups[name], scores, tensor=name)
        cuts = self.ranking.cuts()
        for out in self.outputs:
            for g, size in self.sizes.items():
                n = math.floor(size * out.k / 100)
                out.cuts[g] = cuts.get((g, n), Cut(0, None, 0, None))

    def codes(self, name: str, p: torch.Tensor, s: torch.Tensor) -> torch.Tensor | None:
        """Pass 3's arithmetic for one region tensor (the pair on the compute device; tensors
        in natural name order, the order positions count in, which the tie budgets rely on):
        per weight, the rank in ``order`` of the first output restoring it (``len(order)``:
        none), as uint8; ``None`` for layer blocks, which restore whole tensors. Counted into every
        output's statistics."""
        r = relative_change(p, s)
        if self.cfg.layers:  # (the ranking passes checked it otherwise)
            checked(name, r)
        tensor_r = float(r.sum(dtype=torch.float64))
        self.total_r += tensor_r
        numel = r.numel()
        if self.cfg.layers:
            for out in self.outputs:
                inside = self.in_block(name, out.block)
                self._account(
                    out, name, numel, numel if inside else 0, tensor_r if inside else 0.0, tensor_r
                )
            return None
        group = self.groups[name]
        cuts = [((o.label, group), o.cuts[group]) for o in self.order]
        code = self.selector.codes(
            cuts, self._scores(name, r), lambda value: self.ranking.holds(name, value)
        )
        flat, m = code.flatten(), len(self.order)
        counts = torch.bincount(flat, minlength=m + 1).cpu()
        sums = torch.bincount(flat, weights=r.flatten().double(), minlength=m + 1).cpu()
        n, restored = counts[:m].cumsum(0), sums[:m].cumsum(0)
        for j, out in enumerate(self.order):
            self._account(out, name, numel, int(n[j]), float(restored[j]), tensor_r)
        return code

    def check_counts(self) -> None:
        """Every output restored exactly the weights its cuts select (an internal check)."""
        for out in self.outputs:
            if out.k is not None and out.count != sum(c.n for c in out.cuts.values()):
                raise AssertionError(
                    f"{out.label}: {out.count} weights restored, the cuts "
                    f"select {sum(c.n for c in out.cuts.values())}"
                )

    def write(self, staging: Path) -> None:
        """Pass 3: every output checkpoint, tensor by tensor, in natural name order. A k sweep
        writes its outputs in ascending k, each one the previous with its own weights added."""
        plan = sorted(plan_of(self.base), key=lambda e: natural_key(e[0]))
        writers = [
            ShardWriter(staging / o.label, plan, self.cfg.max_shard_bytes) for o in self.order
        ]
        region = set(self.names)
        try:
            with WriteQueue() as queue:
                for name, p, s in self.pairs("restore: write", [e[0] for e in plan]):
                    for w, tensor in zip(writers, self._restored(name, p, s, region), strict=True):
                        queue.add(w, name, tensor)
                queue.drain()
            self.check_counts()
            for w in writers:
                w.close(
                    side_files_from=(self.tuned.root, self.tuned.config_root, self.base.config_root)
                )
        except BaseException:
            for w in writers:
                w.abort()
            raise

    def _restored(self, name: str, p: torch.Tensor, s: torch.Tensor, region: set[str]):
        """Tensor ``name`` of every output, in ``order``."""
        if name not in region:
            yield from (s for _ in self.order)
            return
        p, s = p.to(self.device), s.to(self.device)  # (the writers copy back)
        code = self.codes(name, p, s)
        if code is None:  # layer blocks: whole tensors
            yield from (p if self.in_block(name, out.block) else s for out in self.order)
            return
        restored = s
        for j in range(len(self.order)):  # each output: the one before, plus its own weights
            restored = torch.where(code == j, p, restored)
            yield restored

    def _account(
        self, out: Output, name: str, numel: int, n: int, restored_r: float, tensor_r: float
    ) -> None:
        out.count += n
        out.sum_r += restored_r
        self.rows.append(
            {
                "output": out.label,
                "tensor": name,
                "layer": self.layers[name],
                "block": self.blocks[name],
                "module": self.modules[name],
                "numel": numel,
                "restored": n,
                "restored_pct": 100 * n / numel,
                "sum_r": tensor_r,
                "restored_sum_r": restored_r,
            }
        )

    def stats_rows(self) -> list[dict[str, Any]]:
        """``restore_stats.tsv``'s rows: tensor-major, outputs in the config's order."""
        order = {o.label: i for i, o in enumerate(self.outputs)}
        return sorted(self.rows, key=lambda row: (natural_key(row["tensor"]), order[row["output"]]))

    def selection(self) -> dict[str, Any]:
        outputs = []
        for o in self.outputs:
            entry: dict[str, Any] = {
                "label": o.label,
                "k": o.k,
                "block": o.block,
                "count": o.count,
                "sum_r": o.sum_r,
                # (fp64 sums per tensor: clamp any rounding above 1)
                "share_of_r": min(1.0, o.sum_r / self.total_r) if self.total_r else 0.0,
                "mean_r": o.sum_r / o.count if o.count else None,
            }
            if o.k is not None:  # the score of the last entry taken, and how many equal to it
                entry["cuts"] = {
                    str(g): {"n": c.n, "threshold": c.value, "ties": c.ties}
                    for g, c in o.cuts.items()
                }
            outputs.append(entry)
        return {
            "region": self.cfg.region,
            "scope": self.cfg.scope,
            "strategy": self.cfg.strategy,
            "seed": self.cfg.seed,
            "weights": sum(self.sizes.values()),
            "total_r": self.total_r,
            "outputs": outputs,
        }


STATS_COLUMNS = (
    "output",
    "tensor",
    "layer",
    "numel",
    "restored",
    "restored_pct",
    "sum_r",
    "restored_sum_r",
    "block",
    "module",
)


def restore_settings(cfg: RestoreConfig) -> dict[str, Any]:
    """What a restore folder records (and a rerun compares): the fields that change results,
    without the evaluation (not where it runs, nor its shard size)."""
    return result_fields(cfg, exclude={"eval", "trust_remote_code"})


def _check_settings(cfg: RestoreConfig) -> None:
    """Refuse an output folder holding a restore made with other settings."""
    saved = Path(cfg.out) / "restore.yaml"
    if saved.exists() and read_yaml(saved, "restore settings") != restore_settings(cfg):
        raise SftscopeError(f"{cfg.out} holds a restore with other settings; use another --out")


def prepare_restore(cfg: RestoreConfig) -> tuple[Checkpoint, Checkpoint, torch.device]:
    """The checked pair and the compute device; refuses a folder holding another restore."""
    from sftscope.models.loading import resolve_device, resolve_model

    device = resolve_device(cfg.compute_device, "--compute-device")
    _check_settings(cfg)
    base = open_weights(resolve_model(cfg.base))
    tuned = open_weights(cfg.tuned, base=cfg.base)
    check_compatible(base, tuned)
    return base, tuned, device


def write_selection(
    cfg: RestoreConfig, restorer: Restorer, folder: Path | None = None, in_place: bool = False
) -> dict[str, Any]:
    """``selection.json``, ``restore_stats.tsv`` and ``restore.yaml`` into ``folder`` (default
    ``OUT``); ``in_place``: the outputs were evaluated in memory, no checkpoint was written."""
    folder = Path(folder or cfg.out)
    selection = {**restorer.selection(), "in_place": in_place}
    atomic_write_text(folder / "restore_stats.tsv", tsv_text(STATS_COLUMNS, restorer.stats_rows()))
    atomic_write_text(
        folder / "restore.yaml", yaml.safe_dump(restore_settings(cfg), sort_keys=False)
    )
    atomic_write_json(folder / "selection.json", selection)
    atomic_write_text(folder / "config.yaml", dump_config(cfg))
    return selection


def run_restore(cfg: RestoreConfig) -> dict[str, Any]:
    """``sftscope restore`` without ``--eval``: the restored checkpoints and their statistics.
    A folder already holding this restore is reused; one holding another is an error (one
    restored in place, without checkpoints, is written again)."""
    out = Path(cfg.out)
    if (out / "selection.json").exists():
        _check_settings(cfg)
        selection = json.loads((out / "selection.json").read_text(encoding="utf-8"))
        if not selection.get("in_place"):
            return selection
    base, tuned, device = prepare_restore(cfg)
    restorer = Restorer(cfg, base, tuned, device)
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        restorer.select()
        restorer.write(staging)
        selection = write_selection(cfg, restorer, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, out)
    return selection
