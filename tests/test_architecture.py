"""The layering, checked from the source: front-ends -> engine -> model families, one way, no import cycles.

Every import counts, including the ones inside functions (a lazy import is still a dependency).
Rules:
- engine/ never imports app/ or a model family (families are handed to the registry by app/setup.py);
- models/ never imports app/;
- app/ reaches a family only through the handler the registry gives it (it may import `models` itself,
  whose `families()` finds them, but nothing inside a family package);
- no module imports itself back through others (no import cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "engine", "models")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules `path` imports (a `from package import name` counts as the submodule when it is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, name, known) for name, path in mods.items()}


def top(name: str) -> str:
    return name.split(".")[0]


def test_layers_point_one_way():
    bad = []
    for name, targets in graph().items():
        for target in targets:
            if top(name) == "engine" and top(target) in ("app", "models"):
                bad.append(f"{name} -> {target} (the engine knows no front-end and no model family)")
            if top(name) == "models" and top(target) == "app":
                bad.append(f"{name} -> {target} (a model family knows no front-end)")
            if top(name) == "app" and top(target) == "models" and target != "models":
                bad.append(f"{name} -> {target} (front-ends use a family through its handler only)")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (a depth-first search with colours)."""
    colour, stack = {}, []

    def visit(node):
        colour[node] = "grey"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if colour.get(nxt) == "grey":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in colour:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = "black"
        return None

    for node in sorted(edges):
        if node not in colour:
            found = visit(node)
            if found:
                return found
    return None


def package_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's __init__ importing its own submodules is how packages expose names, not a cycle."""
    return {n: {t for t in ts if not t.startswith(n + ".")} for n, ts in edges.items()}


def test_no_import_cycles():
    cycle = find_cycle(package_edges(graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_what_they_guard_against():
    """The rules above would fail on a back-up import or a cycle (so they cannot pass by accident)."""
    edges = graph()
    assert "engine.engine" in edges and "app.web.handlers" in edges  # the graph sees the tree
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    lazy = ast.parse("def f():\n    from app.web import page\n")
    assert any(isinstance(n, ast.ImportFrom) and n.module == "app.web" for n in ast.walk(lazy))
    known = set(edges)
    probe = ROOT / "engine" / "_probe_for_test.py"
    probe.write_text("def f():\n    from app.web import handlers\n    import models.z_image.keys\n")
    try:
        assert imports_of(probe, "engine._probe_for_test", known) == {"app.web.handlers", "models.z_image.keys"}
    finally:
        probe.unlink()
