"""Reading finished run folders: a grid run's manifest and per-cell tables (for the CLI and the
report), and the summaries an audit is made of, from the stages' own summary files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftscope.errors import SftscopeError
from sftscope.io import read_jsonl
from sftscope.layout import RunLayout


def read_manifest(root: Path) -> dict[str, Any]:
    path = RunLayout(root).manifest
    if not path.exists():
        raise SftscopeError(f"{path}: not found (run sftscope run first)")
    return json.loads(path.read_text(encoding="utf-8"))


def cell_order(name: str) -> tuple:
    """Sort key for cell names ``level-size-seed``: base first, sizes numerically, 'all' last."""

    def num(x: str) -> float:
        return int(x) if x.isdigit() else float("inf")

    level, _, rest = name.partition("-")
    size, _, seed = rest.partition("-")
    return (name != "base", level, num(size), num(seed))


def cell_table(root: Path) -> list[dict[str, Any]]:
    """Per-cell accuracy rows from the cells' eval summaries (for the CLI and the report)."""

    rows = []
    layout = RunLayout(root)
    cells = sorted(layout.names("eval"), key=cell_order)
    for path in (layout.eval(c) / "summary.json" for c in cells):
        if not path.exists():
            continue
        s = json.loads(path.read_text(encoding="utf-8"))
        ind, ood = (s.get("by_level", {}).get(k, {}) for k in ("in_domain", "ood"))
        rows.append(
            {
                "cell": path.parent.name,
                "in_domain_per_level": [v["containment"] for v in ind.get("per_level", [])],
                "in_domain_mean": ind.get("mean_of_levels", {}).get("containment"),
                "ood_mean": ood.get("mean_of_levels", {}).get("containment"),
                "in_domain": s["in_domain"]["containment"],
                "ood": s["ood"]["containment"],
                "in_domain_n": s["in_domain"]["n"],
                **_kl_columns(layout.kl(path.parent.name)),
            }
        )
    return rows


def _kl_columns(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {
            "kl_paper": None,
            "kl_paper_std": None,
            "kl_paper_n": 0,
            "kl_full": None,
            "kl_full_per_level": [None] * 5,
        }
    k = json.loads(path.read_text(encoding="utf-8"))
    full, paper = k.get("full", {}), k.get("paper", {"mean": None, "std": None, "n": 0})
    return {
        "kl_paper": paper["mean"],
        "kl_paper_std": paper["std"],
        "kl_paper_n": paper["n"],
        "kl_full": full.get("overall", {}).get("kl_mean"),
        "kl_full_per_level": [b.get("kl_mean") for b in full.get("per_level", [{}] * 5)],
    }


def restore_tables(root: Path) -> dict[str, dict[str, Any]]:
    """Per cell with a parameter-level analysis: concentration shares, the restore sweep, where
    the selected weights sit (per layer / module) and the layer-block restoration."""
    from sftscope.params.where import update_shares

    out: dict[str, dict[str, Any]] = {}
    layout = RunLayout(root)
    for cell_dir in map(layout.params, sorted(layout.names("params"), key=cell_order)):
        entry: dict[str, Any] = {}
        conc = layout.params(cell_dir.name, "diff") / "concentration.json"
        if conc.exists():
            c = json.loads(conc.read_text(encoding="utf-8"))
            entry["concentration"] = c["rows"]
            if "other" in c and not c["nonzero_base"]:  # (older diffs ranked one population)
                entry["concentration_nonzero"] = c["other"]["rows"]
                entry["zero_base"] = c["zero_base"]
        for key, folder in (("sweep", "restore"), ("blocks", "blocks")):
            sweep = cell_dir / folder / "sweep.json"
            if sweep.exists():
                entry[key] = json.loads(sweep.read_text(encoding="utf-8"))
        if "sweep" in entry and (where := update_shares(cell_dir / "restore")):
            entry["where"] = where
        if entry:
            out[cell_dir.name] = entry
    return out


def transition_tables(root: Path, split: str) -> dict[str, dict[str, Any]]:
    """Per cell re-probed after SFT (``transitions: true``): base level -> level after."""
    from sftscope.transitions import probe_transitions

    out = {}
    layout = RunLayout(root)
    for cell in sorted(layout.names("probe_after"), key=cell_order):
        if (layout.probe_after(cell) / "stage.json").exists():
            out[cell] = probe_transitions(layout.probe(split), layout.probe_after(cell))
    return out


def answer_transition_tables(root: Path) -> dict[str, dict[str, Any]]:
    """Per evaluated cell, when the base model was evaluated too: right/wrong before -> after."""
    from sftscope.transitions import answer_transitions, read_answers

    layout = RunLayout(root)
    base = layout.eval("base")
    if not (base / "records.jsonl").exists():
        return {}
    before = read_answers(base)  # once, for every cell
    cells = [c for c in layout.names("eval") if c != "base"]
    return {
        c: answer_transitions(before, read_answers(layout.eval(c)))
        for c in sorted(cells, key=cell_order)
        if (layout.eval(c) / "records.jsonl").exists()
    }


def correct_by_id(folder: Path) -> dict[str, bool]:
    return {r["id"]: bool(r["containment"]) for r in read_jsonl(folder / "records.jsonl")}


def accuracy(folder: Path) -> dict[str, Any]:
    """One model's containment accuracy: in-domain, OOD, overall, and per base level."""
    s = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    out: dict[str, Any] = {"prompt": s["prompt"]}
    for key in ("in_domain", "ood", "overall"):
        out[key] = {"n": s[key]["n"], "accuracy": s[key]["containment"]}
    for key, block in s.get("by_level", {}).items():
        out[key]["per_level"] = [v["containment"] for v in block["per_level"]]
        out[key]["n_per_level"] = [v["n"] for v in block["per_level"]]
        out[key]["mean_of_levels"] = block["mean_of_levels"]["containment"]
    return out


def kl_summary(path: Path) -> dict[str, Any]:
    k = json.loads(Path(path).read_text(encoding="utf-8"))
    out: dict[str, Any] = {}
    if "paper" in k:
        out["paper"] = {key: k["paper"][key] for key in ("mean", "std", "n", "level", "prompts")}
    if "full" in k:
        full = k["full"]
        out["full"] = {
            "overall": full["overall"],
            "per_level": full["per_level"],
            "prompt": full["prompt"],
        }
    return out


def params_summary(outputs: dict[str, Path]) -> dict[str, Any]:
    """Concentration and change per layer / module (the diff); the sweep and its dev pick, from
    the parts' folders (``diff``, ``restore``, ``blocks``)."""
    out: dict[str, Any] = {}
    if "diff" in outputs:
        folder = outputs["diff"]
        d = json.loads((folder / "diff.json").read_text(encoding="utf-8"))
        c = json.loads((folder / "concentration.json").read_text(encoding="utf-8"))
        out["diff"] = {
            "region": d["region"],
            "weights": d["weights"],
            "zero_base": d["zero_base"],
            "concentration": [{"k": r["k"], "share": r["share"]} for r in c["rows"]],
            "concentration_nonzero_base": [
                {"k": r["k"], "share": r["share"]} for r in c.get("other", {}).get("rows", [])
            ],
            "mean_change_per_layer": {k: g["mean"] for k, g in d["per_layer"].items()},
            "mean_change_per_module": {k: g["mean"] for k, g in d["per_module"].items()},
        }
    for part in ("restore", "blocks"):
        if part in outputs:
            out[part] = json.loads((outputs[part] / "sweep.json").read_text(encoding="utf-8"))
    return out
