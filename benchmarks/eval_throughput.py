"""Batched engine vs one-question-at-a-time ``model.generate`` on the same questions.

Same model (bundled SmolLM2 unless --model), same 64 few-shot prompts, greedy, 16 new tokens,
stop at newline. Prints both wall times, the speed ratio (goal >= 5x) and how many outputs agree.

    .venv/bin/python benchmarks/eval_throughput.py [--model smollm2] [--n 64] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import time

import torch

from sftscope.data.dataset import load_items
from sftscope.data.readers import resolve_dataset
from sftscope.evaluate import STOP, exemplar_pool
from sftscope.models.engines import HFEngine, cut_at_stop
from sftscope.models.loading import load_model
from sftscope.prompts import build_prompt, pick_exemplars


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--data", default="geo")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--n", type=int, default=64, help="questions")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    ds = resolve_dataset(args.data, args.data_dir)
    relations = ds.relation_ids()
    per_rel = -(-args.n // len(relations))
    items = load_items(ds, ["test"], relations, limit_per_relation=per_rel)[: args.n]
    shots = pick_exemplars(exemplar_pool(ds, "test", relations), 4, seed=0)
    prompts = [build_prompt(it, "fewshot", shots) for it in items]
    model, tok = load_model(args.model, device=args.device)
    engine = HFEngine(model, tok, batch_size=args.batch_size, progress=False)
    engine.generate(prompts[:2], max_new_tokens=2)  # warm-up

    t0 = time.perf_counter()
    batched = [o[0] for o in engine.generate(prompts, max_new_tokens=16, stop=STOP)]
    t_batched = time.perf_counter() - t0

    t0 = time.perf_counter()
    single = []
    with torch.inference_mode():
        for p in prompts:
            enc = tok(p, return_tensors="pt").to(model.device)
            out = model.generate(
                **enc,
                max_new_tokens=16,
                do_sample=False,
                stop_strings=list(STOP),
                tokenizer=tok,
                pad_token_id=tok.pad_token_id,
            )
            text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            single.append(cut_at_stop(text, STOP))
    t_single = time.perf_counter() - t0

    agree = sum(a == b for a, b in zip(batched, single, strict=True))
    print(
        f"model={args.model} device={args.device} questions={len(prompts)} "
        f"batch_size={args.batch_size} threads={torch.get_num_threads()}"
    )
    print(f"one-at-a-time model.generate: {t_single:7.2f} s  ({len(prompts) / t_single:.2f} q/s)")
    print(f"batched HFEngine.generate:    {t_batched:7.2f} s  ({len(prompts) / t_batched:.2f} q/s)")
    print(f"speed ratio: {t_single / t_batched:.2f}x (goal >= 5x)")
    print(f"identical outputs: {agree}/{len(prompts)}")
    for a, b in zip(batched, single, strict=True):
        if a != b:
            print(f"  differ: batched={a!r} single={b!r}")


if __name__ == "__main__":
    main()
