"""Rich tables of stage results, shared by the CLI (and the report): plain functions from the
summary dicts the stages write to tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from sftscope.outputs import EvalSummary, LevelScores, ProbeSummary, RepairSummary, SweepSummary


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def num(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def summary_table(summary: EvalSummary, title: str) -> Table:
    """Per-relation accuracy under both criteria, then the in-domain / OOD / overall rows."""
    table = Table(title=title)
    for col in ("relation", "domain", "n", "containment %", "exact %"):
        table.add_column(col, justify="left" if col in ("relation", "domain") else "right")
    for rel, v in summary.per_relation.items():
        table.add_row(rel, v.domain, str(v.n), pct(v.containment), pct(v.exact))
    table.add_section()
    for key, label in (("in_domain", "in-domain"), ("ood", "out-of-domain"), ("overall", "all")):
        v = summary.group(key)
        if v.n:
            table.add_row(label, "", str(v.n), pct(v.containment), pct(v.exact))
    macro = summary.macro_relations
    table.add_row("mean of relations", "", "", pct(macro.containment), pct(macro.exact))
    return table


def level_table(by_level: dict[str, LevelScores]) -> Table:
    """Accuracy per mastery level of the test items and the mean over levels (docs/method.md §4)."""
    table = Table(title="containment accuracy % per mastery level of the test items")
    for col in ("items", *(f"level {k}" for k in range(5)), "mean of levels"):
        table.add_column(col, justify="left" if col == "items" else "right")
    for key, label in (("in_domain", "in-domain"), ("ood", "out-of-domain")):
        block = by_level[key]
        cells = [f"{pct(v.containment)} ({v.n})" for v in block.per_level]
        table.add_row(label, *cells, pct(block.mean_of_levels.containment))
    return table


def histogram_table(summary: ProbeSummary) -> Table:
    """Facts per mastery level and relation (docs/method.md §1.3 style)."""
    title = f"mastery levels: {summary.method} probe, {summary.data}/{summary.split}"
    return _levels_table(title, summary.histogram, "facts")


def _levels_table(
    title: str,
    hist: dict[str, list[int]],
    unit: str,
    extra: dict[str, dict[str, int]] | None = None,
) -> Table:
    """Rows of counts per level (the ``total`` row after a rule), then ``extra`` columns."""
    table = Table(title=title)
    table.add_column("relation")
    for k in range(5):
        table.add_column(f"level {k}", justify="right")
    table.add_column(unit, justify="right")
    for name in extra or {}:
        table.add_column(name, justify="right")
    for rel, counts in hist.items():
        if rel == "total":
            table.add_section()
        cells = [str(c) for c in counts] + [str(sum(counts))]
        for col in (extra or {}).values():
            cells.append(str(sum(col.values()) if rel == "total" else col.get(rel, 0)))
        table.add_row(rel, *cells)
    return table


def select_table(summary: dict[str, Any]) -> Table:
    """``sftscope select``: pairs per level and relation, and how many were picked for
    recommended.jsonl."""
    hist = summary["histogram"]
    title = f"mastery levels of the SFT pairs ({summary['method']} probe, {summary['model']})"
    rows = {**hist["per_relation"], "total": hist["overall"]}
    return _levels_table(title, rows, "pairs", {"picked": summary["recommended"]["composition"]})


def concentration_table(rows: list[dict[str, Any]], region: str) -> Table:
    """Share of Σr held by the top k% of weights (the paper's Table 3)."""
    table = Table(title=f"share of the total relative change held by the top k% ({region})")
    table.add_column("top k %", justify="right")
    table.add_column("weights", justify="right")
    table.add_column("share %", justify="right")
    for row in rows:
        table.add_row(f"{row['k']:g}", str(row["count"]), pct(row["share"]))
    return table


def selection_table(s: dict[str, Any], title: str) -> Table:
    """What ``sftscope restore`` restored, per output."""
    table = Table(title=title)
    for col in ("output", "weights", "% of region", "share of Σr %"):
        table.add_column(col, justify="left" if col == "output" else "right")
    for o in s["outputs"]:
        table.add_row(
            o["label"], str(o["count"]), pct(o["count"] / s["weights"]), pct(o["share_of_r"])
        )
    return table


def sweep_tables(s: SweepSummary, title: str, split: str) -> list[Table | str]:
    """The restore sweep's rows as a table, and the dev pick as a line."""
    dev = any(r.dev_in_domain is not None for r in s.rows)
    table = Table(title=title)
    cols = ["model", "k %", "in-domain", "out-of-domain"]
    cols += ["dev in-domain", "dev out-of-domain"] if dev else []
    for col in cols:
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in s.rows:
        k = "-" if r.k is None else f"{r.k:g}"  # (layer blocks have no k)
        cells = [r.label, k, pct(r.in_domain), pct(r.ood)]
        cells += [pct(r.dev_in_domain), pct(r.dev_ood)] if dev else []
        table.add_row(*cells)
    out: list[Table | str] = [table]
    pick = s.pick
    if pick is not None:
        k = "-" if pick.k is None else f"{pick.k:g}"
        out.append(
            f"picked on dev: {pick.label} (k={k}%): {split} in-domain "
            f"{pct(pick.in_domain)} ({_signed(pick.gain_in_domain)} vs unrestored), "
            f"out-of-domain {pct(pick.ood)} ({_signed(pick.gain_ood)})"
        )
    return out


def transition_table(t: dict[str, Any], title: str, group: str = "level before") -> Table:
    """Knowledge transitions of one tuned model: rows = level (or group) before SFT, columns =
    level after, with the mean R before -> after per row."""
    table = Table(title=title)
    for col in (group, *(f"→ L{k}" for k in range(5)), "facts", "mean R before → after"):
        table.add_column(col, justify="left" if col == group else "right")
    for key, g in t["groups"].items():
        table.add_row(
            key, *map(str, g["after"]), str(g["facts"]), f"{g['r_before']:.2f} → {g['r_after']:.2f}"
        )
    return table


def transition_summary(ts: dict[str, dict[str, Any]], split: str) -> Table:
    """One row per re-probed cell: what became of the facts known (level 3-4) before SFT."""
    table = Table(
        title=f"knowledge transitions of the {split} facts, same probe before and after "
        "SFT: known = level 3-4 (kept: still 3-4, lost: now 0-1), unknown = 0-1 "
        "(gained: now 3-4); mean R of level-4 facts before → after"
    )
    for col in ("cell", "known", "kept %", "lost %", "unknown", "gained %", "L4 mean R"):
        table.add_column(col, justify="left" if col == "cell" else "right")
    for cell, t in ts.items():
        g4 = t["groups"].get("4")
        r4 = f"{g4['r_before']:.2f} → {g4['r_after']:.2f}" if g4 else "-"
        table.add_row(
            cell,
            str(t["known_before"]),
            pct(t["kept"]),
            pct(t["lost"]),
            str(t["unknown_before"]),
            pct(t["gained"]),
            r4,
        )
    return table


def transition_line(cell: str, t: dict[str, Any]) -> str:
    return (
        f"{cell}: of {t['known_before']} known facts (level 3-4 before) {pct(t['kept'])}% stay "
        f"known, {pct(t['lost'])}% fall to level 0-1; of {t['unknown_before']} unknown (0-1) "
        f"{pct(t['gained'])}% become known"
    )


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}"


def grid_tables(root: Path, scope: str, strategy: str, split: str) -> list[Table | str]:
    """A finished grid's results: accuracy per cell, KL per cell, and the parameter level."""
    from sftscope.report.results import cell_table, restore_tables, transition_tables

    out: list[Table | str] = []
    rows = cell_table(root)
    table = Table(title=f"{root}: containment accuracy % (test levels 0-4, mean of levels)")
    for col in ("cell", *(f"L{k}" for k in range(5)), "ID mean", "OOD mean", "ID", "OOD"):
        table.add_column(col, justify="left" if col == "cell" else "right")
    for r in rows:
        table.add_row(
            r["cell"],
            *(pct(v) for v in r["in_domain_per_level"]),
            pct(r["in_domain_mean"]),
            pct(r["ood_mean"]),
            pct(r["in_domain"]),
            pct(r["ood"]),
        )
    out.append(table)
    if any(r["kl_paper_n"] or r["kl_full"] is not None for r in rows):
        table = Table(
            title="KL(fine-tuned || base): paper top-10 at the first token; full "
            "vocabulary per answer token by test level"
        )
        for col in ("cell", "paper mean ± std (n)", *(f"L{k}" for k in range(5)), "all"):
            table.add_column(col, justify="left" if col == "cell" else "right")
        for r in rows:
            if r["cell"] == "base":
                continue
            paper = (
                "-"
                if r["kl_paper"] is None
                else (f"{r['kl_paper']:.3f} ± {r['kl_paper_std']:.3f} ({r['kl_paper_n']})")
            )
            table.add_row(
                r["cell"], paper, *(num(v, 2) for v in r["kl_full_per_level"]), num(r["kl_full"], 2)
            )
        out.append(table)
    transitions = transition_tables(root, split)
    if transitions:
        out.append(transition_summary(transitions, split))
    if len(transitions) <= 4:  # whole matrices only where they stay readable
        for cell, t in transitions.items():
            out.append(
                transition_table(
                    t,
                    f"{cell}: knowledge transitions of the {split} facts "
                    "(same probe before and after SFT)",
                )
            )
    for cell, entry in restore_tables(root).items():
        if "concentration" in entry:
            shares = ", ".join(f"{r['k']:g}%: {pct(r['share'])}" for r in entry["concentration"])
            out.append(f"{cell}: share of Σr held by the top k% of weights: {shares}")
        if "sweep" in entry:
            title = f"{cell}: restore sweep ({scope}, {strategy})"
            out += sweep_tables(SweepSummary.model_validate(entry["sweep"]), title, split)
        if "blocks" in entry:
            blocks = SweepSummary.model_validate(entry["blocks"])
            out += sweep_tables(blocks, f"{cell}: layer blocks restored", split)
    return out


def repair_table(s: RepairSummary) -> Table:
    """Per method, the point picked on dev and its test scores beside the unrepaired model."""
    table = Table(title=f"repair: per method, the dev pick on {s.split} (accuracy %)")
    cols = ["method", "strength", "dev in-domain", "in-domain", "out-of-domain", "known kept"]
    for col in (*cols, "lost", "gained", "McNemar p"):
        table.add_column(col, justify="left" if col == "method" else "right")
    tuned = s.tuned[s.split]
    table.add_row(
        "(unrepaired)",
        "-",
        pct(s.tuned["dev"].in_domain),
        pct(tuned.in_domain),
        pct(tuned.ood),
        pct(tuned.known_kept),
        "-",
        "-",
        "-",
    )
    dev = {p.label: p for p in s.points}
    for p in s.picks:
        table.add_row(
            p.method or "",
            f"{p.strength:g}",
            pct(dev[p.label].in_domain),
            pct(p.in_domain),
            pct(p.ood),
            pct(p.known_kept),
            str(p.lost),
            str(p.gained),
            "-" if p.p_value is None else f"{p.p_value:.3g}",
        )
    return table
