"""``sftscope restore --eval``: evaluate every restored model, and pick k on dev.

Each output of :func:`sftscope.params.restore.run_restore` — and the unrestored fine-tuned
model, as k = 0 — is evaluated with the SFT prompt on the evaluation split (``OUT/eval/<label>/``,
the usual records and summary, resumable per model). With ``pick_on: dev`` every model is also
evaluated on the dev split, the k with the best dev in-domain accuracy is chosen (ties: the
smaller k, i.e. the fewer restored weights), and the test score at that k is reported: a
"repair my fine-tuned model" procedure that never looks at the test set to choose.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from sftscope.config import EvalConfig, RestoreConfig
from sftscope.errors import SftscopeError
from sftscope.evaluate import run_eval
from sftscope.io import atomic_write_json, replace_dir
from sftscope.params.restore import run_restore

TUNED = "tuned"  # label of the unrestored fine-tuned model (k = 0)


def _headline(summary: dict[str, Any], domain: str) -> float | None:
    """The paper's headline when levels are known (mean of per-level accuracies), else plain
    containment accuracy."""
    block = summary.get("by_level", {}).get(domain)
    if block and block["mean_of_levels"]["containment"] is not None:
        return block["mean_of_levels"]["containment"]
    return summary[domain]["containment"] if summary[domain]["n"] else None


def _evaluate(
    cfg: RestoreConfig, label: str, model: Path, split: str, done: Path | None = None
) -> dict[str, Any]:
    """One model's evaluation, resumed from ``OUT/eval/<label>``; ``done`` is an evaluation of
    the same model with the same settings made elsewhere (the grid's cell eval), copied in."""
    ev = cfg.eval
    assert ev is not None
    out = Path(cfg.out) / "eval" / (label if split == ev.split else f"{label}.{split}")
    if done is not None and (done / "summary.json").exists() and not out.exists():
        staging = out.parent / f".{out.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(done, staging)
        replace_dir(staging, out)
    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text(encoding="utf-8"))
    if not (model / "model.safetensors").exists() and not any(model.glob("model-*.safetensors")):
        raise SftscopeError(f"{model}: no weights to evaluate (deleted by keep_models: false?)")
    settings = ev.model_dump(exclude={"pick_on", "keep_models", "mastery", "split"})
    ecfg = EvalConfig(**settings, model=str(model), prompt="sft", split=split,
                      mastery=ev.mastery if split == ev.split else None, device=cfg.device,
                      trust_remote_code=cfg.trust_remote_code, out=out)  # fmt: skip
    return run_eval(ecfg)


def run_sweep(cfg: RestoreConfig, tuned_eval: Path | None = None) -> dict[str, Any]:
    """Restore, then evaluate each model; returns (and writes ``OUT/sweep.json``) one row per
    model with in-domain / OOD scores, plus the dev pick when asked. ``tuned_eval``: an
    evaluation of the unrestored model on the evaluation split with the same settings, reused
    instead of evaluating it again."""
    ev = cfg.eval
    if ev is None:
        raise ValueError("run_sweep needs cfg.eval")
    selection = run_restore(cfg)
    out = Path(cfg.out)
    models = [(TUNED, 0.0, Path(cfg.tuned))]
    models += [(o["label"], o["k"], out / o["label"]) for o in selection["outputs"]]
    rows = []
    for label, k, folder in models:
        row: dict[str, Any] = {"label": label, "k": k}
        for split in [ev.split] + (["dev"] if ev.pick_on else []):
            reuse = tuned_eval if label == TUNED and split == ev.split else None
            s = _evaluate(cfg, label, folder, split, reuse)
            prefix = "" if split == ev.split else "dev_"
            row[f"{prefix}in_domain"] = _headline(s, "in_domain")
            row[f"{prefix}ood"] = _headline(s, "ood")
        rows.append(row)
        if not ev.keep_models and label != TUNED:
            for f in folder.glob("*.safetensors"):
                f.unlink()
    result: dict[str, Any] = {"split": ev.split, "rows": rows}
    if ev.pick_on:
        scored = [r for r in rows if r["dev_in_domain"] is not None]
        best = max(scored, key=lambda r: (r["dev_in_domain"], -r["k"])) if scored else None
        result["pick"] = best and {"label": best["label"], "k": best["k"],
                                   "dev_in_domain": best["dev_in_domain"],
                                   "in_domain": best["in_domain"], "ood": best["ood"],
                                   "gain_in_domain": _gain(best, rows[0], "in_domain"),
                                   "gain_ood": _gain(best, rows[0], "ood")}  # fmt: skip
    atomic_write_json(out / "sweep.json", result)
    return result


def _gain(row: dict[str, Any], tuned: dict[str, Any], key: str) -> float | None:
    if row[key] is None or tuned[key] is None:
        return None
    return row[key] - tuned[key]
