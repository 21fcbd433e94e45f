"""zoo's architecture, checked from the source so it cannot regress silently.

zoo is split into parts with one-way dependencies (issue 11, README "Architecture"):

    level 4  face       zoo/__init__.py  zoo/cli.py  zoo/__main__.py
    level 3  training/  analysis/  zoo/testing.py
    level 2  weights/   recipe/
    level 1  models/    data/  runs/
    level 0  base       zoo/errors.py  zoo/_io.py  zoo/_fs.py  zoo/env.py  zoo/_version.py
                        zoo/_yaml.py  zoo/devices.py

A module may import modules of its own part and of parts on a strictly lower level; parts on
one level never import each other. ``PARTS`` below is the table the tests enforce: a new module
directly in ``zoo/`` or a new subpackage must be added to it.

The import graph is read with ``ast`` (nothing is imported). An edge is any ``import x`` or
``from x import y`` anywhere in a file -- module level, inside functions, under
``if TYPE_CHECKING:`` (a cycle in types is still a cycle in the design) -- plus
``importlib.import_module("zoo....")`` with a literal name. A file that calls ``import_module``
with a computed name also gets an edge to every zoo module it spells out as a string literal
(``("zoo.runs.plots", "plot_run")`` tables), so an indirection does not hide a dependency; its
own packages (``"zoo"``, ``"zoo.models"`` in zoo/models/) are names there, not imports.
``from zoo.a import b`` is an edge to ``zoo.a.b`` when that module exists, else to ``zoo.a``;
importing a package is an edge to its ``__init__``. Parent packages that Python runs on the way
(``zoo/__init__.py`` for every ``zoo.x``) are not edges, or every module would depend on the face.

That ``import zoo`` and ``zoo --help`` do not import torch is checked in a fresh interpreter by
``tests/test_cli.py::test_cli_import_and_help_do_not_import_torch`` (``import zoo.cli`` runs
``zoo/__init__.py`` first; ``python -m zoo`` is ``zoo.cli.main``, which only calls ``cli``).
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import pytest

ZOO = Path(__file__).resolve().parents[1] / "zoo"

# part -> (level, members). "name.py" is a module directly in zoo/, "name/" a subpackage.
PARTS: dict[str, tuple[int, tuple[str, ...]]] = {
    "base": (
        0,
        ("errors.py", "_io.py", "_fs.py", "env.py", "_version.py", "_yaml.py", "devices.py"),
    ),
    "models": (1, ("models/",)),  # registry, plugins, architectures
    "data": (1, ("data/",)),  # dataset facts, datasets, augmentation
    "runs": (1, ("runs/",)),  # the run-directory format, plots, model card
    "weights": (2, ("weights/",)),  # weight files, Hub, local store, zoo.create
    "recipe": (2, ("recipe/",)),  # recipe schema, checks, loading
    "training": (3, ("training/",)),  # the loop, evaluation, checkpoints, sweeps, launch
    "analysis": (3, ("analysis/",)),  # bench, viz, report
    "testing": (3, ("testing.py",)),  # the conformance kit
    "face": (4, ("__init__.py", "cli.py", "__main__.py")),  # public API and the CLI
}
MAX_TOP_LEVEL_MODULES = 12
FORBIDDEN_FOR_REGISTRY = "huggingface_hub"


# -- the graph builder -----------------------------------------------------------------------


@dataclass(repr=False)
class ImportGraph:
    """Modules of one package, the edges between them, and what each imports from outside."""

    root: Path  # the package directory, e.g. .../zoo
    modules: dict[str, Path] = field(default_factory=dict)  # "zoo.models.registry" -> file
    # src -> dst -> ["path:line (how)", ...]
    edges: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    external: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # top-level names

    def __repr__(self) -> str:  # pytest prints fixtures; the whole graph would drown the message
        return f"<ImportGraph of {self.root}: {len(self.modules)} modules>"

    @property
    def package(self) -> str:
        return self.root.name

    def rel(self, module: str) -> str:
        return self.modules[module].relative_to(self.root.parent).as_posix()

    def is_package(self, module: str) -> bool:
        return self.modules[module].name == "__init__.py"

    def resolve(self, dotted: str) -> str | None:
        """The module a dotted name imports: itself if it exists, else its longest existing
        prefix (``zoo.a.func`` -> ``zoo.a``). None outside the package."""
        parts = dotted.split(".")
        while parts:
            name = ".".join(parts)
            if name in self.modules:
                return name
            parts.pop()
        return None

    def where(self, src: str, dst: str) -> str:
        return "; ".join(self.edges[src][dst])


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_import_module_call(node: ast.Call) -> bool:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id in ("import_module", "__import__")


def build_graph(root: Path) -> ImportGraph:
    """Read every .py under ``root`` (a package directory) and return its import graph."""
    graph = ImportGraph(root)
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    for path in files:
        graph.modules[module_name(root, path)] = path
    for module, path in graph.modules.items():
        _add_file(graph, module, ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return graph


def _add_file(graph: ImportGraph, module: str, tree: ast.Module) -> None:
    pkg = graph.package
    rel = graph.rel(module)
    graph.edges.setdefault(module, {})
    graph.external.setdefault(module, {})

    def edge(target: str | None, line: int, how: str) -> None:
        if target is not None and target != module:
            seen = graph.edges[module].setdefault(target, [])
            if f"{rel}:{line} ({how})" not in seen:
                seen.append(f"{rel}:{line} ({how})")

    def absolute(dotted: str, line: int, how: str) -> None:
        top = dotted.split(".")[0]
        if top == pkg:
            edge(graph.resolve(dotted), line, how)
        elif top:
            seen = graph.external[module].setdefault(top, [])
            if f"{rel}:{line} ({how})" not in seen:
                seen.append(f"{rel}:{line} ({how})")

    computed_import = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                absolute(alias.name, node.lineno, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not graph.is_package(module):
                    base.pop()
                base = base[: len(base) - (node.level - 1)]
                if node.module:
                    base.append(node.module)
                source = ".".join(base)
            else:
                source = node.module or ""
            imported = ", ".join(alias.name for alias in node.names)
            how = f"from {'.' * node.level}{node.module or ''} import {imported}"
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                if alias.name != "*" and candidate in graph.modules:
                    absolute(candidate, node.lineno, how)
                else:
                    absolute(source, node.lineno, how)
        elif isinstance(node, ast.Call) and _is_import_module_call(node) and node.args:
            names = _literal_names(node.args[0])
            if names is None:
                computed_import = True
            for name in names or ():
                if not name.startswith("."):
                    absolute(name, node.lineno, f"import_module({name!r})")
    if computed_import:
        # Strings naming the file's own packages ("zoo", "zoo.models" in zoo/models/plugins.py)
        # are logger names or entry-point groups, not import targets.
        own = {module.rsplit(".", n)[0] for n in range(module.count(".") + 1)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                name = node.value
                if name in graph.modules and name not in own:
                    edge(name, node.lineno, f"string {name!r} for a computed import_module")


def _literal_names(arg: ast.expr) -> list[str] | None:
    """The module names an import_module argument can take: a string, or ``a if c else b``
    of strings; None when the name is computed."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    if isinstance(arg, ast.IfExp):
        body, orelse = _literal_names(arg.body), _literal_names(arg.orelse)
        return None if body is None or orelse is None else body + orelse
    return None


def find_cycles(graph: ImportGraph) -> list[list[str]]:
    """One cycle path (first node repeated at the end) per strongly connected component with
    more than one module, found with Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.edges.get(v, {})):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            components.append(component)

    for v in sorted(graph.modules):
        if v not in index:
            strongconnect(v)
    cycles = []
    for component in components:
        if len(component) > 1:
            start = min(component)
            # the shortest way back to start, staying inside the component
            back = shortest_path(graph, start, start.__eq__, within=component)
            assert back is not None, component  # a component always has a cycle
            cycles.append(back)
    return sorted(cycles)


def shortest_path(
    graph: ImportGraph,
    start: str,
    goal: Callable[[str], bool],
    within: Iterable[str] | None = None,
) -> list[str] | None:
    """Breadth-first path from start (over at least one edge) to the first module for which
    ``goal(module)`` is true; None when there is none."""
    allowed = set(within) if within is not None else None
    parent: dict[str, str] = {}
    queue = deque([start])
    seen: set[str] = set()
    while queue:
        v = queue.popleft()
        for w in sorted(graph.edges.get(v, {})):
            if allowed is not None and w not in allowed:
                continue
            if goal(w):
                path = [w, v]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return path[::-1]
            if w not in seen:
                seen.add(w)
                parent[w] = v
                queue.append(w)
    return None


def describe_path(graph: ImportGraph, path: list[str]) -> str:
    steps = [f"  {a} -> {b}   [{graph.where(a, b)}]" for a, b in pairwise(path)]
    return " -> ".join(path) + "\n" + "\n".join(steps)


def part_of(graph: ImportGraph, module: str) -> str | None:
    """The part a module belongs to by the PARTS table, or None when the table lacks it."""
    inside = graph.modules[module].relative_to(graph.root).parts
    key = inside[0] if len(inside) == 1 else inside[0] + "/"
    for part, (_, members) in PARTS.items():
        if key in members:
            return part
    return None


# -- the checks on zoo -------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return build_graph(ZOO)


def test_graph_sees_the_whole_package(graph: ImportGraph) -> None:
    """Guard against a vacuous pass: every file is a module, and zoo's own imports are seen."""
    files = [p for p in ZOO.rglob("*.py") if "__pycache__" not in p.parts]
    assert len(graph.modules) == len(files) > 10
    assert graph.edges["zoo.cli"], "zoo/cli.py imports zoo.errors, yet no edge was found"
    assert sum(len(dsts) for dsts in graph.edges.values()) > len(graph.modules)


def test_no_import_cycles(graph: ImportGraph) -> None:
    cycles = find_cycles(graph)
    assert not cycles, f"{len(cycles)} import cycle(s) among zoo's modules:\n" + "\n".join(
        describe_path(graph, cycle) for cycle in cycles
    )


def test_registry_never_reaches_the_hub(graph: ImportGraph) -> None:
    """The module that defines register_model must not reach (transitively) any module
    that imports huggingface_hub: the registry is the bottom of the house."""
    definers = [
        m
        for m, path in graph.modules.items()
        if any(
            isinstance(node, ast.FunctionDef) and node.name == "register_model"
            for node in ast.parse(path.read_text(encoding="utf-8")).body
        )
    ]
    assert definers, "no module under zoo/ defines a top-level `def register_model`"
    hub_users = {m for m, ext in graph.external.items() if FORBIDDEN_FOR_REGISTRY in ext}
    problems = []
    for registry in definers:
        if registry in hub_users:
            problems.append(
                f"{registry} itself imports {FORBIDDEN_FOR_REGISTRY} "
                f"[{'; '.join(graph.external[registry][FORBIDDEN_FOR_REGISTRY])}]"
            )
        path = shortest_path(graph, registry, lambda m: m in hub_users)
        if path is not None:
            problems.append(
                f"{registry} (defines register_model) reaches {path[-1]}, which imports "
                f"{FORBIDDEN_FOR_REGISTRY} "
                f"[{'; '.join(graph.external[path[-1]][FORBIDDEN_FOR_REGISTRY])}]:\n"
                + describe_path(graph, path)
            )
    assert not problems, "\n".join(problems)


def test_at_most_twelve_modules_directly_in_zoo() -> None:
    top = sorted(p.name for p in ZOO.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, (
        f"{len(top)} modules sit directly in zoo/ (at most {MAX_TOP_LEVEL_MODULES}); "
        f"move these into a subpackage: {', '.join(top)}"
    )


def test_every_module_belongs_to_a_part(graph: ImportGraph) -> None:
    members = {m for _, ms in PARTS.values() for m in ms}
    stray = [f"zoo/{p.name}" for p in sorted(ZOO.glob("*.py")) if p.name not in members]
    stray += [
        f"zoo/{d.name}/"
        for d in sorted(ZOO.iterdir())
        if d.is_dir() and d.name != "__pycache__" and f"{d.name}/" not in members
        if any(p for p in d.rglob("*.py") if "__pycache__" not in p.parts)
    ]
    assert not stray, (
        f"not in any part: {', '.join(stray)}; add it to a part in PARTS "
        f"(tests/test_layout.py) or move it into one"
    )
    assert all(part_of(graph, m) for m in graph.modules)


def test_imports_point_down_the_layers(graph: ImportGraph) -> None:
    bad = []
    for src, dsts in sorted(graph.edges.items()):
        for dst in sorted(dsts):
            src_part, dst_part = part_of(graph, src), part_of(graph, dst)
            if src_part is None or dst_part is None:
                continue  # reported by test_every_module_belongs_to_a_part
            if src_part == dst_part or PARTS[dst_part][0] < PARTS[src_part][0]:
                continue
            bad.append(
                f"  {src} ({src_part}, level {PARTS[src_part][0]}) -> "
                f"{dst} ({dst_part}, level {PARTS[dst_part][0]})   [{graph.where(src, dst)}]"
            )
    assert not bad, (
        f"{len(bad)} import(s) go up a level or sideways between parts on one level "
        "(a module imports only its own part or parts on a lower level):\n" + "\n".join(bad)
    )


# -- the builder itself, on a tree with known answers ------------------------------------


def _write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "zoo" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "zoo"


def test_builder_resolves_every_import_form(tmp_path: Path) -> None:
    pkg = _write_tree(
        tmp_path,
        {
            "__init__.py": "from zoo.a import b\n",
            "errors.py": "import os\n",
            "a/__init__.py": "from . import b\nfrom .b import helper\n",
            "a/b.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from zoo.c import Thing\n"
                "def f():\n    from ..errors import E\n    import zoo.a.d.func\n"
            ),
            "a/d.py": "import importlib\nimportlib.import_module('zoo.c' if 1 else 'numpy')\n",
            "c/__init__.py": "",
            "c/e.py": (
                "from importlib import import_module\nimport huggingface_hub.utils\n"
                "for name in ('zoo.errors', 'zoo.nothing', 'zoo', 'zoo.c'):\n"
                "    import_module(name)\n"
            ),
        },
    )
    g = build_graph(pkg)
    assert sorted(g.modules) == ["zoo", "zoo.a", "zoo.a.b", "zoo.a.d", "zoo.c", "zoo.c.e",
                                 "zoo.errors"]  # fmt: skip
    assert {m: sorted(d) for m, d in g.edges.items()} == {
        "zoo": ["zoo.a.b"],  # the submodule, not the package
        "zoo.a": ["zoo.a.b"],  # no implicit edge a.b -> a either
        "zoo.a.b": ["zoo.a.d", "zoo.c", "zoo.errors"],  # TYPE_CHECKING, in a function, relative
        "zoo.a.d": ["zoo.c"],  # import_module literal
        "zoo.c": [],
        "zoo.c.e": ["zoo.errors"],  # a module named in a string for a computed import_module
        "zoo.errors": [],
    }
    assert sorted(g.external["zoo.c.e"]) == ["huggingface_hub", "importlib"]
    assert sorted(g.external["zoo.a.d"]) == ["importlib", "numpy"]
    assert "zoo/a/b.py:3 (from zoo.c import Thing)" in g.where("zoo.a.b", "zoo.c")


def test_builder_finds_a_cycle_and_a_path(tmp_path: Path) -> None:
    pkg = _write_tree(
        tmp_path,
        {
            "__init__.py": "",
            "registry.py": "def register_model(f):\n    from zoo import export\n",
            "export.py": "from zoo.hub import push\n",
            "hub.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    import zoo.registry\n"
                "def push():\n    import huggingface_hub\n"
            ),
            "leaf.py": "import zoo.errors\n",
            "errors.py": "",
        },
    )
    g = build_graph(pkg)
    assert find_cycles(g) == [["zoo.export", "zoo.hub", "zoo.registry", "zoo.export"]]
    path = shortest_path(g, "zoo.registry", lambda m: "huggingface_hub" in g.external[m])
    assert path == ["zoo.registry", "zoo.export", "zoo.hub"]
    assert shortest_path(g, "zoo.leaf", lambda m: m == "zoo.hub") is None
    assert part_of(g, "zoo.errors") == "base" and part_of(g, "zoo.registry") is None
