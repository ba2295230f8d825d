"""Sampling protocol (paper) vs the calibrated likelihood estimator, on geography facts.

Draws a seeded sample of geography train facts, splits it into a calibration part and a
disjoint evaluation part, probes both with the paper's sampling protocol (21 templates x 10
samples, T=0.7, 32 tokens) and with the likelihood estimator, fits the estimator's thresholds on
the calibration part, and reports on the evaluation part: level agreement, Spearman rho of R-hat
vs R, and the compute ratio (wall time, forward tokens). Probe folders are resumable, so a long
run can be interrupted and continued. Optionally also times the sampling protocol without its
early exit on a few facts (same R expected, ratio of wall times).

    .venv/bin/python benchmarks/probe_agreement.py --calib 60 --eval 300 --out runs/agreement

Facts are probed in blocks of --block (60) facts, each its own resumable folder; the seeded
sample is prefix-stable, so a larger --calib/--eval reuses the blocks an earlier run probed.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from sftscope.calibration import agreement_matrix, calibrate
from sftscope.config import ProbeConfig
from sftscope.data.dataset import load_items
from sftscope.data.readers import resolve_dataset
from sftscope.io import read_jsonl
from sftscope.mastery import level_of
from sftscope.models.engines import HFEngine
from sftscope.models.loading import load_model
from sftscope.probe import run_probe
from sftscope.stats import spearman


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--calib", type=int, default=150, help="facts to calibrate on")
    ap.add_argument("--eval", type=int, default=300, help="facts to evaluate on (disjoint)")
    ap.add_argument(
        "--no-exit-facts",
        type=int,
        default=0,
        help="also time the sampling protocol without early exit on this many facts",
    )
    ap.add_argument(
        "--naive-facts",
        type=int,
        default=0,
        help="also time a naive sampling probe (model.generate per prompt, "
        "num_return_sequences, no batching across prompts, no early exit) on this many facts",
    )
    ap.add_argument("--block", type=int, default=60, help="facts per resumable probe folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("runs/agreement"))
    args = ap.parse_args()

    ds = resolve_dataset("geo")
    items = load_items(ds, ["train"])
    n = args.calib + args.eval
    if n % args.block:
        ap.error(f"--calib + --eval ({n}) must be a multiple of --block ({args.block})")
    # random.sample draws a prefix-stable sample here (set-based selection for n << 28k), so
    # a larger run reuses every block of facts an earlier run probed.
    picked = random.Random(args.seed).sample(items, n)
    model, tok = load_model(args.model, device="cpu")
    engine = HFEngine(model, tok, batch_size=args.batch_size, progress=False)
    base = dict(
        model=args.model,
        data="geo",
        split="train",
        batch_size=args.batch_size,
        chunk_size=8,
        seed=args.seed,
        device="cpu",
    )
    samp: dict[str, dict] = {}  # keyed by position in ``picked``
    lik: dict[str, dict] = {}
    totals = {
        m: {"wall_seconds": 0.0, "forward_tokens": 0, "facts": 0}
        for m in ("sampling", "likelihood")
    }
    for b in range(n // args.block):
        block = picked[b * args.block : (b + 1) * args.block]
        root = args.out if b == 0 else args.out / f"block-{b}"
        # The probes take relation/limit filters, not id lists: write the block as a dataset view.
        view = _write_view(ds, block, root / "data")
        pos = {vid: str(b * args.block + k) for k, vid in enumerate(_view_ids(block))}
        for method, store in (("sampling", samp), ("likelihood", lik)):
            cfg = ProbeConfig(**base, data_dir=view, method=method, out=root / method)
            summary = run_probe(cfg, engine=engine)
            for key in ("wall_seconds", "forward_tokens"):
                totals[method][key] += getattr(summary, key) or 0
            totals[method]["facts"] += summary.n_probed
            for r in read_jsonl(root / method / "mastery.jsonl"):
                store[pos[r["id"]]] = r
    ids = {
        "calib": [str(i) for i in range(args.calib)],
        "eval": [str(i) for i in range(args.calib, n)],
    }
    # Calibrate on the calibration ids only.
    calib_dir = args.out / "calib"
    for name, rows in (("sampling", samp), ("likelihood", lik)):
        (calib_dir / name).mkdir(parents=True, exist_ok=True)
        text = "".join(
            json.dumps(rows[i]) + "\n" for i in ids["calib"] if rows[i]["level"] is not None
        )
        (calib_dir / name / "mastery.jsonl").write_text(text)
    cal = calibrate(calib_dir / "sampling", calib_dir / "likelihood", args.out / "calibration.json")
    ev = [i for i in ids["eval"] if samp[i]["level"] is not None and lik[i]["R"] is not None]
    pred = [level_of(lik[i]["R"], cal["thresholds"]) for i in ev]
    ref = [samp[i]["level"] for i in ev]
    agree = sum(p == r for p, r in zip(pred, ref, strict=True)) / len(ev)
    within1 = sum(abs(p - r) <= 1 for p, r in zip(pred, ref, strict=True)) / len(ev)
    rho = spearman([lik[i]["R"] for i in ev], [samp[i]["R"] for i in ev])
    print(f"facts: calibration {len(ids['calib'])}, evaluation {len(ev)} (geography train)")
    s, l_ = totals["sampling"], totals["likelihood"]
    for name, t in (("sampling protocol", s), ("likelihood       ", l_)):
        rate = t["facts"] / t["wall_seconds"]
        print(
            f"{name}: {t['wall_seconds']:.0f} s for {t['facts']} facts ({rate:.3f} facts/s), "
            f"{t['forward_tokens']} forward tokens"
        )
    wall = s["wall_seconds"] / l_["wall_seconds"]
    toks = s["forward_tokens"] / l_["forward_tokens"]
    print(f"compute ratio (likelihood / sampling): wall 1/{wall:.0f}, tokens 1/{toks:.0f}")
    print(
        f"calibrated thresholds: {[round(t, 5) for t in cal['thresholds']]} "
        f"(agreement on calibration set {100 * cal['agreement']:.1f}%)"
    )
    print(
        f"level agreement on evaluation set: {100 * agree:.1f}% "
        f"(within one level {100 * within1:.1f}%)"
    )
    print(f"Spearman rho(R-hat, R): {rho:.3f}")
    print("confusion (rows: sampling level, cols: likelihood level):")
    for k, row in enumerate(agreement_matrix(pred, ref)):
        print(f"  {k}: {row}")
    print("sampling-level histogram (evaluation set):", [ref.count(k) for k in range(5)])
    view = args.out / "data"  # the speed comparisons use the first block's facts
    if args.no_exit_facts:
        _early_exit_speed(args, base, view, engine)
    if args.naive_facts:
        _naive_speed(args, base, view, engine)


def _naive_speed(args, base: dict, view: Path, engine: HFEngine) -> None:
    """The protocol as one would first write it: ``model.generate`` per prompt with
    ``num_return_sequences``; R agrees in distribution only (other random streams)."""
    import time

    import torch

    from sftscope.data.matching import contains_answer
    from sftscope.data.templates import fill, load_templates

    cfg = ProbeConfig(
        **{**base, "chunk_size": 10_000},
        data_dir=view,
        method="sampling",
        out=args.out / "naive-optimised",
    )
    cfg = _first_n(cfg, args.naive_facts)
    fast = run_probe(cfg, engine=engine)
    items = load_items(resolve_dataset("geo", cfg.data_dir), ["train"])
    table = load_templates("geo")
    model, tok = engine.model, engine.tokenizer
    torch.manual_seed(args.seed)
    started, naive_r = time.perf_counter(), []
    for it in items:
        correct = total = 0
        for t in table[it.relation].mapping[: cfg.templates]:
            ids = tok(fill(t, it.subject or ""), return_tensors="pt")
            with torch.inference_mode():
                out = model.generate(
                    **ids,
                    do_sample=True,
                    temperature=cfg.temperature,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=cfg.max_new_tokens,
                    num_return_sequences=cfg.samples,
                    pad_token_id=tok.pad_token_id,
                )
            texts = tok.batch_decode(out[:, ids["input_ids"].shape[1] :], skip_special_tokens=True)
            correct += sum(contains_answer(x, it.accepted) for x in texts)
            total += len(texts)
        naive_r.append(correct / total)
    t_naive = time.perf_counter() - started
    fast_r = [r["R"] for r in read_jsonl(cfg.out / "mastery.jsonl")]
    gap = sum(abs(a - b) for a, b in zip(naive_r, fast_r, strict=True)) / len(fast_r)
    same_level = sum(
        level_of(a, cfg.thresholds) == level_of(b, cfg.thresholds)
        for a, b in zip(naive_r, fast_r, strict=True)
    )
    print(
        f"naive vs optimised sampling probe on {len(items)} facts: {t_naive:.1f} s -> "
        f"{fast.wall_seconds} s ({t_naive / fast.wall_seconds:.2f}x); mean |R diff| "
        f"{gap:.3f} (sampling noise), same level {same_level}/{len(items)}"
    )


def _early_exit_speed(args, base: dict, view: Path, engine: HFEngine) -> None:
    """Same facts, same seed, with and without early exit: R must match, wall times differ."""
    runs = {}
    for flag in (True, False):
        cfg = ProbeConfig(
            **{**base, "chunk_size": 10_000},
            data_dir=view,
            method="sampling",
            early_exit=flag,
            out=args.out / f"exit-{flag}",
        )
        cfg = cfg.model_copy(update={"relations": None})
        runs[flag] = run_probe(_first_n(cfg, args.no_exit_facts), engine=engine)
    same = [r["R"] for r in read_jsonl(args.out / "exit-True" / "mastery.jsonl")] == [
        r["R"] for r in read_jsonl(args.out / "exit-False" / "mastery.jsonl")
    ]
    t_on, t_off = runs[True].wall_seconds, runs[False].wall_seconds
    print(
        f"early exit on {args.no_exit_facts} facts: {t_off} s -> {t_on} s "
        f"({t_off / t_on:.2f}x), identical R: {same}"
    )


def _first_n(cfg: ProbeConfig, n: int) -> ProbeConfig:
    view = Path(cfg.data_dir)
    sub = view.parent / f"first-{n}"
    if not sub.exists():
        ds = resolve_dataset("geo", view)
        _write_view(ds, load_items(ds, ["train"])[:n], sub)
    return cfg.model_copy(update={"data_dir": sub})


def _view_ids(items) -> list[str]:
    """Ids the items get in the view folder: per relation, in the given order."""
    seen: dict[str, int] = {}
    out = []
    for it in items:
        out.append(f"{it.relation}/train/{seen.get(it.relation, 0)}")
        seen[it.relation] = seen.get(it.relation, 0) + 1
    return out


def _write_view(ds, items, root: Path) -> Path:
    """The chosen facts as a dataset folder (same relations metadata, subject kept)."""
    if (root / "dataset.json").exists():
        return root
    (root / "train").mkdir(parents=True, exist_ok=True)
    meta = {"name": "geo", "relations": [r.model_dump(mode="json") for r in ds.relations.values()]}
    by_rel: dict[str, list] = {r: [] for r in ds.relations}
    for it in items:
        by_rel[it.relation].append(
            {"question": it.question, "answers": list(it.answers), "subject": it.subject}
        )
    for rel, rows in by_rel.items():
        (root / "train" / f"{rel}.train.json").write_text(json.dumps(rows, ensure_ascii=False))
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


if __name__ == "__main__":
    main()
