"""A report page as data: a list of blocks (heading, paragraph, table, figure) rendered twice,
to markdown and to self-contained HTML, so the two never disagree; written as a folder
(report.md, index.html, figures/) built aside and moved into place. Shared by the grid's report
and the audit's."""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sftscope.io import atomic_write_text, replace_dir

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
