"""The vLLM engine against the HF engine: sampling-probe facts/s and eval questions/s.

Per model (the bundled SmolLM2; ``--models smollm2,llama-1b`` adds the random-init ~1.2B LLaMA
of ``benchmarks/gpu_path.py``, on GPUs), each engine runs in a fresh process of its own (vLLM
keeps one model per process) on the same device and the same geography facts:

* probe: the sampling probe, by default the paper's protocol (21 templates x 10 samples at
  T = 0.7, 32 tokens; the HF engine with its early exit), in facts/s;
* eval: few-shot greedy CBQA, 16 tokens, in questions/s;

timed after the model is loaded (the load is printed too). Then vLLM / HF for both rates, the
share of equal greedy predictions, and the probe levels' agreement with the mean |delta R|
(same protocol, other random draws). Needs vLLM: ``make test-vllm`` builds ``.venv-vllm``.

    .venv-vllm/bin/python benchmarks/engine_throughput.py [--models smollm2] [--facts 16]
        [--questions 120] [--templates 21] [--samples 10] [--max-new-tokens 32]
        [--device auto] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ENGINES = ("hf", "vllm")
N_RELATIONS = 8  # of the geography set


def measure(engine_name: str, model: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One engine: load, then the probe and the eval, each timed; in its own process."""
    from sftscope.config import EvalConfig, ProbeConfig
    from sftscope.evaluate import run_eval
    from sftscope.io import read_jsonl
    from sftscope.models.factory import EngineRequest, make_engine
    from sftscope.probe import run_probe

    out = work / engine_name
    started = time.perf_counter()
    request = EngineRequest(model, args.device, "auto", progress=False)
    engine = make_engine(engine_name, request)
    engine.generate(["Warm-up:"], max_new_tokens=2)  # vLLM builds its LLM on first use
    loaded = time.perf_counter() - started
    probe = ProbeConfig(
        model=model,
        data="geo",
        split="train",
        limit_per_relation=-(-args.facts // N_RELATIONS),
        templates=args.templates,
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        engine=engine_name,
        out=out / "probe",
    )
    t = time.perf_counter()
    run_probe(probe, engine)
    probe_s = time.perf_counter() - t
    per_relation = -(-args.questions // N_RELATIONS)
    ev = EvalConfig(
        model=model,
        data="geo",
        split="test",
        engine=engine_name,
        limit_per_relation=per_relation,
        out=out / "eval",
    )
    t = time.perf_counter()
    run_eval(ev, engine)
    eval_s = time.perf_counter() - t
    mastery = read_jsonl(out / "probe" / "mastery.jsonl")
    records = read_jsonl(out / "eval" / "records.jsonl")
    return {
        "info": engine.info,
        "load_s": loaded,
        "facts": len(mastery),
        "probe_s": probe_s,
        "questions": len(records),
        "eval_s": eval_s,
        "levels": {r["id"]: (r["level"], r["R"]) for r in mastery},
        "predictions": [r["prediction"] for r in records],
    }


def compare(model_label: str, runs: dict[str, dict[str, Any]]) -> None:
    hf, vl = runs["hf"], runs["vllm"]
    print(f"\n{model_label} on {vl['info']['device']} (vllm {vl['info']['version']})")
    print(f"{'engine':8}{'load s':>9}{'probe facts/s':>15}{'eval q/s':>10}")
    rates = {}
    for name, r in runs.items():
        rates[name] = (r["facts"] / r["probe_s"], r["questions"] / r["eval_s"])
        print(f"{name:8}{r['load_s']:9.1f}{rates[name][0]:15.3f}{rates[name][1]:10.2f}")
    print(
        f"vllm / hf: probe {rates['vllm'][0] / rates['hf'][0]:.2f}x, "
        f"eval {rates['vllm'][1] / rates['hf'][1]:.2f}x"
    )
    same = sum(a == b for a, b in zip(hf["predictions"], vl["predictions"], strict=True))
    print(f"greedy predictions equal: {same}/{len(hf['predictions'])}")
    ids = [i for i, (level, _) in hf["levels"].items() if level is not None]
    agree = sum(hf["levels"][i][0] == vl["levels"][i][0] for i in ids)
    delta = sum(abs(hf["levels"][i][1] - vl["levels"][i][1]) for i in ids) / max(len(ids), 1)
    print(f"probe levels agree: {agree}/{len(ids)}, mean |dR| {delta:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2", help="smollm2, llama-1b (comma-separated)")
    ap.add_argument("--facts", type=int, default=16, help="facts probed")
    ap.add_argument("--questions", type=int, default=120, help="questions evaluated")
    ap.add_argument("--templates", type=int, default=21)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", type=Path, default=None, help="folder for outputs (default: temp)")
    args = ap.parse_args()

    from sftscope.models.factory import check_engine
    from sftscope.models.process import in_fresh_process

    check_engine("vllm")
    work = args.work or Path(tempfile.mkdtemp(prefix="engine-bench-"))
    for label in args.models.split(","):
        model = label
        if label == "llama-1b":
            sys.path.insert(0, str(Path(__file__).parent))
            from gpu_path import build_llama

            from sftscope.models.loading import load_tokenizer

            model = str(build_llama(work / "llama-1b", load_tokenizer("smollm2")))
        runs = {e: in_fresh_process(measure, e, model, args, work / label) for e in ENGINES}
        compare(label, runs)
        (work / label / "runs.json").write_text(json.dumps(runs, indent=1, default=str))
    print(f"\noutputs in {work}")


if __name__ == "__main__":  # the engines' processes are spawned: they import this module
    main()
