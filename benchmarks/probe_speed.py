"""The probe's decode: the KV cache repeated ``n`` times and regrown every step (``dynamic``,
transformers' ``DynamicCache``) against one copy of each prompt with preallocated room for its
samples (``shared``, :mod:`sftscope.models.shared_prefix`), on the bundled SmolLM2.

Each measurement runs in a fresh process of its own, one after the other (run nothing beside
it), and reports the work alone (after the model is loaded and warmed up):

* the question probe (``method: question``, the paper's defaults: few-shot question prompts,
  10 samples at T = 0.7) and the sampling probe (21 mapping templates x 10 samples) on
  geography facts, in facts/s, with the probe's user and system CPU seconds (the system share
  is the kernel's page faults and allocations);
* one generate batch of 64 few-shot prompts x 10 samples (batch size 64), with the process's
  peak RSS above the loaded model's;
* whether the two decodes gave the same R and levels.

    .venv/bin/python benchmarks/probe_speed.py [--question-facts 8] [--sampling-facts 4]
        [--decodes dynamic,shared] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
N_RELATIONS = 8  # of the geography set


def _engine(decode: str):
    from sftscope.models.engines import HFEngine
    from sftscope.models.loading import load_model

    model, tok = load_model("smollm2", device="cpu")
    engine = HFEngine(model, tok, batch_size=32, progress=False, shared_prefix=decode == "shared")
    if decode == "shared" and not engine.shared_prefix:
        raise SystemExit("this model cannot use the shared-prefix decode")
    engine.generate(["Warm-up:"], max_new_tokens=2, temperature=0.7, n=2)
    return engine


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def probe(decode: str, method: str, facts: int, out: Path) -> dict[str, Any]:
    """One probe in this process: facts/s, CPU seconds, R and level per fact."""
    from sftscope.config import ProbeConfig
    from sftscope.io import read_jsonl
    from sftscope.probe import run_probe

    engine = _engine(decode)
    cfg = ProbeConfig(
        model="smollm2",
        data="geo",
        split="train",
        method=method,
        limit_per_relation=-(-facts // N_RELATIONS),
        out=out,
    )
    before, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    run_probe(cfg, engine)
    wall, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    mastery = read_jsonl(out / "mastery.jsonl")
    return {
        "facts": len(mastery),
        "wall": wall,
        "user": after.ru_utime - before.ru_utime,
        "sys": after.ru_stime - before.ru_stime,
        "levels": {r["id"]: (r["level"], r["R"]) for r in mastery},
    }


def batch_peak(decode: str) -> dict[str, Any]:
    """One batch of 64 few-shot prompts x 10 samples: peak RSS above the loaded model's."""
    from sftscope.data.dataset import load_items
    from sftscope.data.readers import resolve_dataset
    from sftscope.prompts import fewshot_prompt

    engine = _engine(decode)
    engine.batch_size = 64
    items = load_items(resolve_dataset("geo"), ("train",), limit_per_relation=9, warn=False)
    shots, questions = items[:4], items[4:68]
    prompts = [fewshot_prompt(q.question, shots) for q in questions]
    base = _rss_mb()
    t = time.perf_counter()
    engine.generate(prompts, max_new_tokens=32, temperature=0.7, n=10, stop=("\n",))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"wall": time.perf_counter() - t, "loaded_mb": base, "peak_mb": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--question-facts", type=int, default=8)
    ap.add_argument("--sampling-facts", type=int, default=4)
    ap.add_argument("--decodes", default="dynamic,shared")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    from sftscope.models.process import in_fresh_process

    work = args.work or Path(tempfile.mkdtemp(prefix="probe-speed-"))
    decodes = args.decodes.split(",")
    runs: dict[str, dict[str, Any]] = {}
    for decode in decodes:
        for method, facts in (("question", args.question_facts), ("sampling", args.sampling_facts)):
            r = in_fresh_process(probe, decode, method, facts, work / decode / method)
            runs[f"{decode} {method}"] = r
            share = r["sys"] / max(r["user"] + r["sys"], 1e-9)
            print(
                f"{decode:>8} {method:>9}: {r['facts'] / r['wall']:.3f} facts/s ({r['facts']} "
                f"in {r['wall']:.1f} s; user {r['user']:.1f} s, sys {r['sys']:.1f} s = "
                f"{share:.0%})"
            )
        b = in_fresh_process(batch_peak, decode)
        runs[f"{decode} batch"] = b
        print(
            f"{decode:>8} 64x10 batch: {b['wall']:.1f} s, peak RSS {b['peak_mb']:.0f} MB "
            f"({b['peak_mb'] - b['loaded_mb']:.0f} MB above the loaded model)"
        )
    if len(decodes) == 2:
        old, new = decodes
        for method in ("question", "sampling"):
            a, b = runs[f"{old} {method}"], runs[f"{new} {method}"]
            speed = (b["facts"] / b["wall"]) / (a["facts"] / a["wall"])
            la, lb = a["levels"], b["levels"]
            levels = sum(la[k][0] != lb[k][0] for k in la)
            moved = [abs(la[k][1] - lb[k][1]) for k in la if la[k][1] != lb[k][1]]
            print(
                f"{method} probe {new} / {old}: {speed:.2f}x facts/s; levels differ on {levels} "
                f"of {len(la)} facts, R on {len(moved)} (largest move {max(moved, default=0):.4f})"
            )
        a, b = runs[f"{old} batch"], runs[f"{new} batch"]
        ratio = (b["peak_mb"] - b["loaded_mb"]) / max(a["peak_mb"] - a["loaded_mb"], 1e-9)
        print(f"64x10 batch peak RSS above the model, {new} / {old}: {ratio:.2f}x")
    print(f"outputs in {work}")


if __name__ == "__main__":
    main()
