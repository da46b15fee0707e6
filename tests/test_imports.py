"""The import graph of ``chipjax/``: no cycle, counting imports inside functions too.

Run ``python tests/test_imports.py`` to print the graph's cycles (none) and each module's imports.
Edges are read from the source with :mod:`ast` (nothing is imported): ``import chipjax.x``,
``from . import x`` (the module ``x``, or the package when ``x`` is a name in it) and
``from .x import y`` at any depth, module level or inside a function (not under ``if TYPE_CHECKING:``). A package's ``__init__`` importing
its submodules is an edge like any other, so a submodule importing its package back
(``from .. import __version__`` while ``chipjax/__init__.py`` imports the public API) closes a cycle.
"""
from __future__ import annotations

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "chipjax"


def module_files(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
    """``{dotted module name: path}`` of every ``.py`` file under ``chipjax/``."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def _run_time_nodes(tree: ast.AST):
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def imports_of(module: str, path: pathlib.Path, modules: set[str]) -> set[str]:
    """The ``chipjax`` modules that ``module`` (source at ``path``) imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _run_time_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            origin = _resolve(module, is_package, node.level, node.module) if node.level else node.module or ""
            names = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `import chipjax.models.resnet` -> that module
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    files = module_files(root)
    return {m: imports_of(m, p, set(files)) for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import g\n")
    (pkg / "c.py").write_text("import chipjax.sub.b\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    graph = import_graph(tmp_path)
    assert graph["chipjax.c"] == {"chipjax.sub.b"}
    assert cycles(graph) == [["chipjax.a", "chipjax.sub.b"]]


def test_chipjax_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles (module groups that import each other):\n" + "\n".join(map(", ".join, found))


#: what io/ may import outside itself: the errors, the version, and the job helpers (atomic writes, fingerprints)
IO_MAY_IMPORT = {f"{PACKAGE}.errors", f"{PACKAGE}._version", f"{PACKAGE}.jobs"}


def test_io_reads_bytes_and_imports_no_model_code():
    graph = import_graph()
    for module, deps in graph.items():
        if module.startswith(f"{PACKAGE}.io"):
            assert not {d for d in deps if not d.startswith(f"{PACKAGE}.io")} - IO_MAY_IMPORT, (module, deps)
    for allowed in IO_MAY_IMPORT:  # and those import nothing of chipjax beyond each other
        assert graph.get(allowed, set()) <= IO_MAY_IMPORT, (allowed, graph.get(allowed))


if __name__ == "__main__":
    g = import_graph()
    for m in sorted(g):
        print(f"{m}: {', '.join(sorted(g[m])) or '-'}")
    found = cycles(g)
    print("cycles:", found or "none")
    sys.exit(1 if found else 0)
