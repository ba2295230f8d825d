"""``sftscope report RUN_DIR``: ``report.md`` and a self-contained ``index.html`` (PNG figures
beside it, no server, no network) from a finished run folder.

The page is a list of blocks (heading, paragraph, table, figure) rendered twice, to markdown and
to HTML, so the two never disagree. Built in a staging folder and moved into place.
"""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sftscope.config import GridConfig, TrainRecipe
from sftscope.config.base import counts
from sftscope.io import atomic_write_text, replace_dir
from sftscope.layout import RunLayout
from sftscope.registry import PROBE_METHODS
from sftscope.report.collect import collect
from sftscope.report.figures import accuracy_vs_size, layer_shares, sweep_curves
from sftscope.report.findings import basis_text, findings

Block = tuple  # ("h2", text) | ("p", text) | ("table", header, rows) | ("img", file, caption)


def fmt(s: dict[str, Any] | float | None, scale: float = 100, digits: int = 1) -> str:
    """A spread as 'mean ± sd' (the seeds are a column of their own), a plain number as
    itself; '-' when missing."""
    if isinstance(s, dict):
        if s["mean"] is None:
            return "-"
        text = f"{scale * s['mean']:.{digits}f}"
        if s["sd"] is not None:
            text += f" ± {scale * s['sd']:.{digits}f}"
        return text
    return "-" if s is None else f"{scale * s:.{digits}f}"


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


def to_markdown(page: list[Block]) -> str:
    lines: list[str] = []
    for b in page:
        if b[0] in ("h1", "h2"):
            lines += [("# " if b[0] == "h1" else "## ") + b[1], ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "table":
            lines += ["| " + " | ".join(b[1]) + " |", "|" + "---|" * len(b[1])]
            lines += ["| " + " | ".join(r) + " |" for r in b[2]] + [""]
        elif b[0] == "img":
            lines += [f"![{b[2]}](figures/{b[1]})", "", f"*{b[2]}*", ""]
    return "\n".join(lines)


CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1280px;margin:2em auto;padding:0 1em;"
    "color:#222}table{border-collapse:collapse;margin:1em 0;font-size:14px;display:block;"
    "overflow-x:auto}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "td{white-space:nowrap}td.w{white-space:normal;text-align:left;min-width:8em}th.w{text-align:left}th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}"
    "img{max-width:100%;height:auto}figure{margin:1em 0}code{background:#f3f3f3}"
)


def to_html(page: list[Block], title: str) -> str:
    def inline(text: str) -> str:
        parts = html.escape(text).split("`")  # `code` spans
        return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))

    def prose(c: str) -> bool:  # prose cells wrap and align left, numbers stay on one line
        return re.search(r"[a-z]{4}", c) is not None

    def _td(c: str) -> str:
        return f'<td class="w">{inline(c)}</td>' if prose(c) else f"<td>{inline(c)}</td>"

    body: list[str] = []
    for b in page:
        if b[0] in ("h1", "h2"):
            body.append(f"<{b[0]}>{inline(b[1])}</{b[0]}>")
        elif b[0] == "p":
            body.append(f"<p>{inline(b[1])}</p>")
        elif b[0] == "table":
            left = [any(prose(r[j]) for r in b[2]) for j in range(len(b[1]))]  # column heads
            head = "".join(
                f'<th class="w">{inline(c)}</th>' if w else f"<th>{inline(c)}</th>"
                for c, w in zip(b[1], left, strict=True)
            )
            rows = "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b[0] == "img":
            body.append(
                f'<figure><img src="figures/{html.escape(b[1])}" alt="{inline(b[2])}">'
                f"<figcaption>{inline(b[2])}</figcaption></figure>"
            )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )


def write_page(out: Path, build: Callable[[Path], list[Block]]) -> Path:
    """Write the folder ``out``: report.md and index.html of the blocks ``build(figdir)``
    returns, the figures it drew in ``figdir`` (``out/figures``); built aside, then moved."""
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "figures").mkdir(parents=True)
    page = build(staging / "figures")
    atomic_write_text(staging / "report.md", to_markdown(page))
    atomic_write_text(staging / "index.html", to_html(page, page[0][1]))
    return replace_dir(staging, out)


def write_report(root: Path, out: Path | None = None) -> Path:
    """Write ``OUT`` (default ``RUN/report``): report.md, index.html, figures/*.png."""
    root = Path(root)
    data = collect(root)
    return write_page(
        Path(out) if out else RunLayout(root).report(), lambda figdir: blocks(data, figdir)
    )
