"""``sftscope report RUN_DIR``: ``report.md`` and a self-contained ``index.html`` (PNG figures
beside it, no server, no network) from a finished run folder.

The page is a list of blocks (:mod:`.page`: heading, paragraph, table, figure) rendered twice,
to markdown and to HTML, so the two never disagree. Built in a staging folder and moved into
place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftscope.config import GridConfig, TrainRecipe
from sftscope.config.base import counts
from sftscope.layout import RunLayout
from sftscope.registry import PROBE_METHODS
from sftscope.report.collect import collect
from sftscope.report.figures import accuracy_vs_size, knowledge_curves, layer_shares, sweep_curves
from sftscope.report.findings import basis_text, findings
from sftscope.report.page import Block, fmt, write_page


def recipe_text(run: TrainRecipe) -> str:
    """The run's SFT recipe, and every setting that departs from the paper's (the defaults of
    :class:`TrainRecipe` are the paper's, docs/method.md §3.2), so a reader never mistakes a
    small-model recipe for the paper's."""
    paper = TrainRecipe()
    kind = f"LoRA r = {run.lora_r}" if run.lora else "full fine-tuning"
    text = (
        f"SFT: {kind}, learning rate {run.learning_rate:g}, batch {run.batch_size}, "
        f"{run.epochs:g} epoch{'s' if run.epochs != 1 else ''}, {run.optimizer}, "
        f"{run.lr_scheduler} schedule."
    )

    def show(v: Any) -> str:
        return (
            f"{v:g}"
            if isinstance(v, float)
            else ("on" if v is True else "off" if v is False else str(v))
        )

    changed = [
        f"{name.replace('_', ' ')} {show(getattr(run, name))} (paper {show(getattr(paper, name))})"
        for name, field in TrainRecipe.model_fields.items()
        if counts(field) and name != "seed" and getattr(run, name) != getattr(paper, name)
    ]
    if changed:
        return (
            f"{text} Departs from the paper's recipe (docs/method.md §3.2): {'; '.join(changed)}."
        )
    return f"{text} The paper's recipe (docs/method.md §3.2)."


def blocks(data: dict[str, Any], figdir: Path) -> list[Block]:
    cfg: GridConfig = data["config"]
    split, probe = data["split"], cfg.probe
    out: list[Block] = [("h1", f"sftscope report: {Path(data['root']).name}")]
    out.append(
        (
            "p",
            f"Base model `{cfg.model}`, data `{cfg.data}`, evaluation on "
            f"the {split} split; levels {cfg.levels}, sizes {cfg.sizes}, "
            f"seeds {cfg.seeds}. Probe: {probe.method} ({probe.templates} templates"
            + (
                f" × {probe.samples} samples at T = {probe.temperature}"
                if PROBE_METHODS.load(probe.method).generations
                else ""
            )
            + (f", calibration `{probe.calibration}`" if probe.calibration else "")
            + ").",
        )
    )
    out.append(("p", recipe_text(cfg.train)))
    if cfg.note:
        out.append(("p", f"Note: {cfg.note}"))
    out.append(("h2", "Findings"))
    out.append(
        (
            "p",
            "Each of the paper's findings, judged by a test on this run's numbers "
            "(sftscope/report/findings.py); differences between cells carry a 95 % Welch "
            "interval over seeds, and one seed gives no interval (inconclusive).",
        )
    )
    out.append(
        (
            "table",
            ["finding", "verdict", "evidence", "test", "rests on"],
            [
                [
                    f["claim"],
                    f["verdict"],
                    "; ".join(f["evidence"]),
                    f["test"],
                    basis_text(f["basis"]),
                ]
                for f in findings(data)
            ],
        )
    )
    out.append(("h2", "Data and mastery levels"))
    for name, s in data["probes"].items():
        rows = [[rel, *map(str, c), str(sum(c))] for rel, c in s.histogram.items()]
        out.append(
            ("table", [f"{name} facts: relation", *(f"L{k}" for k in range(5)), "facts"], rows)
        )
    out.append(("h2", "Accuracy by training level and test level"))
    out.append(
        (
            "p",
            "Containment accuracy %, mean ± sd over seeds; columns "
            "L0–L4 are in-domain test items by their base mastery level, 'mean of "
            "levels' is the paper's headline (docs/method.md §4).",
        )
    )
    header = [
        "train level",
        "size",
        "seeds",
        *(f"L{k}" for k in range(5)),
        "ID mean of levels",
        "OOD mean of levels",
        "ID",
        "OOD",
    ]
    rows = []
    if data["base"]:
        b = data["base"]
        rows.append(
            [
                "base (few-shot)",
                "-",
                "-",
                *(fmt(v) for v in b["in_domain_per_level"]),
                fmt(b["in_domain_mean"]),
                fmt(b["ood_mean"]),
                fmt(b["in_domain"]),
                fmt(b["ood"]),
            ]
        )
    for g in data["groups"]:
        rows.append(
            [
                g["level"],
                g["size"],
                str(len(g["seeds"])),
                *(fmt(v) for v in g["per_level"]),
                *(fmt(g[k]) for k in ("in_domain_mean", "ood_mean", "in_domain", "ood")),
            ]
        )
    out.append(("table", header, rows))
    for name, caption in accuracy_vs_size(data["groups"], figdir, data["base"]):
        out.append(("img", name, caption))
    if data.get("curves"):
        out.append(("h2", "Knowledge while training"))
        out.append(
            (
                "p",
                "The evaluation split's probed facts answered while each cell trained (the "
                "base's known facts, levels 3-4, still right; the KL of level-4 facts' first "
                "answer token from step 0): when fine-tuning starts to overwrite what the model "
                "knew.",
            )
        )
        out += [("img", n, c) for n, c in knowledge_curves(data["curves"], figdir)]
    if any(g["kl_full"]["n"] for g in data["groups"]):
        out.append(("h2", "Token level: KL(fine-tuned ‖ base)"))
        out.append(
            (
                "table",
                [
                    "train level",
                    "size",
                    "paper KL (top-10, first token)",
                    *(f"full KL L{k}" for k in range(5)),
                    "full KL all",
                ],
                [
                    [
                        g["level"],
                        g["size"],
                        fmt(g["kl_paper"], 1, 3),
                        *(fmt(v, 1, 2) for v in g["kl_full_per_level"]),
                        fmt(g["kl_full"], 1, 2),
                    ]
                    for g in data["groups"]
                ],
            )
        )
    if data["answers"]:
        out += answer_blocks(data["answers"])
    if data["transitions"]:
        out.append(("h2", "Knowledge transitions (same probe before and after SFT)"))
        out.append(
            (
                "p",
                "Known = level 3–4 before SFT; kept = still 3–4 after, lost = now 0–1; "
                "unknown = level 0–1 before, gained = now 3–4.",
            )
        )
        out.append(
            (
                "table",
                ["train level", "size", "known", "kept %", "lost %", "unknown", "gained %"],
                [
                    [
                        t["level"],
                        t["size"],
                        str(t["known"]),
                        fmt(t["kept"]),
                        fmt(t["lost"]),
                        str(t["unknown"]),
                        fmt(t["gained"]),
                    ]
                    for t in data["transitions"]
                ],
            )
        )

    for cell, entry in data["params"].items():
        out += param_blocks(cell, entry, figdir)
    v = data["versions"]
    out.append(("p", "Versions: " + ", ".join(f"{k} {v[k]}" for k in sorted(v)) + "."))
    return out


def answer_blocks(groups: list[dict[str, Any]]) -> list[Block]:
    """Kept / lost / gained answers: base model (few-shot) before, each cell after SFT."""
    out: list[Block] = [("h2", "Answer transitions (the same test questions before and after SFT)")]
    out.append(
        (
            "p",
            "In-domain test items the base model answered right (4-shot prompt): "
            "kept = the fine-tuned model (SFT prompt) still answers right, lost = now "
            "wrong; of those the base model answered wrong, gained = now right. Mean ± "
            "sd over seeds; the second table splits kept by the items' base mastery "
            "level (items answered right before, per level, in the header).",
        )
    )
    out.append(
        (
            "table",
            [
                "train level",
                "size",
                "seeds",
                "right before",
                "kept %",
                "lost %",
                "wrong before",
                "gained %",
            ],
            [
                [
                    g["level"],
                    g["size"],
                    str(g["seeds"]),
                    str(g["right"]),
                    fmt(g["kept"]),
                    fmt(g["lost"]),
                    str(g["wrong"]),
                    fmt(g["gained"]),
                ]
                for g in groups
            ],
        )
    )
    right = groups[0]["right_per_level"]
    out.append(
        (
            "table",
            ["train level", "size", *(f"kept % L{k} ({right[k]})" for k in range(5))],
            [[g["level"], g["size"], *(fmt(v) for v in g["kept_per_level"])] for g in groups],
        )
    )
    return out


def param_blocks(cell: str, entry: dict[str, Any], figdir: Path) -> list[Block]:
    """One analysed cell's parameter level: concentration (Table 3), the restore sweep
    (Table 4), where the selected weights sit (Tables 9–10) and layer blocks (Table 11)."""
    out: list[Block] = [("h2", f"Parameter level: {cell}")]
    if "concentration" in entry:
        conc, nonzero = entry["concentration"], entry.get("concentration_nonzero")
        head = ["top k % of weights", "weights", "share of Σr %"]
        if nonzero and entry["zero_base"]["weights"]:
            zero = entry["zero_base"]
            out.append(
                (
                    "p",
                    f"{zero['weights']:,} weights are exactly 0 in the base model; "
                    f"their r = |Δ|/1e-8 makes {fmt(zero['share_of_r'])} % of Σr, so "
                    "the last column ranks the weights with a non-zero base value "
                    "(the paper's Table 3 analogue).",
                )
            )
            out.append(
                (
                    "table",
                    [*head, "share of Σr, non-zero base %"],
                    [
                        [f"{r['k']:g}", str(r["count"]), fmt(r["share"]), fmt(z["share"])]
                        for r, z in zip(conc, nonzero, strict=True)
                    ],
                )
            )
        else:
            out.append(
                ("table", head, [[f"{r['k']:g}", str(r["count"]), fmt(r["share"])] for r in conc])
            )
    if "sweep" in entry:
        out.append(
            (
                "table",
                ["model", "k %", "ID", "OOD"],
                [
                    [r["label"], f"{r['k']:g}", fmt(r["in_domain"]), fmt(r["ood"])]
                    for r in entry["sweep"]["rows"]
                ],
            )
        )
        out += [
            ("img", name, caption) for name, caption in sweep_curves(cell, entry["sweep"], figdir)
        ]
    if "where" in entry:
        w = entry["where"]
        out.append(
            (
                "p",
                f"Where the top-k % weights ({w['scope']} ranking, {w['strategy']}) "
                "sit: each group's share of the selected weights, beside its share of "
                "the region's weights (the paper's Tables 9–10; over-represented groups "
                "hold more large updates than their size).",
            )
        )
        head = ["weights %", *(f"top {k:g} %" for k in w["ks"])]
        for key, label in (("per_module", "module"), ("per_layer", "layer")):
            out.append(
                (
                    "table",
                    [label, *head],
                    [
                        [g["group"], fmt(g["weights"]), *(fmt(g["selected"][k]) for k in w["ks"])]
                        for g in w[key]
                    ],
                )
            )
        out += [("img", name, caption) for name, caption in layer_shares(cell, w, figdir)]
    if "blocks" in entry:
        rows = entry["blocks"]["rows"]
        tuned = next(r for r in rows if r["k"] == 0)

        def delta(r: dict[str, Any], key: str) -> str:
            if r[key] is None or tuned[key] is None:
                return "-"
            return f"{100 * (r[key] - tuned[key]):+.1f}"

        out.append(
            (
                "p",
                "Layer blocks restored entirely to their pre-SFT values (the paper's "
                "Table 11); Δ against the unrestored model, in points.",
            )
        )
        out.append(
            (
                "table",
                ["restored", "ID", "OOD", "Δ ID", "Δ OOD"],
                [
                    [
                        r["label"],
                        fmt(r["in_domain"]),
                        fmt(r["ood"]),
                        delta(r, "in_domain"),
                        delta(r, "ood"),
                    ]
                    for r in rows
                ],
            )
        )
    return out


def write_report(root: Path, out: Path | None = None) -> Path:
    """Write ``OUT`` (default ``RUN/report``): report.md, index.html, figures/*.png."""
    root = Path(root)
    data = collect(root)
    return write_page(
        Path(out) if out else RunLayout(root).report(), lambda figdir: blocks(data, figdir)
    )
