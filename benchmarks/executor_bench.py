"""Wall time of one tiny grid (4 cells) under ``executor: processes`` ÷ ``executor: local``.

Both runs start from an empty run folder, in a subprocess each (``sftscope run``), one after
the other on the same machine; nothing else should run beside them. ``local`` runs every stage
in one process with torch's default thread count; ``processes`` runs ``--workers N`` worker
processes (one job each at a time: the probes' shards, the base evaluation, a cell), the cores
split between them. Goal on 2 cores with 2 workers: ratio <= 0.65.

    .venv/bin/python benchmarks/executor_bench.py [--workers 2] [--epochs 250] [--hidden 64]
        [--layers 2] [--executors local,processes] [--device cpu] [--model PATH] [--work DIR]

A cell's training (``--epochs``) sets how long its job runs against the fixed cost of a job (a
forked process, loading its models and data: ~1-2 s here); real cells run for minutes.

``--model smollm2 --device cuda`` on a GPU box measures cells/hour of the bundled SmolLM2 with
one worker per GPU against ``local``.

``--executors processes,slurm`` (as root, with ``slurm-wlm`` and ``munge`` installed: ``make
test-cluster`` does it) also runs the grid as real ``sbatch`` job arrays on a one-node SLURM of
this machine, started for the run and stopped after it (``tests/cluster/slurm_node.py``), each
job with ``cores / workers`` CPUs and ``--workers`` tasks of an array at once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EQ_FIXTURE = ROOT / "tests" / "fixtures" / "entityquestions"


def tiny_model(out: Path, hidden: int, layers: int) -> Path:
    """A random-init LLaMA (hidden x layers) with a BPE tokenizer trained on the fixture."""
    from sftscope.models.tiny import save_tiny

    texts = []
    for path in sorted(EQ_FIXTURE.glob("*/*.json")):
        for item in json.loads(path.read_text(encoding="utf-8")):
            texts.append(f"Question: {item['question']}\nAnswer: {item['answers'][0]}\n")
    return save_tiny(texts, out, hidden_size=hidden, num_layers=layers)


def grid(work: Path, model: str, device: str, name: str, epochs: int) -> Path:
    cfg = {
        "model": model,
        "data": "entityquestions",
        "data_dir": str(EQ_FIXTURE),
        "train_limit_per_relation": 40,
        "levels": ["mixed"],
        "sizes": [32],
        "seeds": [0, 1, 2, 3],
        "probe": {
            "method": "sampling",
            "templates": 10,
            "samples": 4,
            "max_new_tokens": 16,
            "chunk_size": 8,
        },
        "train": {"batch_size": 4, "learning_rate": 1e-3, "epochs": epochs},
        "eval": {"limit_per_relation": 20},
        "device": device,
        "out": str(work / name / "run"),
    }
    path = work / name / "grid.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def timed_run(path: Path, *args: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    cmd = [sys.executable, "-m", "sftscope.cli", "run", str(path), *args]
    started = time.perf_counter()
    with open(path.parent / "run.log", "w") as log:
        code = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if code:
        sys.exit(f"{' '.join(cmd)} failed (exit {code}); see {path.parent / 'run.log'}")
    return time.perf_counter() - started


@contextmanager
def slurm_node(root: Path) -> Iterator[None]:
    """A one-node SLURM of this machine while the context lasts, clients pointed at it."""
    sys.path.insert(0, str(ROOT / "tests" / "cluster"))
    from slurm_node import SlurmNode, missing

    if why := missing():
        sys.exit(f"no SLURM node here: {why}")
    node = SlurmNode(root).start()
    os.environ.update(node.env)
    try:
        yield
    finally:
        node.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument(
        "--epochs",
        type=int,
        default=250,
        help="epochs over each cell's 32 facts (250: 2,000 steps, a cell ~25 s)",
    )
    ap.add_argument("--model", default=None, help="a model instead of the random-init one")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--executors", default="local,processes", help="of local,processes,slurm")
    ap.add_argument("--poll-s", type=float, default=0.5, help="slurm: seconds between checks")
    ap.add_argument("--work", type=Path, default=None, help="folder for models and runs")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="sftscope-executors-"))
    model = args.model or str(tiny_model(work / "model", args.hidden, args.layers))
    walls = {}
    with ExitStack() as stack:
        for kind in args.executors.split(","):
            extra = ["--executor", kind]
            if kind == "slurm":
                stack.enter_context(slurm_node(work / "slurm"))
                cpus = max(1, (os.cpu_count() or 2) // args.workers)
                extra += [f"executor.slurm.cpus_per_job={cpus}", "executor.slurm.mem_gb=1"]
                extra += [f"executor.slurm.array_parallelism={args.workers}"]
                extra += [f"executor.slurm.poll_s={args.poll_s}"]
            elif kind != "local":
                extra += ["--workers", str(args.workers)]
            walls[kind] = timed_run(grid(work, model, args.device, kind, args.epochs), *extra)
            print(f"{kind:>10}: {walls[kind]:7.1f} s  ({4 * 3600 / walls[kind]:.0f} cells/hour)")
    if "slurm" in walls and "processes" in walls:
        ratio = walls["slurm"] / walls["processes"]
        print(f"slurm / processes --workers {args.workers} = {ratio:.2f}")
    if "local" in walls and "processes" in walls:
        ratio = walls["processes"] / walls["local"]
        print(
            f"processes --workers {args.workers} / local = {ratio:.2f}  ({args.epochs} epochs "
            f"per cell; goal <= 0.65 on {os.cpu_count()} cores; runs in {work})"
        )


if __name__ == "__main__":
    main()
