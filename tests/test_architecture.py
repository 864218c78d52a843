"""The layout rules of ARCHITECTURE.md, checked on the source with ``ast`` (nothing is imported):

* the module-level import graph of ``src/difflens`` has no cycle (imports inside functions are the lazy
  imports that keep ``import difflens`` light; they are allowed to point back, and are not counted);
* ``difflens.distributed`` imports nothing from ``difflens.metrics``, at module level or inside functions;
* no file in ``src/`` is longer than 450 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "difflens"
MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved against ``module``)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(module: str, path: Path, known: set[str], module_level_only: bool) -> set[str]:
    """The difflens modules ``module`` imports. ``from pkg import name`` counts as importing ``pkg.name``
    when that is a module, else ``pkg``. Imports under ``if TYPE_CHECKING:`` are not run, so not counted."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)) and (top or not module_level_only):
                if isinstance(child, ast.Import):
                    names = [a.name for a in child.names]
                else:
                    base = _resolve(module, is_package, child)
                    names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in child.names]
                for name in names:
                    while name and name not in known:  # a.b.c where only a.b is a module
                        name = name.rpartition(".")[0]
                    if name.startswith("difflens") and name != module:
                        found.add(name)
            visit(child, inner)

    visit(tree, True)
    return found


def _graph(module_level_only: bool) -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, p, known, module_level_only) for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(graph):
            if v not in index:
                strong(v)
    finally:
        sys.setrecursionlimit(limit)
    return out


def test_the_checker_sees_imports_and_cycles() -> None:
    """The graph builder on this very layout: known edges are found, and a made-up cycle is reported."""
    graph = _graph(module_level_only=True)
    everything = _graph(module_level_only=False)
    assert "difflens.hashing" in graph["difflens.refsets.registry"]
    assert "difflens.metrics.clip" in graph["difflens.metrics.embedding"]
    # generate/api.py imports the sampling module inside regenerate_sample only (lazy)
    assert "difflens.generate.sampling" in everything["difflens.generate.api"]
    assert "difflens.generate.sampling" not in graph["difflens.generate.api"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_at_module_level() -> None:
    cycles = _cycles(_graph(module_level_only=True))
    assert not cycles, "module-level import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_distributed_imports_nothing_from_metrics() -> None:
    graph = _graph(module_level_only=False)
    dist = {m for m in graph if m == "difflens.distributed" or m.startswith("difflens.distributed.")}
    if not dist:
        pytest.fail("difflens.distributed is missing")
    bad = sorted(f"{m} -> {t}" for m in dist for t in graph[m]
                 if t == "difflens.metrics" or t.startswith("difflens.metrics."))
    assert not bad, "distributed imports metrics: " + ", ".join(bad)


def test_no_source_file_over_450_lines() -> None:
    long = {str(p.relative_to(SRC)): n for p in sorted(SRC.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split them along their concepts): {long}"
