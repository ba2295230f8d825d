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


def _size(x: str) -> float | None:
    return float(x) if x.isdigit() else None  # 'all' has no place on a numeric axis


def _lines(ax, groups: list[dict[str, Any]], metric, scale: float = 100) -> bool:
    drawn = False
    for level in dict.fromkeys(g["level"] for g in groups):
        pts = [(_size(g["size"]), metric(g)) for g in groups if g["level"] == level]
        pts = [(x, s) for x, s in pts if x is not None and s["mean"] is not None]
        if not pts:
            continue
        ax.errorbar([x for x, _ in pts], [scale * s["mean"] for _, s in pts],
                    yerr=[scale * (s["sd"] or 0) for _, s in pts], marker="o", capsize=3,
                    label=f"train level {level}")  # fmt: skip
        drawn = True
    return drawn


def accuracy_vs_size(groups: list[dict[str, Any]], figdir: Path) -> list[tuple[str, str]]:
    """Fig. 2 / Fig. 4 / Fig. 5 analogues: one line per training level, error bars = sd over
    seeds; sizes on a log axis."""
    plt = _plt()
    specs = [
        ("accuracy_vs_size.png", "in-domain accuracy, mean of test levels (%)",
         lambda g: g["in_domain_mean"], 100,
         "In-domain accuracy (mean over test levels) vs training-set size (PAPER.md Fig. 2)."),
        ("level4_vs_size.png", "accuracy on level-4 test items (%)", lambda g: g["per_level"][4],
         100, "Accuracy on the test facts the base model knew best vs size (PAPER.md Fig. 4)."),
        ("kl_vs_size.png", "paper KL, top-10 first token (nats)", lambda g: g["kl_paper"], 1,
         "KL(fine-tuned ‖ base) on level-4 facts vs size (PAPER.md Fig. 5)."),
    ]  # fmt: skip
    out = []
    for name, ylabel, metric, scale, caption in specs:
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
        if _lines(ax, groups, metric, scale):
            ax.set_xscale("log")
            xs = sorted({x for g in groups if (x := _size(g["size"])) is not None})
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.minorticks_off()
            ax.set_xlabel("training facts (log scale)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(figdir / name)
            out.append((name, caption))
        plt.close(fig)
    return out


def sweep_curves(cell: str, sweep: dict[str, Any], figdir: Path) -> list[tuple[str, str]]:
    """Table 4 analogue as curves: accuracy vs k % of weights restored (k = 0: unrestored)."""
    plt = _plt()
    rows = [r for r in sweep["rows"] if not r["label"].startswith("layers-")]  # k-sweep only
    rows = sorted(rows, key=lambda r: r["k"])
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for key, label in (("in_domain", "in-domain"), ("ood", "out-of-domain")):
        ax.plot([r["k"] for r in rows], [100 * r[key] for r in rows], marker="o", label=label)
    ax.set_xlabel("weights restored to their pre-SFT values (top k %)")
    ax.set_ylabel("containment accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    name = f"restore_{cell}.png"
    fig.savefig(figdir / name)
    plt.close(fig)
    return [(name, f"{cell}: accuracy vs share of most-changed weights restored (Table 4).")]
