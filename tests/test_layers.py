"""The layer rules of README.md "Architecture", checked over the import graph of src/twinv2.

The graph is read with `ast`, not by importing: every `import` / `from ... import` anywhere in a module counts
(module level, inside functions, under `if TYPE_CHECKING:`), because a function-level or type-only import is
still a dependency someone has to keep working. Relative imports are resolved against the module's package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "twinv2"

# Layer of each top-level part, lowest first; a module imports only its own layer or lower ones. models sits
# below offline because the offline item-embedding pre-training (offline/embed.py) trains the models' own
# item table (models/embeddings.py), so that the vectors load into every model; no model imports offline.
ORDER = "schema/config -> data -> models -> offline -> train -> serve -> report -> experiment -> bench -> cli"
RANK = {"schema": 0, "config": 0, "data": 1, "models": 2, "offline": 3, "train": 4, "serve": 5, "report": 6,
        "experiment": 7, "bench": 8, "cli": 9, "__main__": 9}
# The report reads run outputs: besides itself it may import only these (train.metrics: the torch-free AUC and
# GAUC the trainer reports, so a per-group GAUC is the same function; train.significance: the torch-free
# bootstrap / DeLong / expected-AUC maths on those metrics; models.names: the torch-free name list).
REPORT_MAY_IMPORT = ("twinv2.schema", "twinv2.config", "twinv2.data", "twinv2.train.metrics",
                     "twinv2.train.significance", "twinv2.models.names")
# Only the CLI imports bench (checked by RANK too; stated on its own because it is the rule people break).
BENCH_IMPORTERS = ("twinv2.cli", "twinv2.__main__", "twinv2.bench")


def module_name(path: Path, root: Path = SRC) -> str:
    parts = ("twinv2", *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, modules: set[str], is_package: bool = False) -> set[str]:
    """Every module of `modules` that `source` (the text of `module`) imports, anywhere in the file.
    `from twinv2.x import y` is an import of the module `twinv2.x.y` when there is one, else of `twinv2.x`
    (so a package's submodules importing each other through it, `from twinv2.report import tables`, are not
    a cycle through the package)."""
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    return (out & modules) - {module}


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """{module: the twinv2 modules it imports} over every .py file under `root`."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    return {mod: imports_of(path.read_text(), mod, set(files), is_package=path.name == "__init__.py")
            for mod, path in files.items()}


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every broken layer rule as one line `importer -> imported: rule`."""
    out = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            a, b = part(mod), part(dep)
            if a == b or dep == "twinv2":
                continue
            if b == "bench" and not mod.startswith(BENCH_IMPORTERS):
                out.append(f"{mod} -> {dep}: bench is imported only by the CLI")
            elif a == "report" and not dep.startswith(REPORT_MAY_IMPORT):
                out.append(f"{mod} -> {dep}: report reads run outputs (schema, config, data, train.metrics/significance only)")
            elif RANK.get(b, 99) > RANK.get(a, -1):
                out.append(f"{mod} -> {dep}: {a} sits below {b} ({ORDER})")
    return out + [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan), as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_path_in(comp, graph) for comp in comps]


def _path_in(comp: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A closed path through `comp`, starting at its first module (breadth-first back to the start)."""
    start = min(comp)
    prev = {start: None}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v] & comp):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return [*reversed(path), start]
            if w not in prev:
                prev[w] = v
                todo.append(w)
    raise AssertionError("a strongly connected component has a cycle")


# ---- the real tree ---------------------------------------------------------------------------------------
def test_src_tree_follows_the_layer_rules_and_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and "twinv2.serve.commands" in graph  # the walk found the package
    assert violations(graph) == []


# ---- the checker itself ------------------------------------------------------------------------------------
def test_serve_importing_bench_is_reported():
    graph = import_graph()
    graph["twinv2.serve.commands"] = graph["twinv2.serve.commands"] | {"twinv2.bench.serve"}
    got = violations(graph)
    assert "twinv2.serve.commands -> twinv2.bench.serve: bench is imported only by the CLI" in got
    # bench.serve imports serve.commands: the added edge also closes a cycle
    assert any(v.startswith("import cycle:") and "twinv2.bench.serve" in v for v in got)


def test_an_added_import_line_in_a_copy_of_the_tree_is_found(tmp_path):
    root = tmp_path / "twinv2"
    for p in SRC.rglob("*.py"):
        q = root / p.relative_to(SRC)
        q.parent.mkdir(parents=True, exist_ok=True)
        q.write_text(p.read_text())
    target = root / "serve" / "store.py"
    target.write_text(target.read_text() + "\n\ndef _late():\n    import twinv2.bench.serve  # noqa\n")
    got = violations(import_graph(root))
    assert "twinv2.serve.store -> twinv2.bench.serve: bench is imported only by the CLI" in got


MODS = {"twinv2", "twinv2.models", "twinv2.models.frame", "twinv2.models.search", "twinv2.offline",
        "twinv2.offline.store", "twinv2.report.tables", "twinv2.bench.serve", "twinv2.serve.x"}


@pytest.mark.parametrize("source, module, want", [
    ("from twinv2.models.frame import ItemFeatures", "twinv2.models.search", {"twinv2.models.frame"}),
    ("if TYPE_CHECKING:\n    from . import frame", "twinv2.models.search", {"twinv2.models.frame"}),
    ("def f():\n    from ..offline import store, x", "twinv2.report.tables", {"twinv2.offline", "twinv2.offline.store"}),
    ("import numpy, twinv2.bench.serve as b", "twinv2.serve.x", {"twinv2.bench.serve"}),
])
def test_imports_are_read_everywhere_in_a_file(source, module, want):
    assert imports_of(source, module, MODS) == want


@pytest.mark.parametrize("edges, want", [
    ({"twinv2.report.tables": {"twinv2.offline.store"}}, "report reads run outputs"),
    ({"twinv2.report.tables": {"twinv2.models.frame"}}, "report reads run outputs"),
    ({"twinv2.serve.scorer": {"twinv2.report.load"}}, "serve sits below report"),
    ({"twinv2.experiment.run": {"twinv2.bench.train"}}, "bench is imported only by the CLI"),
    ({"twinv2.data.storage": {"twinv2.train.features"}}, "data sits below train"),
    ({"twinv2.models.attention": {"twinv2.models.search"}, "twinv2.models.search": {"twinv2.models.frame"},
      "twinv2.models.frame": {"twinv2.models.attention"}},
     "import cycle: twinv2.models.attention -> twinv2.models.search -> twinv2.models.frame -> "
     "twinv2.models.attention"),
])
def test_each_rule_is_reported(edges, want):
    graph = {m: set() for deps in edges.values() for m in deps} | edges
    got = violations(graph)
    assert any(want in v for v in got), got
