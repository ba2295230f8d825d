"""The layer rule (docs/architecture.md): cli > pipeline > report > stages > params / models /
data > foundation. An import may point to its own layer or a lower one, never up; a stage module
never imports the pipeline; and no modules import each other in a circle. Every import counts,
those inside functions too (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import sftscope

ROOT = Path(sftscope.__file__).parent
FOUNDATION = {"config", "registry", "io", "layout", "errors", "paths", "stats"}
WINGS = {"cli": 5, "pipeline": 4, "report": 3, "params": 1, "models": 1, "data": 1}
STAGES = 2  # any other module or package at the root: a stage, its arithmetic, the testbed
NAMES = {
    5: "cli",
    4: "pipeline",
    3: "report",
    2: "stages",
    1: "params/models/data",
    0: "foundation",
}


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ["sftscope", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    if not top or top in FOUNDATION:
        return 0
    return WINGS.get(top, STAGES)


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the sftscope modules it imports (a name imported from a package counts as
    its submodule when there is one)."""
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "sftscope"}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] != "sftscope":
                    continue
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in mods else node.module)
        graph[name] = {d for d in deps if d != name and d in mods}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_imports_never_point_up_a_layer() -> None:
    graph = imports(modules())
    upward = [
        f"{m} ({NAMES[layer(m)]}) imports {d} ({NAMES[layer(d)]})"
        for m, deps in sorted(graph.items())
        for d in sorted(deps)
        if layer(d) > layer(m)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles() -> None:
    found = cycles(imports(modules()))
    assert not found, "\n".join(" <-> ".join(c) for c in found)


def test_the_rule_sees_every_wing() -> None:
    """The check is not vacuous: each wing has modules, and the graph has edges."""
    mods = modules()
    assert {layer(m) for m in mods} == set(NAMES)
    assert sum(len(d) for d in imports(mods).values()) > 200
