"""Reading finished run folders: a grid run's manifest and per-cell tables (for the CLI and the
report), and the summaries an audit is made of, from the stages' own summary files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftscope.errors import SftscopeError
from sftscope.io import read_jsonl
from sftscope.layout import CONCENTRATION, DIFF, RECORDS, REPAIR, SUMMARY, SWEEP, RunLayout
from sftscope.outputs import EvalSummary, KLSummary, RepairSummary, SweepSummary


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
    for cell in cells:
        s = EvalSummary.read_if(layout.eval(cell) / SUMMARY)
        if s is None:
            continue
        ind, ood = s.levels("in_domain"), s.levels("ood")
        rows.append(
            {
                "cell": cell,
                "in_domain_per_level": [v.containment for v in ind.per_level] if ind else [],
                "in_domain_mean": ind.mean_of_levels.containment if ind else None,
                "ood_mean": ood.mean_of_levels.containment if ood else None,
                "in_domain": s.in_domain.containment,
                "ood": s.ood.containment,
                "in_domain_n": s.in_domain.n,
                **_kl_columns(layout.kl(cell)),
            }
        )
    return rows


def _kl_columns(path: Path) -> dict[str, Any]:
    k = KLSummary.read_if(path)
    paper = k.paper if k is not None else None
    full = k.full if k is not None else None
    return {
        "kl_paper": paper.mean if paper else None,
        "kl_paper_std": paper.std if paper else None,
        "kl_paper_n": paper.n if paper else 0,
        "kl_full": full.overall.kl_mean if full else None,
        "kl_full_per_level": [b.kl_mean for b in full.per_level] if full else [None] * 5,
    }


def restore_tables(root: Path) -> dict[str, dict[str, Any]]:
    """Per cell with a parameter-level analysis: concentration shares, the restore sweep, where
    the selected weights sit (per layer / module) and the layer-block restoration."""
    from sftscope.params.where import update_shares

    out: dict[str, dict[str, Any]] = {}
    layout = RunLayout(root)
    for cell_dir in map(layout.params, sorted(layout.names("params"), key=cell_order)):
        entry: dict[str, Any] = {}
        conc = layout.params(cell_dir.name, "diff") / CONCENTRATION
        if conc.exists():
            c = json.loads(conc.read_text(encoding="utf-8"))
            entry["concentration"] = c["rows"]
            if "other" in c and not c["nonzero_base"]:  # (older diffs ranked one population)
                entry["concentration_nonzero"] = c["other"]["rows"]
                entry["zero_base"] = c["zero_base"]
        for key, folder in (("sweep", "restore"), ("blocks", "blocks")):
            sweep = SweepSummary.read_if(cell_dir / folder / SWEEP)
            if sweep is not None:
                entry[key] = sweep.model_dump(mode="json")
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
    if not (base / RECORDS).exists():
        return {}
    before = read_answers(base)  # once, for every cell
    cells = [c for c in layout.names("eval") if c != "base"]
    return {
        c: answer_transitions(before, read_answers(layout.eval(c)))
        for c in sorted(cells, key=cell_order)
        if (layout.eval(c) / RECORDS).exists()
    }


def correct_by_id(folder: Path) -> dict[str, bool]:
    return {r["id"]: bool(r["containment"]) for r in read_jsonl(folder / RECORDS)}


def accuracy(folder: Path) -> dict[str, Any]:
    """One model's containment accuracy: in-domain, OOD, overall, and per base level."""
    s = EvalSummary.read(folder / SUMMARY)
    out: dict[str, Any] = {"prompt": s.prompt}
    for key in ("in_domain", "ood", "overall"):
        out[key] = {"n": s.group(key).n, "accuracy": s.group(key).containment}
    for key, block in (s.by_level or {}).items():
        out[key]["per_level"] = [v.containment for v in block.per_level]
        out[key]["n_per_level"] = [v.n for v in block.per_level]
        out[key]["mean_of_levels"] = block.mean_of_levels.containment
    return out


def kl_summary(path: Path) -> dict[str, Any]:
    """The audit's KL block: the paper KL's statistics, the full KL per level."""
    k = KLSummary.read(path)
    out: dict[str, Any] = {}
    if k.paper is not None:
        keep = {"mean", "std", "n", "level", "prompts"}
        out["paper"] = k.paper.model_dump(mode="json", include=keep)
    if k.full is not None:
        out["full"] = k.full.model_dump(mode="json", include={"overall", "per_level", "prompt"})
    return out


def params_summary(outputs: dict[str, Path]) -> dict[str, Any]:
    """Concentration and change per layer / module (the diff); the sweep and its dev pick, from
    the parts' folders (``diff``, ``restore``, ``blocks``)."""
    out: dict[str, Any] = {}
    if "diff" in outputs:
        folder = outputs["diff"]
        d = json.loads((folder / DIFF).read_text(encoding="utf-8"))
        c = json.loads((folder / CONCENTRATION).read_text(encoding="utf-8"))
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
            out[part] = SweepSummary.read(outputs[part] / SWEEP).model_dump(mode="json")
    if "repair" in outputs:
        out["repair"] = RepairSummary.read(outputs["repair"] / REPAIR).model_dump(mode="json")
    return out
