"""``AUDIT/report/``: the audit of a base / tuned pair as report.md and a self-contained
index.html with PNG figures (the grid report's page blocks and helpers,
:mod:`sftscope.report.render`), from ``audit.json`` and the stages' own files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftscope.layout import RunLayout
from sftscope.mastery import N_LEVELS
from sftscope.outputs import AuditSummary, RepairSummary
from sftscope.registry import PROBE_METHODS
from sftscope.report.collect import curve
from sftscope.report.figures import _finish, _plt, knowledge_curves
from sftscope.report.page import Block, fmt, write_page
from sftscope.report.render import param_blocks
from sftscope.report.repair import section as repair_section
from sftscope.report.results import restore_tables

LEVELS = [f"L{k}" for k in range(N_LEVELS)]


def transition_heatmap(matrix: list[list[int]], figdir: Path) -> list[tuple[str, str]]:
    """Facts per (level before, level after), each cell annotated with its count."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.4), dpi=110)
    image = ax.imshow(matrix, cmap="Blues")
    top = max(max(row) for row in matrix) or 1
    for b, row in enumerate(matrix):
        for a, n in enumerate(row):
            ax.text(
                a, b, str(n), ha="center", va="center", color="white" if n > top / 2 else "black"
            )
    ax.set_xticks(range(N_LEVELS), LEVELS)
    ax.set_yticks(range(N_LEVELS), LEVELS)
    fig.colorbar(image, ax=ax, label="facts")
    ax.grid(False)
    ax.set_xlabel("mastery level after SFT (tuned model)")
    ax.set_ylabel("mastery level before SFT (base model)")
    fig.tight_layout()
    fig.savefig(figdir / "transitions.png")
    plt.close(fig)
    return [
        (
            "transitions.png",
            "Knowledge transitions: facts by mastery level before (rows) and "
            "after SFT (columns), the same probe of both models. Above the diagonal: gained "
            "mastery; below: lost.",
        )
    ]


def accuracy_by_level(acc: dict[str, dict[str, Any]], figdir: Path) -> list[tuple[str, str]]:
    """Grouped bars: each model's in-domain accuracy per base mastery level."""
    if not all("per_level" in a["in_domain"] for a in acc.values()):
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    width = 0.8 / len(acc)
    for i, (name, a) in enumerate(acc.items()):
        values = [100 * v if v is not None else 0 for v in a["in_domain"]["per_level"]]
        xs = [k + (i - (len(acc) - 1) / 2) * width for k in range(N_LEVELS)]
        ax.bar(xs, values, width, label=f"{name} ({a['prompt']} prompt)")
    ax.set_xticks(range(N_LEVELS), LEVELS)
    name = _finish(
        fig,
        ax,
        "mastery level of the test facts (base model's probe)",
        "in-domain containment accuracy (%)",
        figdir / "accuracy_by_level.png",
    )
    return [
        (
            name,
            "CBQA accuracy of both models per base mastery level (in-domain; a level "
            "without facts shows 0).",
        )
    ]


def change_by_layer_module(diff: dict[str, Any], figdir: Path) -> list[tuple[str, str]]:
    """Mean relative change r per decoder layer and per module."""
    plt = _plt()
    out = []
    for key, label, file in (
        ("mean_change_per_layer", "decoder layer", "change_per_layer.png"),
        ("mean_change_per_module", "module", "change_per_module.png"),
    ):
        groups = {g: v for g, v in diff[key].items() if g not in ("None", "other")}
        if not groups:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
        ax.bar(list(groups), list(groups.values()))
        ax.tick_params(axis="x", labelrotation=45 if key.endswith("module") else 0)
        out.append(
            (
                _finish(fig, ax, label, "mean relative change r", figdir / file),
                f"Where the weights changed: mean relative change per {label} "
                f"(region {diff['region']}; docs/method.md §7.1).",
            )
        )
    return out


def blocks(s: AuditSummary, root: Path, figdir: Path) -> list[Block]:
    probe, t = s.probe, s.transitions
    out: list[Block] = [("h1", f"sftscope audit: {Path(s.tuned).name}")]
    sampled = f" × {probe['samples']} samples at T = {probe['temperature']}"
    out.append(
        (
            "p",
            f"Base `{s.base}`, tuned `{s.tuned}`; data `{s.data}` "
            f"(`{s.data_dir}`), {s.facts} facts of the {s.split} split. Probe: "
            f"{probe['method']} ({probe['templates']} templates or exemplar sets"
            f"{sampled if PROBE_METHODS.load(probe['method']).generations else ''}), the "
            f"same for both models. Prompts: base {s.prompts['base']}, tuned "
            f"{s.prompts['tuned']}." + "".join(f" Note: {n}." for n in s.notes),
        )
    )
    out.append(("h2", "Knowledge transitions (the same probe before and after SFT)"))
    out.append(
        (
            "p",
            f"Known = mastery level 3–4, unknown = 0–1. {t['n_lost']} facts were lost "
            f"(known → unknown: {fmt(t['lost'])} % of {t['known_before']} known) and "
            f"{t['n_gained']} gained (unknown → known: {fmt(t['gained'])} % of "
            f"{t['unknown_before']} unknown); each is listed in transitions.jsonl.",
        )
    )
    groups = t["groups"]
    out.append(
        (
            "table",
            [
                "level before",
                *(f"→ {x}" for x in LEVELS),
                "facts",
                "lost",
                "gained",
                "mean R before → after",
            ],
            [
                [
                    f"L{b}",
                    *map(str, t["matrix"][b]),
                    str(c["facts"]),
                    str(c["lost"]),
                    str(c["gained"]),
                    f"{groups[str(b)]['r_before']:.2f} → {groups[str(b)]['r_after']:.2f}"
                    if str(b) in groups
                    else "-",
                ]
                for b, c in enumerate(t["by_level"])
            ],
        )
    )
    out += [("img", name, cap) for name, cap in transition_heatmap(t["matrix"], figdir)]
    out.append(
        (
            "table",
            ["relation", "known", "lost", "lost %", "unknown", "gained", "gained %"],
            [
                [
                    rel,
                    str(c["known"]),
                    str(c["lost"]),
                    fmt(c["lost"] / c["known"] if c["known"] else None),
                    str(c["unknown"]),
                    str(c["gained"]),
                    fmt(c["gained"] / c["unknown"] if c["unknown"] else None),
                ]
                for rel, c in t["by_relation"].items()
            ],
        )
    )
    out += accuracy_blocks(s, figdir)
    if s.kl:
        out += kl_blocks(s.kl)
    entry = restore_tables(root).get("tuned")
    if entry:
        out += param_blocks("tuned", entry, figdir)
    if "diff" in s.params:
        out += [("img", n, c) for n, c in change_by_layer_module(s.params["diff"], figdir)]
    pick = s.params.get("restore", {}).get("pick")
    if pick:
        out.append(
            (
                "p",
                f"Picked on dev: k = {pick['k']:g} % ({pick['label']}), dev in-domain "
                f"{fmt(pick['dev_in_domain'])} %; on {s.split}: in-domain "
                f"{fmt(pick['in_domain'])} % ({_points(pick['gain_in_domain'])} vs the "
                f"unrestored model), out-of-domain {fmt(pick['ood'])} % "
                f"({_points(pick['gain_ood'])}). The sweep's models are evaluated with "
                f"the tuned model's prompt, {s.prompts['restore sweep']}.",
            )
        )
    if "repair" in s.params:  # audit --repair
        out += repair_section(RepairSummary.model_validate(s.params["repair"]), figdir)
    if s.training:  # the fine-tune was made by sftscope train --watch
        out.append(("h2", "Knowledge while it was trained"))
        out.append(
            (
                "p",
                f"Recorded by the knowledge callback during training ({len(s.training)} "
                "measurements of its watch set, the facts given to `train --watch`, which need "
                "not be this audit's): the base's known facts still answered right, unknown "
                "facts gained, and the KL of level-4 facts' first answer token from step 0.",
            )
        )
        curves = [curve([s.training], label=Path(s.tuned).name)]
        out += [("img", n, c) for n, c in knowledge_curves(curves, figdir)]
    return out


def _points(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f} points"


def accuracy_blocks(s: dict[str, Any], figdir: Path) -> list[Block]:
    """Both models' CBQA accuracy per base level, ID / OOD, and the answers kept and lost."""
    out: list[Block] = [("h2", "Accuracy (closed-book QA, greedy, containment)")]
    rows = []
    for name, a in s.accuracy.items():
        ind, ood = a["in_domain"], a["ood"]
        rows.append(
            [
                name,
                a["prompt"],
                *(fmt(v) for v in ind.get("per_level", [None] * 5)),
                fmt(ind.get("mean_of_levels")),
                fmt(ood.get("mean_of_levels")),
                fmt(ind["accuracy"]),
                fmt(ood["accuracy"]),
                fmt(a["overall"]["accuracy"]),
            ]
        )
    out.append(
        (
            "p",
            "Accuracy %; L0–L4: in-domain test facts by their base mastery level; "
            "'mean of levels' is the paper's headline (docs/method.md §4).",
        )
    )
    out.append(
        (
            "table",
            [
                "model",
                "prompt",
                *LEVELS,
                "ID mean of levels",
                "OOD mean of levels",
                "ID",
                "OOD",
                "all",
            ],
            rows,
        )
    )
    out += [("img", name, cap) for name, cap in accuracy_by_level(s.accuracy, figdir)]
    a = s.answers["all"]
    out.append(
        (
            "p",
            f"Answers (in-domain): of {a['right_before']} the base model answered "
            f"right, the tuned model keeps {fmt(a['kept'])} % and loses "
            f"{fmt(a['lost'])} %; of {a['wrong_before']} answered wrong, it gains "
            f"{fmt(a['gained'])} %.",
        )
    )
    return out


def kl_blocks(kl: dict[str, Any]) -> list[Block]:
    out: list[Block] = [("h2", "Token level: KL(tuned ‖ base)")]
    if "paper" in kl:
        p = kl["paper"]
        out.append(
            (
                "p",
                f"Paper KL (top-10 at the first answer token, level-{p['level']} facts "
                f"that the base answers first; tuned prompt {p['prompts']['tuned']}, "
                f"base {p['prompts']['base']}): {fmt(p['mean'], 1, 3)} ± "
                f"{fmt(p['std'], 1, 3)} nats over {p['n']} facts.",
            )
        )
    if "full" in kl:
        full = kl["full"]
        out.append(
            (
                "p",
                f"Full-vocabulary KL per answer token (gold answer teacher-forced, "
                f"{full['prompt']}) and the change of the gold answer's log-likelihood, "
                "per base mastery level.",
            )
        )
        out.append(
            (
                "table",
                ["level", "facts", "KL mean", "Δ log p(gold)", "gained %"],
                [
                    [
                        f"L{k}",
                        str(b["n"]),
                        fmt(b["kl_mean"], 1, 3),
                        fmt(b["dlogp_mean"], 1, 3),
                        fmt(b["gained"]),
                    ]
                    for k, b in enumerate(full["per_level"])
                ]
                + [
                    [
                        "all",
                        str(full["overall"]["n"]),
                        fmt(full["overall"]["kl_mean"], 1, 3),
                        fmt(full["overall"]["dlogp_mean"], 1, 3),
                        fmt(full["overall"]["gained"]),
                    ]
                ],
            )
        )
    return out


def write_audit_report(root: Path, summary: AuditSummary) -> Path:
    """``ROOT/report``: report.md, index.html, figures/*.png."""
    root = Path(root)
    return write_page(RunLayout(root).report(), lambda figdir: blocks(summary, root, figdir))
