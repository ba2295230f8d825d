"""Streaming safetensors I/O: read two checkpoints tensor by tensor, write shard by shard.

A checkpoint is a ``save_pretrained`` folder holding ``model.safetensors`` or shards listed in
``model.safetensors.index.json``. Nothing here holds a whole model: readers open tensors lazily
(``safe_open``) and the writer flushes a shard as soon as it reaches ``max_shard_bytes``, so memory
stays at about one tensor plus one shard whatever the model size.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sftscope.errors import SftscopeError
from sftscope.io import atomic_write_json

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
# Files copied beside restored weights so the output loads with from_pretrained.
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "vocab.json",
              "merges.txt")  # fmt: skip


@dataclass
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str
    file: Path


@dataclass
class Checkpoint:
    """The tensors of one checkpoint folder: name -> shape, dtype and file (nothing loaded)."""

    root: Path
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    def numel(self, name: str) -> int:
        n = 1
        for d in self.tensors[name].shape:
            n *= d
        return n


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Index a checkpoint folder; a missing folder, file or shard is a one-line error."""
    root = Path(path)
    if not root.is_dir():
        raise SftscopeError(f"{root}: checkpoint folder not found")
    if (root / INDEX).exists():
        try:
            weight_map = json.loads((root / INDEX).read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SftscopeError(
                f"{root / INDEX}: not a safetensors index (no weight_map)"
            ) from None
        files = sorted(set(weight_map.values()))
    elif (root / SINGLE).exists():
        files = [SINGLE]
    else:
        raise SftscopeError(f"{root}: no {SINGLE} or {INDEX} (safetensors checkpoints only)")
    ckpt = Checkpoint(root)
    for name in files:
        file = root / name
        if not file.exists():
            raise SftscopeError(f"{root}: shard {name} named in {INDEX} is missing")
        with safe_open(file, framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open handles are not dicts
                sl = f.get_slice(key)
                ckpt.tensors[key] = TensorInfo(tuple(sl.get_shape()), sl.get_dtype(), file)
    return ckpt


def check_compatible(base: Checkpoint, tuned: Checkpoint) -> None:
    """Same tensor names, shapes and dtypes; the error names the first difference."""
    for name in base.tensors:
        if name not in tuned.tensors:
            raise SftscopeError(f"{tuned.root}: tensor {name} of {base.root} is missing")
    for name in tuned.tensors:
        if name not in base.tensors:
            raise SftscopeError(f"{base.root}: tensor {name} of {tuned.root} is missing")
    for name, a in base.tensors.items():
        b = tuned.tensors[name]
        if a.shape != b.shape:
            raise SftscopeError(f"tensor {name}: shape {list(a.shape)} in {base.root} but "
                                f"{list(b.shape)} in {tuned.root}")  # fmt: skip
        if a.dtype != b.dtype:
            raise SftscopeError(
                f"tensor {name}: dtype {a.dtype} in {base.root} but {b.dtype} in {tuned.root}"
            )


def iter_pairs(
    base: Checkpoint, tuned: Checkpoint, names: Sequence[str] | None = None
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, base tensor, tuned tensor), one pair in memory at a time, in ``names`` order
    (default: the base checkpoint's order). Files stay open for the whole pass."""
    with ExitStack() as stack:
        handles: dict[Path, object] = {}

        def get(ckpt: Checkpoint, name: str) -> torch.Tensor:
            file = ckpt.tensors[name].file
            if file not in handles:
                handles[file] = stack.enter_context(safe_open(file, framework="pt"))
            return handles[file].get_tensor(name)  # type: ignore[attr-defined]

        for name in names or base.names:
            yield name, get(base, name), get(tuned, name)


class ShardWriter:
    """Writes tensors into ``out`` as shards of at most ``max_shard_bytes`` (a tensor larger than
    that gets a shard of its own), with an index when there is more than one. Everything is
    written into a temporary folder and renamed into place by :meth:`close`."""

    def __init__(self, out: str | Path, max_shard_bytes: int = 5 * 2**30) -> None:
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        self.max = max_shard_bytes
        self.buffer: dict[str, torch.Tensor] = {}
        self.size = 0
        self.shards: list[list[str]] = []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.buffer and self.size + nbytes > self.max:
            self._flush()
        self.buffer[name] = tensor.contiguous()
        self.size += nbytes
        self.total += nbytes

    def _flush(self) -> None:
        k = len(self.shards)
        save_file(self.buffer, str(self.tmp / f"shard-{k:05d}.safetensors"), {"format": "pt"})
        self.shards.append(list(self.buffer))
        self.buffer, self.size = {}, 0

    def close(self, side_files_from: Path | None = None) -> Path:
        if self.buffer or not self.shards:
            self._flush()
        n = len(self.shards)
        if n == 1:
            os.replace(self.tmp / "shard-00000.safetensors", self.tmp / SINGLE)
        else:
            weight_map = {}
            for k, names in enumerate(self.shards):
                final = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
                os.replace(self.tmp / f"shard-{k:05d}.safetensors", self.tmp / final)
                weight_map.update(dict.fromkeys(names, final))
            index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
            atomic_write_json(self.tmp / INDEX, index)
        if side_files_from is not None:
            for name in SIDE_FILES:
                if (side_files_from / name).exists():
                    shutil.copy2(side_files_from / name, self.tmp / name)
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
