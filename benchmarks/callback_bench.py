"""What watching knowledge costs a training run: ``sftscope train`` on SmolLM2 without and with
``--watch`` (the knowledge callback at its defaults: 200 known + 100 unknown facts, measured at
step 0, every 10 % of the run and at the end), one after the other in one process.

The training file is the demo's cell size: ``--size`` geography train facts (question/answer,
the paper's format); the watch set is a probe folder when one is given (``--watch``, e.g. a
grid's ``probe/test``), else the first 300 geography test items. Prints both walls, their ratio
(the goal: <= 1.10), the seconds one measurement takes and how many were made.

    .venv/bin/python benchmarks/callback_bench.py [--size 60] [--watch RUN/probe/test]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

from sftscope.config import TrainConfig  # noqa: E402
from sftscope.data.dataset import load_items  # noqa: E402
from sftscope.data.readers import resolve_dataset  # noqa: E402
from sftscope.io import atomic_write_jsonl, read_jsonl  # noqa: E402
from sftscope.train import run_train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=60)
    ap.add_argument("--watch", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "callback-bench")
    args = ap.parse_args()
    geo = resolve_dataset("geo", None)
    facts = load_items(geo, ["train"])[: args.size]
    train = args.work / "train.jsonl"
    atomic_write_jsonl(train, [{"question": f.question, "answer": f.target} for f in facts])
    watch = args.watch
    if watch is None:
        watch = args.work / "watch.jsonl"
        items = load_items(geo, ["test"])[:300]
        rows = [{"question": it.question, "answers": list(it.answers)} for it in items]
        atomic_write_jsonl(watch, rows)
    recipe = dict(model="smollm2", train_file=train, learning_rate=1e-4, batch_size=8, device="cpu")
    walls = {}
    for name, extra in (("without", {}), ("with", {"watch": watch})):
        t0 = time.perf_counter()
        s = run_train(TrainConfig(**recipe, out=args.work / name, **extra))
        walls[name] = time.perf_counter() - t0
        print(f"{name} the callback: {walls[name]:.1f} s ({s['steps']} steps)")
    rows = read_jsonl(args.work / "with" / "knowledge_log.jsonl")
    extra = walls["with"] - walls["without"]
    print(f"measurements: {len(rows)}, ~{extra / len(rows):.1f} s each")
    print(f"training wall with / without the callback: {walls['with'] / walls['without']:.2f}")


if __name__ == "__main__":
    main()
