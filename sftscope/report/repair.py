"""``REPAIR/report/``: the repair comparison as report.md and index.html, with the Pareto
figure (the fine-tune's task against knowledge, one line per method, the dev picks marked),
from ``repair.json`` alone."""

from __future__ import annotations

from pathlib import Path

from sftscope.outputs import RepairPoint, RepairSummary
from sftscope.repair import task_of
from sftscope.report.figures import _finish, _plt
from sftscope.report.page import Block, fmt, write_page

TASK = "task %: the fine-tune's own held-out rows, else in-domain accuracy"


def rule(s: RepairSummary) -> str:
    """How the picks were made, in words."""
    if s.pick_rule.startswith("keep-task"):
        share = float(s.pick_rule.split()[-1])
        return (
            f"the most knowledge among the points keeping {100 * share:g} % of the task gain "
            "over the base on dev"
        )
    return "its best dev task score, the paper's rule"


def knowledge_axis(s: RepairSummary) -> tuple[str, str]:
    """What the knowledge axis shows: the base-known facts kept when the base was probed,
    else out-of-domain accuracy (facts of relations the fine-tune never saw)."""
    if s.tuned["dev"].known_kept is not None:
        return "known_kept", "knowledge: facts the base knew (levels 3-4) still right, %"
    return "ood", "knowledge: out-of-domain accuracy %"


def pareto(s: RepairSummary, figdir: Path) -> list[tuple[str, str]]:
    """Task against knowledge on dev: one line per method through its strengths, the
    unrepaired fine-tune as a star, each method's pick circled."""
    key, label = knowledge_axis(s)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=110)
    picks = {p.label for p in s.picks}

    def xy(p: RepairPoint) -> tuple[float, float] | None:
        x, y = getattr(p, key), task_of(p)
        return None if x is None or y is None else (100 * x, 100 * y)

    for method in dict.fromkeys(p.method for p in s.points):
        pts = [(p, xy(p)) for p in s.points if p.method == method]
        pts = [(p, c) for p, c in pts if c is not None]
        if not pts:
            continue
        (line,) = ax.plot([c[0] for _, c in pts], [c[1] for _, c in pts], marker=".", label=method)
        for p, c in pts:
            if p.label in picks:
                ax.scatter(*c, s=120, facecolors="none", edgecolors=line.get_color(), zorder=3)
    tuned = xy(s.tuned["dev"])
    if tuned is not None:
        ax.scatter(*tuned, marker="*", s=160, color="black", label="unrepaired", zorder=4)
    name = _finish(fig, ax, label, TASK, figdir / "pareto.png")
    return [
        (
            name,
            "Every repair point on dev: the task it keeps against the knowledge it gives "
            "back; circles mark each method's pick (best dev task score), the star the "
            "unrepaired fine-tune. Up and to the right is better.",
        )
    ]


def blocks(s: RepairSummary, figdir: Path) -> list[Block]:
    """The repair run's own page."""
    return [("h1", "Repair: the ways back toward the base, on the same facts")] + section(s, figdir)


def section(s: RepairSummary, figdir: Path) -> list[Block]:
    """The comparison: what was done, the picks on the split, the Pareto figure, every point
    on dev (also the audit's section, with ``audit --repair``)."""
    dev = {p.label: p for p in s.points}
    key, _ = knowledge_axis(s)
    own = s.tuned["dev"].task is not None  # task_data: the task is not the in-domain CBQA
    head = ["method", "strength", "dev task", "task"] + (["in-domain"] if own else [])
    head += ["out-of-domain", "known kept", "facts lost", "facts gained", "McNemar p"]

    def scores(p: RepairPoint) -> list[str]:
        return [fmt(task_of(p))] + ([fmt(p.in_domain)] if own else []) + [fmt(p.ood)]

    rows = [
        [name, "-", fmt(task_of(m["dev"])), *scores(m[s.split]), fmt(m[s.split].known_kept)]
        + ["-", "-", "-"]
        for name, m in (("base", s.base), ("unrepaired", s.tuned))
        if m is not None
    ]
    for p in s.picks:
        rows.append(
            [p.method or "", f"{p.strength:g}", fmt(task_of(dev[p.label])), *scores(p)]
            + [fmt(p.known_kept), str(p.lost), str(p.gained)]
            + ["-" if p.p_value is None else f"{p.p_value:.3g}"]
        )
    sweep = [
        [p.method or "", f"{p.strength:g}", *scores(p), fmt(p.known_kept)]
        + [str(p.lost), str(p.gained)]
        for p in s.points
    ]
    page: list[Block] = [
        ("h2", "Repair methods, compared on the same facts"),
        (
            "p",
            f"Region `{s.region}`. Every method's strengths were applied in place to the "
            f"fine-tuned model and evaluated on dev; each method's pick ({rule(s)}) is "
            f"reported on {s.split}, with the in-domain facts it lost and gained against the "
            "unrepaired model and an exact McNemar test of those flips.",
        ),
        ("p", f"Picks on {s.split}:"),
        ("table", head, rows),
    ]
    page += [("img", *f) for f in pareto(s, figdir)]
    page += [("p", "Every point on dev:"), ("table", head[:2] + head[3:-1], sweep)]
    if key == "ood":
        page.append(
            (
                "p",
                "Without a probe of the base (eval.mastery), knowledge is out-of-domain accuracy.",
            )
        )
    if s.saved:
        page.append(("p", f"Repaired checkpoint written: `{s.saved}`."))
    return page


def write_repair_report(root: Path, summary: RepairSummary) -> Path:
    """``ROOT/report``: report.md, index.html, figures/pareto.png."""
    return write_page(Path(root) / "report", lambda figdir: blocks(summary, figdir))
