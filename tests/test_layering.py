"""The import graph of ``src/particlescale``: every import runs downward and no modules
import each other in a circle.

Layers, top to bottom (a module may import its own layer's package and anything below)::

    testing    testing (helpers the tests and benchmarks share: scripted models, live servers)
    faces      cli, server, __main__
    eval       eval (datasets, grading, sweeps, reports, training of value heads)
    viewer     the trace viewer (HTML from traces; the harness and the CLI call it)
    api        api (asolve: the one path every face uses), the package root
    wiring     wiring (spec strings -> a checked generator and reward, for every face)
    algorithms algorithms
    smc        smc
    edge       backends, rewards, models, hf_export (talk to models; never import upward)
    base       types, protocols, errors, answers, aggregation, prompts, the package root

Algorithms never import an edge module; edge modules never import algorithms or above.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "particlescale"

RANK = {"base": 0, "edge": 1, "smc": 1, "algorithms": 2, "api": 3, "wiring": 3, "viewer": 3.5,
        "eval": 4, "faces": 5, "testing": 6}
LAYER = {
    "testing": "testing",
    "cli": "faces", "server": "faces", "viewer": "viewer", "__main__": "faces",
    "eval": "eval", "api": "api", "algorithms": "algorithms", "smc": "smc",
    "backends": "edge", "rewards": "edge", "models": "edge", "hf_export": "edge",
    "wiring": "wiring",
}
# known violations still to remove; the test fails on any other, and when one of these is
# fixed it must leave this list
KNOWN: set[tuple[str, str]] = set()
KNOWN_CYCLES: list[list[str]] = []


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) < 2:
        return "api"  # the package root re-exports the public API (solve, Problem, ...)
    return LAYER.get(parts[1], "base")


def imports() -> dict[str, set[str]]:
    """module -> the particlescale modules it imports (at any place in the file)."""
    out: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        mod = module_name(path)
        deps: set[str] = set()
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(block.test)
                       for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:  # annotations only: never run, no real dependency
                continue
            if isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level:  # relative import
                    pkg = mod.split(".")[: len(mod.split(".")) - node.level + (
                        1 if path.name == "__init__.py" else 0)]
                    base = ".".join([*pkg, node.module])
                if base.startswith("particlescale"):
                    for alias in node.names:  # `from pkg import module` imports the module
                        sub = SRC.parent.joinpath(*base.split("."), alias.name)
                        is_module = sub.with_suffix(".py").exists() or sub.is_dir()
                        deps.add(f"{base}.{alias.name}" if is_module else base)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("particlescale"))
        out[mod] = deps
    return out


def upward() -> set[tuple[str, str]]:
    bad = set()
    for mod, deps in imports().items():
        for dep in deps:
            lm, ld = layer_of(mod), layer_of(dep)
            if RANK[ld] > RANK[lm] or (lm == "edge" and ld == "smc") or (
                    lm in ("smc", "algorithms") and ld == "edge"):
                bad.add((mod, dep))
    return bad


def test_every_import_runs_downward() -> None:
    bad = upward()
    assert bad - KNOWN == set(), sorted(bad - KNOWN)
    assert KNOWN - bad == set(), f"fixed, remove from KNOWN: {sorted(KNOWN - bad)}"


def test_no_import_cycles_between_modules() -> None:
    graph = imports()
    mods = set(graph)

    def resolve(dep: str) -> str | None:
        while dep and dep not in mods:
            dep = dep.rpartition(".")[0]
        return dep or None

    def with_packages(m: str, dep: str) -> set[str]:
        """Importing a.b.c runs the __init__ of a.b first (unless m is inside a.b already)."""
        out = {dep}
        parts = dep.split(".")
        for k in range(2, len(parts)):
            pkg = ".".join(parts[:k])
            if pkg in mods and not m.startswith(pkg + "."):
                out.add(pkg)
        return out

    edges = {m: {d for dep in deps for e in with_packages(m, dep) if (d := resolve(e))
                 and d != m and not m.startswith(d + ".")}  # a submodule may import its package
             for m, deps in graph.items()}
    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert cycles == KNOWN_CYCLES, cycles
