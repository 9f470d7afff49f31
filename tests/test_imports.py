"""The package has no import cycle: every ``import`` in ``src/talkgs`` (module level and inside
functions alike; those under ``if TYPE_CHECKING:`` excepted) points down the layers of
docs/architecture.md. A package importing its own submodules is not a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = "talkgs"


def _modules() -> dict[str, Path]:
    out = {}
    for f in (SRC / PKG).rglob("*.py"):
        name = ".".join(f.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def _targets(mods: dict[str, Path], cur: str, node: ast.AST) -> set[str]:
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = cur.split(".")
            keep = len(parts) - node.level + (1 if mods[cur].name == "__init__.py" else 0)
            base = ".".join(parts[:keep] + ([base] if base else []))
        names = [base] + [f"{base}.{a.name}" for a in node.names]
    found = set()
    for n in names:
        while n and n not in mods:
            n = n.rpartition(".")[0]
        if n and n != cur:
            found.add(n)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for m, f in mods.items():
        tree = ast.parse(f.read_text())
        skip = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip |= {id(sub) for sub in ast.walk(node)}
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
                deps |= _targets(mods, m, node)
        is_pkg = f.name == "__init__.py"
        graph[m] = {d for d in deps if not (is_pkg and d.startswith(m + ".")) and not (m.startswith(d + ".") and mods[d].name == "__init__.py")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w) :] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def test_no_import_cycle_in_the_package() -> None:
    graph = import_graph()
    assert len(graph) > 50 and "talkgs.train.loop" in graph["talkgs.synthesize"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_lower_layers_do_not_import_the_upper_ones() -> None:
    graph = import_graph()
    assert not graph["talkgs.configlib"], "configlib imports nothing of talkgs"
    models = {m for m in graph if m.startswith("talkgs.models")}
    for m in models:
        bad = {d for d in graph[m] if d.startswith(("talkgs.train", "talkgs.eval", "talkgs.pipeline", "talkgs.config"))} - {"talkgs.configlib"}
        assert not bad, f"{m} imports an upper layer: {sorted(bad)}"
