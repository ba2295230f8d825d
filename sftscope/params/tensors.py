"""Streaming safetensors I/O: read two checkpoints tensor by tensor, write shard by shard.

A checkpoint is a ``save_pretrained`` folder holding ``model.safetensors`` or shards listed in
``model.safetensors.index.json``. Nothing here holds a whole model: readers open tensors lazily
(``safe_open``) and the writer streams each tensor into its shard file as it comes (the shard
headers are computed up front from the tensors' shapes), so memory stays at about one tensor
whatever the model size.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from sftscope.errors import SftscopeError
from sftscope.io import atomic_write_json, replace_dir

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
# Files copied beside restored weights so the output loads with from_pretrained.
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)


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

    @property
    def config_root(self) -> Path:
        """The folder holding the ``config.json`` its architecture is read from."""
        return self.root

    def read(self, name: str) -> torch.Tensor:
        """One tensor, copied out of its file. The file is opened (memory-mapped) for this read
        only: a handle kept open for a whole pass keeps every page it touched mapped, so the
        process's resident memory would grow to the size of the checkpoint."""
        with safe_open(self.tensors[name].file, framework="pt") as f:
            return f.get_tensor(name)

    def numel(self, name: str) -> int:
        n = 1
        for d in self.tensors[name].shape:
            n *= d
        return n


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Index a checkpoint folder; a missing folder, file or shard is a one-line error (a PEFT
    adapter folder: :func:`sftscope.params.lora.open_weights`)."""
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
        try:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open handles are not dicts
                    sl = f.get_slice(key)
                    ckpt.tensors[key] = TensorInfo(tuple(sl.get_shape()), sl.get_dtype(), file)
        except (SafetensorError, OSError) as e:  # truncated, corrupt, unreadable
            raise SftscopeError(f"{file}: not a readable safetensors file ({e})") from None
    return ckpt


def has_weights(folder: str | Path) -> bool:
    """Whether a model folder still holds its weights (``keep_models: false`` deletes them)."""
    folder = Path(folder)
    return (folder / SINGLE).exists() or any(folder.glob("model-*.safetensors"))


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
            raise SftscopeError(
                f"tensor {name}: shape {list(a.shape)} in {base.root} but "
                f"{list(b.shape)} in {tuned.root}"
            )
        if a.dtype != b.dtype:
            raise SftscopeError(
                f"tensor {name}: dtype {a.dtype} in {base.root} but {b.dtype} in {tuned.root}"
            )


def read_tensor(ckpt: Checkpoint, name: str) -> torch.Tensor:
    """One tensor of ``ckpt`` (:meth:`Checkpoint.read`)."""
    return ckpt.read(name)


def iter_pairs(
    base: Checkpoint,
    tuned: Checkpoint,
    names: Sequence[str] | None = None,
    device: torch.device | None = None,
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, base tensor, tuned tensor), one pair in memory at a time, in ``names`` order
    (default: the base checkpoint's order), moved to ``device`` when one is given."""
    for name in names or base.names:
        p, s = read_tensor(base, name), read_tensor(tuned, name)
        if device is not None:
            p, s = p.to(device), s.to(device)
        yield name, p, s


# safetensors dtype names (https://github.com/huggingface/safetensors, format spec).
_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}

_FLOATS = {"F64", "F32", "F16", "BF16"}

Plan = Sequence[tuple[str, tuple[int, ...], str]]  # (name, shape, safetensors dtype), in order


def plan_of(ckpt: Checkpoint) -> list[tuple[str, tuple[int, ...], str]]:
    """The tensors of ``ckpt`` as a writing plan, in its order."""
    return [(name, info.shape, info.dtype) for name, info in ckpt.tensors.items()]


def _nbytes(shape: Sequence[int], dtype: str) -> int:
    if dtype not in _SIZES:
        raise SftscopeError(f"dtype {dtype} is not supported for writing")
    n = _SIZES[dtype]
    for d in shape:
        n *= d
    return n


def _header(entries: Plan) -> bytes:
    """A safetensors header for ``entries``: u64 length, JSON, padded to 8 bytes."""
    meta: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in entries:
        end = offset + _nbytes(shape, dtype)
        meta[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(meta, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


class ShardWriter:
    """Streams tensors to safetensors shards of at most ``max_shard_bytes`` (a larger tensor
    gets a shard of its own), with an index when there is more than one.

    The ``plan`` (every tensor's name, shape and dtype, in writing order) is known up front, so
    each shard's header is written first and each tensor goes to disk the moment it is added:
    memory holds one tensor whatever the model size. Everything is written into a temporary
    folder and renamed into place by :meth:`close`."""

    def __init__(self, out: str | Path, plan: Plan, max_shard_bytes: int = 5 * 2**30) -> None:
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.shards: list[list[tuple[str, tuple[int, ...], str]]] = [[]]
        size = 0
        for name, shape, dtype in plan:
            nbytes = _nbytes(shape, dtype)
            if self.shards[-1] and size + nbytes > max_shard_bytes:
                self.shards.append([])
                size = 0
            self.shards[-1].append((name, tuple(shape), dtype))
            size += nbytes
        self.total = sum(_nbytes(s, d) for shard in self.shards for _, s, d in shard)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        self._todo = iter([(k, e) for k, shard in enumerate(self.shards) for e in shard])
        self._file = None
        self._shard = -1

    def _path(self, k: int) -> Path:
        return self.tmp / f"shard-{k:05d}.safetensors"

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Write the next tensor of the plan (names, shapes and dtypes must follow it)."""
        k, (want, shape, dtype) = next(self._todo, (None, (None, None, None)))
        got = _DTYPES.get(tensor.dtype)
        if name != want or tuple(tensor.shape) != shape or got != dtype:
            raise SftscopeError(
                f"writing {name} {list(tensor.shape)} {got}: the plan expects "
                f"{want} {list(shape or [])} {dtype}"
            )
        if k != self._shard:
            if self._file is not None:
                self._file.close()
            self._file = open(self._path(k), "wb")  # noqa: SIM115 - closed on the next shard
            self._file.write(_header(self.shards[k]))
            self._shard = k
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._file.write(data.numpy().data)

    def close(self, side_files_from: Sequence[Path] = ()) -> Path:
        """Finish the last shard, write the index, copy config/tokenizer files from the first
        of ``side_files_from`` that has each, and move the folder into place."""
        if next(self._todo, None) is not None:
            raise SftscopeError(f"{self.out}: closed before every planned tensor was written")
        if self._file is not None:
            self._file.close()
        n = len(self.shards)
        if n == 1:
            if not self._path(0).exists():  # an empty plan
                self._path(0).write_bytes(_header([]))
            os.replace(self._path(0), self.tmp / SINGLE)
        else:
            weight_map = {}
            for k, entries in enumerate(self.shards):
                final = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
                os.replace(self._path(k), self.tmp / final)
                weight_map.update(dict.fromkeys((e[0] for e in entries), final))
            index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
            atomic_write_json(self.tmp / INDEX, index)
        for name in SIDE_FILES:  # the first folder holding the file wins
            src = next((d / name for d in side_files_from if (d / name).exists()), None)
            if src is not None:
                shutil.copy2(src, self.tmp / name)
        return replace_dir(self.tmp, self.out)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class WriteQueue:
    """:meth:`ShardWriter.add` calls run in order on one background thread. The file writes
    release the GIL, so the next tensor's arithmetic overlaps them; at most ``max_bytes`` of
    tensors wait (at least one). An error of a write is raised by the next call after it."""

    def __init__(self, max_bytes: int = 128 * 2**20) -> None:
        self.max_bytes = max_bytes
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="sftscope-write")
        self.pending: deque[tuple[Future, int]] = deque()
        self.bytes = 0

    def add(self, writer: ShardWriter, name: str, tensor: torch.Tensor) -> None:
        n = tensor.numel() * tensor.element_size()
        while self.pending and self.bytes + n > self.max_bytes:
            self._wait_one()
        self.pending.append((self.pool.submit(writer.add, name, tensor), n))
        self.bytes += n

    def _wait_one(self) -> None:
        future, n = self.pending.popleft()
        self.bytes -= n
        future.result()

    def drain(self) -> None:
        """Wait for every queued write."""
        while self.pending:
            self._wait_one()

    def __enter__(self) -> WriteQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        for future, _ in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True)


def cast_checkpoint(
    folder: str | Path, dtype: torch.dtype, max_shard_bytes: int = 5 * 2**30
) -> bool:
    """Store the floating-point weights of the checkpoint in ``folder`` as ``dtype`` (streamed,
    and ``config.json`` updated); returns whether anything changed. Meant for a folder that is
    not in place yet: the weight files are swapped one by one.

    Training keeps fp32 master weights; casting the result back to the base model's dtype makes
    the fine-tuned checkpoint comparable with its base tensor for tensor (``check_compatible``).
    """
    root = Path(folder)
    ckpt = open_checkpoint(root)
    target = _DTYPES[dtype]
    plan = [
        (name, info.shape, target if info.dtype in _FLOATS else info.dtype)
        for name, info in ckpt.tensors.items()
    ]
    if all(d == ckpt.tensors[name].dtype for name, _, d in plan):
        return False
    staged = root.parent / f".{root.name}.cast"
    shutil.rmtree(staged, ignore_errors=True)
    writer = ShardWriter(staged, plan, max_shard_bytes)
    try:
        for name, info in ckpt.tensors.items():
            tensor = read_tensor(ckpt, name)
            writer.add(name, tensor.to(dtype) if info.dtype in _FLOATS else tensor)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    for old in {root / INDEX, root / SINGLE, *(i.file for i in ckpt.tensors.values())}:
        old.unlink(missing_ok=True)
    for new in staged.iterdir():
        os.replace(new, root / new.name)
    staged.rmdir()
    config = root / "config.json"
    if config.exists():
        values = json.loads(config.read_text(encoding="utf-8"))
        for key in ("dtype", "torch_dtype"):  # (transformers 5 / 4)
            if key in values:
                values[key] = str(dtype).removeprefix("torch.")
        atomic_write_json(config, values)
    return True
