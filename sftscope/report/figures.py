"""The report's matplotlib figures (Agg backend, PNG, labelled axes with units). Each function
writes its files into ``figdir`` and returns (file name, caption) pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, ax, xlabel: str, ylabel: str, path: Path) -> str:
    """Labels, grid, legend; saved as PNG and closed. Returns the file name."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    _plt().close(fig)
    return path.name


def _size(x: str) -> float | None:
    return float(x) if x.isdigit() else None  # 'all' has no place on a numeric axis


STYLES = (("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-"), ("P", "--"))


def _lines(ax, groups: list[dict[str, Any]], metric, scale: float = 100) -> bool:
    """One error-bar line per training level; markers and dashes differ, so levels whose
    numbers coincide stay visible (a small model often scores two levels alike)."""
    drawn = False
    levels = list(dict.fromkeys(g["level"] for g in groups))
    for i, level in enumerate(levels):
        marker, dash = STYLES[i % len(STYLES)]
        dodge = 1 + 0.015 * (i - (len(levels) - 1) / 2)  # a nudge along the (log) size axis
        pts = [(_size(g["size"]), metric(g)) for g in groups if g["level"] == level]
        pts = [(x, s) for x, s in pts if x is not None and s["mean"] is not None]
        if not pts:
            continue
        ax.errorbar(
            [x * dodge for x, _ in pts],
            [scale * s["mean"] for _, s in pts],
            yerr=[scale * (s["sd"] or 0) for _, s in pts],
            marker=marker,
            linestyle=dash,
            capsize=3,
            markerfacecolor="none" if i % 2 else None,
            label=f"train level {level}",
        )
        drawn = True
    return drawn


def accuracy_vs_size(
    groups: list[dict[str, Any]], figdir: Path, base: dict[str, Any] | None = None
) -> list[tuple[str, str]]:
    """Fig. 2 / Fig. 4 / Fig. 5 analogues: one line per training level, error bars = sd over
    seeds; sizes on a log axis. ``base``: the base model's evaluation row, drawn as a level line
    on the accuracy figures, since whether SFT beat the untuned model is the first question."""
    plt = _plt()
    level4 = base["in_domain_per_level"][4] if base and base["in_domain_per_level"] else None
    specs = [
        (
            "accuracy_vs_size.png",
            "in-domain accuracy, mean of test levels (%)",
            lambda g: g["in_domain_mean"],
            100,
            base and base["in_domain_mean"],
            "In-domain accuracy (mean over test levels) vs training-set size (the paper's Fig. 2).",
        ),
        (
            "level4_vs_size.png",
            "accuracy on level-4 test items (%)",
            lambda g: g["per_level"][4],
            100,
            level4,
            "Accuracy on the test facts the base model knew best vs size (the paper's Fig. 4).",
        ),
        (
            "kl_vs_size.png",
            "paper KL, top-10 first token (nats)",
            lambda g: g["kl_paper"],
            1,
            None,
            "KL(fine-tuned ‖ base) on level-4 facts vs size (the paper's Fig. 5).",
        ),
    ]
    out = []
    for name, ylabel, metric, scale, reference, caption in specs:
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
        if _lines(ax, groups, metric, scale):
            if reference is not None:
                ax.axhline(
                    scale * reference,
                    color="0.45",
                    linestyle=(0, (1, 2)),
                    label="base model (few-shot)",
                )
                caption += " Dotted: the base model."
            ax.set_xscale("log")
            xs = sorted({x for g in groups if (x := _size(g["size"])) is not None})
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.minorticks_off()
            note = " Error bars: sd over seeds; levels nudged sideways so none hides another."
            out.append(
                (
                    _finish(fig, ax, "training facts (log scale)", ylabel, figdir / name),
                    caption + note,
                )
            )
        else:
            plt.close(fig)
    return out


def sweep_curves(cell: str, sweep: dict[str, Any], figdir: Path) -> list[tuple[str, str]]:
    """Table 4 analogue as curves: accuracy vs k % of weights restored (k = 0: unrestored)."""
    plt = _plt()
    rows = [r for r in sweep["rows"] if not r["label"].startswith("layers-")]  # k-sweep only
    rows = sorted(rows, key=lambda r: r["k"])
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for key, label in (("in_domain", "in-domain"), ("ood", "out-of-domain")):
        pts = [(r["k"], 100 * r[key]) for r in rows if r[key] is not None]
        ax.plot([k for k, _ in pts], [v for _, v in pts], marker="o", label=label)
    caption = f"{cell}: accuracy vs share of most-changed weights restored (Table 4)."
    pick = sweep.get("pick")
    if pick and pick["in_domain"] is not None:  # the k chosen on dev, at its test score
        ax.plot(
            [pick["k"]],
            [100 * pick["in_domain"]],
            marker="*",
            markersize=16,
            color="red",
            linestyle="none",
            label=f"picked on dev: k = {pick['k']:g} %",
        )
        caption += " The star marks the k chosen on dev, at its test in-domain accuracy."
    name = _finish(
        fig,
        ax,
        "weights restored to their pre-SFT values (top k %)",
        "containment accuracy (%)",
        figdir / f"restore_{cell}.png",
    )
    return [(name, caption)]


def layer_shares(cell: str, where: dict[str, Any], figdir: Path) -> list[tuple[str, str]]:
    """Table 9 analogue as curves: per decoder layer, its share of the top-k % weights (a few
    k) against its share of all the region's weights (dashed)."""
    layers = [g for g in where["per_layer"] if g["group"] != "other"]
    if not layers:
        return []
    plt = _plt()
    ks = [k for k in where["ks"] if k <= 20][:4] or where["ks"][:1]
    xs = [int(g["group"]) for g in layers]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for k in ks:
        ax.plot(xs, [100 * g["selected"][k] for g in layers], marker=".", label=f"top {k:g} %")
    ax.plot(xs, [100 * g["weights"] for g in layers], "k--", label="share of weights")
    name = _finish(
        fig, ax, "decoder layer", "share of the selected weights (%)", figdir / f"layers_{cell}.png"
    )
    return [(name, f"{cell}: where the most-changed weights sit, per layer (Table 9).")]


def knowledge_curves(curves: list[dict[str, Any]], figdir: Path) -> list[tuple[str, str]]:
    """Known facts kept, unknown facts gained and the paper KL against the training step, one
    line per (training level, size), the band ± sd over seeds."""
    plt = _plt()
    specs = [
        ("knowledge/known_kept", 100, "known facts still answered right (%)", "known_kept"),
        ("knowledge/unknown_gained", 100, "unknown facts now answered right (%)", "unknown_gained"),
        ("knowledge/kl_paper", 1, "paper KL to step 0, level-4 facts (nats)", "kl_paper"),
    ]
    out = []
    for metric, scale, ylabel, stem in specs:
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
        drawn = False
        for c in curves:
            pts = [
                (s, v) for s, v in zip(c["steps"], c[metric], strict=True) if v["mean"] is not None
            ]
            if not pts:
                continue
            xs = [s for s, _ in pts]
            mean = [scale * v["mean"] for _, v in pts]
            sd = [scale * (v["sd"] or 0.0) for _, v in pts]
            (line,) = ax.plot(xs, mean, marker=".", label=c["label"])
            lo = [m - d for m, d in zip(mean, sd, strict=True)]
            hi = [m + d for m, d in zip(mean, sd, strict=True)]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
            drawn = True
        if not drawn:
            plt.close(fig)
            continue
        name = _finish(fig, ax, "training step", ylabel, figdir / f"{stem}_vs_step.png")
        out.append(
            (
                name,
                f"{ylabel[0].upper()}{ylabel[1:]} while training (sftscope's knowledge "
                "callback); band: sd over seeds where there are several.",
            )
        )
    return out
