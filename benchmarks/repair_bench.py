"""What one repair point costs beside what it is for: applying and undoing a point in place
(``sftscope.params.repair``) against one dev evaluation of the same model, on SmolLM2.

The fine-tune is a seeded perturbed copy of SmolLM2 (half the weights moved; the cost of a point
does not depend on what training did), written once to ``--work``. For every repair method:
its preparation (once per sweep: the restore selection, the SVD of every changed matrix), and
the mean of ``--repeats`` apply + undo cycles at its middle strength; then one dev evaluation
of the loaded model (geo dev, the SFT prompt, greedy, 16 tokens), all in one process, one after
the other. Prints each cost and its ratio to the evaluation (the goal: apply + undo <= 0.2x).

    .venv/bin/python benchmarks/repair_bench.py [--limit-per-relation 10] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the table, not the bars (read when tqdm loads)

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from sftscope.config import EvalConfig  # noqa: E402
from sftscope.evaluate import run_eval  # noqa: E402
from sftscope.models.factory import hf_engine  # noqa: E402
from sftscope.models.loading import load_model, smollm2_path  # noqa: E402
from sftscope.params.repair.base import RepairContext, Repairer  # noqa: E402
from sftscope.params.tensors import open_checkpoint  # noqa: E402
from sftscope.registry import REPAIR_METHODS  # noqa: E402


def perturbed(base: Path, out: Path) -> Path:
    if (out / "model.safetensors").exists():
        return out
    g = torch.Generator().manual_seed(0)
    weights = load_file(base / "model.safetensors")
    moved = {
        k: v + (torch.rand(v.shape, generator=g) < 0.5) * 1e-3 * torch.randn(v.shape, generator=g)
        for k, v in weights.items()
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(moved, str(out / "model.safetensors"))
    for f in base.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy2(f, out / f.name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "repair-bench")
    ap.add_argument("--limit-per-relation", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    base = smollm2_path()
    tuned = perturbed(base, args.work / "tuned")
    ctx = RepairContext(open_checkpoint(base), open_checkpoint(tuned))
    model, tok = load_model(str(tuned), "cpu")
    repairer = Repairer(ctx, model)
    weights = sum(ctx.base.numel(n) for n in ctx.names)
    print(f"SmolLM2-135M: {len(ctx.names)} region tensors, {weights / 1e6:.1f} M weights")
    costs = {}
    for name in REPAIR_METHODS:
        entry = REPAIR_METHODS[name]
        method = REPAIR_METHODS.load(name)()
        strengths = [float(x) for x in entry.strengths]
        t0 = time.perf_counter()
        method.prepare(ctx, strengths)
        prepare = time.perf_counter() - t0
        strength = strengths[len(strengths) // 2]
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            repairer.apply(method, strength, name)
            repairer.undo()
        costs[name] = (prepare, (time.perf_counter() - t0) / args.repeats, strength)
    engine = hf_engine(model, tok, batch_size=32, progress=False)
    out = args.work / "eval"
    shutil.rmtree(out, ignore_errors=True)
    cfg = EvalConfig(
        model=str(tuned),
        data="geo",
        split="dev",
        prompt="sft",
        limit_per_relation=args.limit_per_relation,
        device="cpu",
        out=out,
    )
    t0 = time.perf_counter()
    summary = run_eval(cfg, engine)
    evaluation = time.perf_counter() - t0
    n = summary.overall.n
    print(f"one dev evaluation ({n} items, {args.limit_per_relation}/relation): {evaluation:.1f} s")
    print(f"{'method':<12} {'strength':>8} {'prepare s':>10} {'apply+undo s':>13} {'÷ eval':>7}")
    for name, (prepare, cycle, strength) in costs.items():
        ratio = cycle / evaluation
        print(f"{name:<12} {strength:>8g} {prepare:>10.2f} {cycle:>13.2f} {ratio:>7.3f}")


if __name__ == "__main__":
    main()
