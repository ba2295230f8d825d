"""Streamed restoration (``sftscope restore``) vs the materialising reference.

For a (base, fine-tuned) pair and the paper's 7 k values, runs in separate processes:
* ours: ``run_restore`` (three streamed passes, one output checkpoint per k);
* reference: load both models, flatten the region's r in fp32, per k select the top n exactly
  and save each restored model — ``sort``: a stable sort per k (the literal reference; about
  5 bytes per weight more memory than the models), ``kth``: the k-th value by selection plus the
  lowest-index ties (same result, less memory: what fits for a 1B pair on 24 GiB);
* copy: a plain copy of the fine-tuned checkpoint files (the I/O floor of one output).
Prints wall-time ratio, peak-RSS ratio (each process's own maximum resident set), ours ÷ copy
(per output), and checks that both methods wrote identical tensors.

With ``--sweep``: the restore sweep with evaluation, written (a checkpoint per k, each loaded
and evaluated) vs in place (``save: false``: the tuned model loaded once, each k restored in
it), wall time and peak RSS of each, and whether their eval records are identical.

    .venv/bin/python benchmarks/restore_bench.py --pair smollm2 runs/ft-2-240-0
    .venv/bin/python benchmarks/restore_bench.py --synthetic 1.0e9     # builds a bf16 pair
    .venv/bin/python benchmarks/restore_bench.py --pair smollm2 runs/ft --synthetic 1.0e9 \
        --reference kth                                                  # both, in one run
    .venv/bin/python benchmarks/restore_bench.py --pair smollm2 runs/ft --sweep --k 1,5,20,60 \
        --reference none --sweep-limit 5

The synthetic pair is a random LlamaConfig model in bf16 (written tensor by tensor, so building
it needs no model in memory) and a copy where half the weights moved.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PAPER_K = [1, 3, 5, 10, 20, 40, 60]


def _child(mode: str, base: Path, tuned: Path, out: Path, ks: list[float]) -> None:
    """One method in a fresh process; the clock starts once its imports are done (a copy
    imports nothing), and the import time is reported beside it."""
    started = time.perf_counter()
    if mode.startswith("sweep-"):  # sweep-written | sweep-inplace, eval settings from the env
        from sftscope.config import RestoreConfig, RestoreEval
        from sftscope.restore_sweep import run_sweep

        ev = RestoreEval(**json.loads(os.environ["SWEEP_EVAL"]))
        cfg = RestoreConfig(
            base=str(base),
            tuned=tuned,
            out=out,
            k=ks,
            eval=ev,
            device="cpu",
            save=mode == "sweep-written",
        )
        work = lambda: run_sweep(cfg)  # noqa: E731
    elif mode == "copy":
        work = lambda: shutil.copytree(tuned, out)  # noqa: E731
    elif mode == "ours":
        from sftscope.config import RestoreConfig
        from sftscope.params.restore import run_restore

        cfg = RestoreConfig(base=str(base), tuned=tuned, out=out, k=ks)
        work = lambda: run_restore(cfg)  # noqa: E731
    else:
        from safetensors.torch import save_file

        from sftscope.params.reference import reference_restore

        def work() -> None:
            out.mkdir(parents=True)
            method = mode.split("-")[1]  # reference-sort | reference-kth
            for k, state in reference_restore(base, tuned, ks, method=method):
                (out / f"global-top-{k:g}").mkdir()
                save_file(state, str(out / f"global-top-{k:g}" / "model.safetensors"))
                del state

    imports = time.perf_counter() - started
    started = time.perf_counter()
    work()
    print(json.dumps({"wall": time.perf_counter() - started, "imports": imports}))


def _run(mode: str, base: Path, tuned: Path, out: Path, ks: list[float], env=None) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    for folder in (base, tuned):  # warm the page cache the same way for every method
        for f in folder.glob("*.safetensors"):
            with open(f, "rb") as fh:
                while fh.read(1 << 26):
                    pass
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        str(base),
        str(tuned),
        str(out),
        ",".join(f"{k:g}" for k in ks),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})}
    )
    _, status, usage = os.wait4(proc.pid, 0)
    text = proc.stdout.read().decode() if proc.stdout else ""
    if status != 0:
        raise SystemExit(f"{mode} failed (status {status}): {text}")
    timing = json.loads(text.strip().splitlines()[-1])
    return {**timing, "rss_gib": usage.ru_maxrss / 2**20}  # ru_maxrss is in KiB


def _identical(a: Path, b: Path, ks: list[float]) -> bool:
    from sftscope.params.tensors import iter_pairs, open_checkpoint

    for k in ks:
        x = open_checkpoint(a / f"global-top-{k:g}")
        y = open_checkpoint(b / f"global-top-{k:g}")
        for _, s, t in iter_pairs(x, y):
            if s.dtype != t.dtype or not bool((s.view(-1) == t.view(-1)).all()):
                return False
    return True


def build_synthetic(root: Path, params: float, seed: int = 0) -> tuple[Path, Path]:
    """A random bf16 LLaMA of about ``params`` weights and a perturbed copy, tensor by tensor."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sftscope.params.tensors import ShardWriter

    base, tuned = root / "base", root / "tuned"
    if (base / "config.json").exists() and (tuned / "config.json").exists():
        return base, tuned
    hidden, inter, vocab = 2048, 5632, 32000
    per_layer = 4 * hidden * hidden + 3 * hidden * inter
    layers = max(1, round((params - 2 * vocab * hidden) / per_layer))
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=16,
        vocab_size=vocab,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    with torch.device("meta"):
        shapes = {n: tuple(p.shape) for n, p in LlamaForCausalLM(cfg).state_dict().items()}
    plan = [(n, s, "BF16") for n, s in shapes.items()]
    g = torch.Generator().manual_seed(seed)
    writers = {d: ShardWriter(d, plan, max_shard_bytes=2 * 2**30) for d in (base, tuned)}
    for name, shape in shapes.items():
        w = torch.ones(shape) if "norm" in name else torch.randn(shape, generator=g) * 0.02
        moved = torch.rand(shape, generator=g) < 0.5
        delta = torch.randn(shape, generator=g) * 2e-3 * moved
        writers[base].add(name, w.bfloat16())
        writers[tuned].add(name, (w + delta).bfloat16())
        del w, moved, delta
    for d, w in writers.items():
        w.close()
        cfg.save_pretrained(d)
    n = sum(int(torch.Size(s).numel()) for s in shapes.values())
    print(f"built a {n / 1e9:.2f}B-parameter bf16 pair ({layers} layers) in {root}")
    return base, tuned


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, base, tuned, out, ks = sys.argv[2:7]
        _child(mode, Path(base), Path(tuned), Path(out), [float(k) for k in ks.split(",")])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", nargs=2, metavar=("BASE", "TUNED"), help="model pair to compare")
    ap.add_argument("--synthetic", type=float, help="build a bf16 pair of about this many weights")
    ap.add_argument("--k", default=",".join(map(str, PAPER_K)))
    ap.add_argument("--work", type=Path, default=Path("runs/bench-restore"))
    ap.add_argument(
        "--reference",
        default="sort,kth",
        help="reference variants: sort (stable sort per k, the literal reference) "
        "and/or kth (k-th value + index ties: same result, less memory)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the outputs")
    ap.add_argument("--sweep", action="store_true", help="also: written vs in-place eval sweep")
    ap.add_argument("--sweep-data", default="geo")
    ap.add_argument("--sweep-data-dir", default=None)
    ap.add_argument("--sweep-limit", type=int, default=5, help="test items per relation")
    args = ap.parse_args()
    ks = [float(k) for k in args.k.split(",")]
    pairs = []
    if args.pair:
        from sftscope.models.loading import resolve_model

        pairs.append(
            (f"pair {args.pair[1]}", Path(resolve_model(args.pair[0])), Path(args.pair[1]))
        )
    if args.synthetic:
        pairs.append(
            (
                f"synthetic {args.synthetic:g}",
                *build_synthetic(args.work / "synthetic", args.synthetic),
            )
        )
    if not pairs:
        ap.error("give --pair BASE TUNED and/or --synthetic N")
    for label, base, tuned in pairs:  # one run, every pair (each method alone on the machine)
        print(f"== {label}")
        _bench(args, ks, base, tuned)


def _bench(args: argparse.Namespace, ks: list[float], base: Path, tuned: Path) -> None:
    refs = [f"reference-{m}" for m in args.reference.split(",") if m and m != "none"]
    res = {m: _run(m, base, tuned, args.work / m, ks) for m in ("copy", "ours", *refs)}
    sweep = args.sweep and (tuned / "tokenizer.json").exists()
    if args.sweep and not sweep:
        print(f"(no sweep: {tuned} has no tokenizer to evaluate with)")
    if sweep:
        ev = {
            "data": args.sweep_data,
            "data_dir": args.sweep_data_dir,
            "limit_per_relation": args.sweep_limit,
        }
        for m in ("sweep-written", "sweep-inplace"):
            res[m] = _run(m, base, tuned, args.work / m, ks, {"SWEEP_EVAL": json.dumps(ev)})
    for m, r in res.items():
        print(
            f"{m:15s}: {r['wall']:8.1f} s  peak RSS {r['rss_gib']:6.2f} GiB  "
            f"(imports before the clock: {r['imports']:.1f} s)"
        )
    o, cp = res["ours"], res["copy"]
    for m in refs:
        same = _identical(args.work / "ours", args.work / m, ks)
        print(
            f"ours / {m}: wall {o['wall'] / res[m]['wall']:.2f}x, peak RSS "
            f"{o['rss_gib'] / res[m]['rss_gib']:.2f}x; identical tensors: {same}"
        )
    print(
        f"ours / copy of one checkpoint: {o['wall'] / cp['wall']:.1f}x for {len(ks)} outputs "
        f"= {o['wall'] / cp['wall'] / len(ks):.2f}x per output"
    )
    if sweep:
        w, i = res["sweep-written"], res["sweep-inplace"]
        written = args.work / "sweep-written"
        records = [p.relative_to(written) for p in sorted(written.rglob("records.jsonl"))]
        same = bool(records) and all(
            (args.work / "sweep-written" / p).read_bytes()
            == (args.work / "sweep-inplace" / p).read_bytes()
            for p in records
        )
        print(
            f"sweep of {len(ks)} k + the tuned model: written / in place = "
            f"{w['wall'] / i['wall']:.2f}x wall, peak RSS {i['rss_gib']:.2f} vs "
            f"{w['rss_gib']:.2f} GiB; identical eval records ({len(records)} models): {same}"
        )
    if not args.keep:
        for m in res:
            shutil.rmtree(args.work / m, ignore_errors=True)


if __name__ == "__main__":
    main()
