"""What the tests share besides fixtures: the EntityQuestions fixture folder, small datasets,
QA tables and grids written to disk, a perturbed copy of a checkpoint, a grid run in a
subprocess. Fixtures (the tiny model, its engine) are in conftest.py."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

FIXTURES = Path(__file__).parent / "fixtures"
EQ_FIXTURE = FIXTURES / "entityquestions"
SHARED_EQ = Path(__file__).resolve().parents[2] / "shared" / "data" / "entityquestions"


def fixture_questions() -> list[str]:
    texts = []
    for path in sorted(EQ_FIXTURE.glob("*/*.json")):
        for item in json.loads(path.read_text(encoding="utf-8")):
            texts.append(f"Question: {item['question']}\nAnswer: {item['answers'][0]}\n")
    return texts


def write_dataset(root: Path, items: dict[str, dict[str, list]], meta: dict | None = None) -> Path:
    """Write ``{split: {relation: [item, ...]}}`` in the EntityQuestions layout."""
    for split, by_rel in items.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for rel, rows in by_rel.items():
            (root / split / f"{rel}.{split}.json").write_text(json.dumps(rows), encoding="utf-8")
    if meta is not None:
        (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    return root


def perturbed_copy(src: Path, out: Path, seed: int = 0, scale: float = 0.05, dtype=None) -> Path:
    """A "fine-tuned" copy of a checkpoint: half the weights move by seeded noise of varying
    size (so r has exact ties at 0 and a wide range); optionally cast (both sides) to ``dtype``."""
    import torch
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(seed)
    w = load_file(src / "model.safetensors")
    out.mkdir(parents=True)
    noisy = {}
    for k, v in w.items():
        mask = torch.rand(v.shape, generator=g) < 0.5
        noisy[k] = v + mask * scale * torch.randn(v.shape, generator=g) * (
            1 + 10 * torch.rand(1, generator=g)
        )
        if dtype is not None:
            noisy[k] = noisy[k].to(dtype)
    save_file(noisy, str(out / "model.safetensors"))
    for f in src.iterdir():  # config and tokenizer: a loadable model folder
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy2(f, out / f.name)
    return out


def grid_yaml(tmp_path: Path, model: Path, **kw) -> Path:
    """A tiny grid (4 cells: levels 1, mixed x sizes 4, 8) on the EQ fixture, as a YAML file."""
    cfg = {
        "model": str(model),
        "data": "entityquestions",
        "data_dir": str(EQ_FIXTURE),
        "train_limit_per_relation": 12,
        "levels": [1, "mixed"],
        "sizes": [4, 8],
        "seeds": [0],
        "probe": {"method": "likelihood", "templates": 3, "chunk_size": 8, "batch_size": 16},
        "train": {"batch_size": 4, "learning_rate": 1e-3},
        "eval": {"limit_per_relation": 3, "batch_size": 16, "max_new_tokens": 6},
        "device": "cpu",
        "out": str(tmp_path / "run"),
        **kw,
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


GRID_CELLS = ["1-4-0", "1-8-0", "mixed-4-0", "mixed-8-0"]  # grid_yaml's cells


def grid_results(run: Path) -> dict[str, object]:
    """What two runs of :func:`grid_yaml`'s grid must agree on: subsets, eval records, probe."""
    out: dict[str, object] = {}
    for cell in GRID_CELLS:
        out[f"subset {cell}"] = (run / "subsets" / f"{cell}.jsonl").read_text()
        out[f"records {cell}"] = (run / "eval" / cell / "records.jsonl").read_text()
    out["records base"] = (run / "eval" / "base" / "records.jsonl").read_text()
    out["probe"] = (run / "probe" / "train" / "mastery.jsonl").read_text()
    return out


def same_weights(a: Path, b: Path) -> None:
    """Every cell's weights bit-identical in two runs of :func:`grid_yaml`'s grid."""
    import torch
    from safetensors.torch import load_file

    for cell in GRID_CELLS:
        x = load_file(a / "models" / cell / "model.safetensors")
        y = load_file(b / "models" / cell / "model.safetensors")
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), cell


def cli_run(path: Path, *overrides: str, prefix: Sequence[str] = ()) -> subprocess.Popen:
    """``sftscope run PATH`` in a subprocess, its output appended to ``run.log`` beside PATH;
    ``prefix`` runs it through a wrapper (e.g. ``unshare`` for another hostname)."""
    # Same thread count in every run: float reductions (hence greedy outputs) depend on it.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [*prefix, sys.executable, "-m", "sftscope.cli", "run", str(path), *overrides]
    log = open(path.parent / "run.log", "a")  # noqa: SIM115 - a pipe could fill up and block
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


CITIES = ["Paris", "Rome", "Madrid", "Berlin", "Vienna", "Lisbon", "Athens", "Dublin"]
COUNTRIES = ["France", "Italy", "Spain", "Germany", "Austria", "Portugal", "Greece", "Ireland"]
COLUMNS = ["id", "subj", "prop", "obj", "question", "possible_answers", "s_pop"]


def popqa_rows(n: int = 48) -> list[dict]:
    """PopQA's columns: ``possible_answers`` a JSON string, ``s_pop`` the popularity."""
    rows = []
    for i in range(n):
        city, country = CITIES[i % 8], COUNTRIES[i % 8]
        if i % 2:
            rows.append(
                {
                    "id": i,
                    "subj": f"{city} {i}",
                    "prop": "capital of",
                    "obj": country,
                    "question": f"What is {city} {i} the capital of?",
                    "possible_answers": json.dumps([country, country.upper()]),
                    "s_pop": 100 + i,
                }
            )
        else:
            rows.append(
                {
                    "id": i,
                    "subj": f"Person {i}",
                    "prop": "place of birth",
                    "obj": city,
                    "question": f"In what city was Person {i} born?",
                    "possible_answers": json.dumps([city]),
                    "s_pop": i,
                }
            )
    return rows


def write_tsv(path: Path, rows: list[dict], columns: list[str] = COLUMNS) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, delimiter="\t", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def generic_rows() -> list[dict]:
    rows = []
    for i in range(40):
        city, country = CITIES[i % 8], COUNTRIES[i % 8]
        split = "test" if i % 5 == 0 else "dev" if i % 5 == 1 else "train"
        rows.append(
            {
                "question": f"Which country is {city} {i} in?",
                "answers": [country],
                "relation": "where",
                "subject": f"{city} {i}",
                "split": split,
            }
        )
    rows += [
        {
            "question": f"What is the capital of {c}?",
            "answers": [city],
            "relation": "cap",
            "subject": c,
            "split": "test",
            "domain": "out-of-domain",
        }
        for c, city in zip(COUNTRIES, CITIES, strict=True)
    ]
    return rows


def make_adapter(base: Path, out: Path, *, seed: int = 0, **lora) -> tuple[Path, Path]:
    """A LoRA adapter of ``base`` with random (nonzero) factors, and the merged model beside it
    (PEFT's ``merge_and_unload``, saved with the tokenizer): ``(adapter, merged)``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    settings = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear", **lora}
    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, **settings))
    with torch.no_grad():  # big enough to change greedy answers and the selection
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.mul_(4.0)
    adapter, merged = out / "adapter", out / "merged"
    peft_model.save_pretrained(adapter)
    peft_model.merge_and_unload().save_pretrained(merged)
    AutoTokenizer.from_pretrained(base).save_pretrained(merged)
    return adapter, merged


def tiny_audit(base: Path, tuned: Path, out: Path):
    """An audit config sized for a tiny model: P17 and P36 of the EQ fixture, 3 test items per
    relation, the likelihood probe with 2 templates, restore at k = 5 and 20 %."""
    from sftscope.config import AuditConfig

    return AuditConfig(
        base=str(base),
        tuned=tuned,
        data="entityquestions",
        data_dir=EQ_FIXTURE,
        relations=["P17", "P36"],
        probe={"method": "likelihood", "templates": 2, "batch_size": 16},
        eval={"limit_per_relation": 3, "max_new_tokens": 4, "batch_size": 16},
        params={"k": [5, 20]},
        device="cpu",
        out=out,
    )
