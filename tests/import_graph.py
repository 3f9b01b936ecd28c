"""gliofed's import graph, read from the source (nothing is imported): every form an import can take.

An edge ``a -> b`` means that running module ``a`` may import module ``b``, through any of:
``import b`` / ``import b as x``; ``from p import name`` (``p``, and ``p.name`` where that is a module); a lazy
export of a package (PEP 562 ``__getattr__`` over an ``_EXPORTS``-style table of submodule names, or, where the
table cannot be read, every submodule of the package); relative imports; ``importlib.import_module("b")`` and
``__import__("b")`` with a literal name; imports inside functions and under ``TYPE_CHECKING``. Importing ``a.b.c``
also runs ``a/__init__`` and ``a/b/__init__`` (:func:`closure` follows them; :func:`edges` does not, so that a
package's ``__init__`` importing its own submodule is not a cycle).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

import gliofed

PACKAGE = Path(gliofed.__file__).parent


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts).removesuffix(".__init__")


def read_sources(root: Path = PACKAGE) -> dict[str, str]:
    """Module name -> source text of every module of the package under ``root``."""
    return {module_name(path, root): path.read_text() for path in sorted(root.rglob("*.py"))}


def is_package(module: str, sources: Mapping[str, str]) -> bool:
    return any(other.startswith(module + ".") for other in sources)


def submodules(package: str, sources: Mapping[str, str]) -> set[str]:
    """Every module under ``package`` (itself included)."""
    return {m for m in sources if m == package or m.startswith(package + ".")}


def _lazy_exports(package: str, sources: Mapping[str, str]) -> dict[str, set[str]] | None:
    """``{exported name: modules it loads}`` of a package whose ``__init__`` exports lazily (a module-level
    ``__getattr__``), or None for a package without lazy exports. A name missing from a readable table, or a table
    that cannot be read, loads every submodule (the conservative answer)."""
    source = sources.get(package)
    if source is None or not is_package(package, sources):
        return None
    tree = ast.parse(source)
    if not any(isinstance(node, ast.FunctionDef) and node.name == "__getattr__" for node in tree.body):
        return None
    table: dict[str, set[str]] = {}
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if isinstance(value, ast.Dict):
            for key, target in zip(value.keys, value.values):
                if isinstance(key, ast.Constant) and isinstance(target, ast.Constant) and isinstance(target.value, str):
                    name = target.value if target.value.startswith(package) else f"{package}.{target.value}"
                    if name in sources:
                        table.setdefault(str(key.value), set()).add(name)
    everything = submodules(package, sources) - {package}
    return {"*": everything, **table}


def _resolve_relative(module: str, level: int, target: str | None, sources: Mapping[str, str]) -> str:
    base = module.split(".") if is_package(module, sources) else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, target] if target else base)


def edges(module: str, sources: Mapping[str, str]) -> set[str]:
    """The gliofed modules ``module`` may import (see the module docstring)."""
    found: set[str] = set()

    def add(name: str) -> None:
        if name.startswith("gliofed"):
            while name and name not in sources:  # `import gliofed.x.attr`-like names: the module part
                name = name.rpartition(".")[0]
            if name:
                found.add(name)

    for node in ast.walk(ast.parse(sources[module])):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(module, node.level, node.module, sources) if node.level else node.module
            if not base:
                continue
            add(base)
            lazy = _lazy_exports(base, sources)
            for alias in node.names:
                if f"{base}.{alias.name}" in sources:
                    add(f"{base}.{alias.name}")
                elif lazy is not None:
                    for name in lazy.get(alias.name, lazy["*"]):
                        add(name)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__"):
                add(node.args[0].value)
    found.discard(module)
    return found


def graph(sources: Mapping[str, str]) -> dict[str, set[str]]:
    return {module: edges(module, sources) for module in sources}


def parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def closure(module: str, sources: Mapping[str, str], import_graph: Mapping[str, set[str]] | None = None) -> set[str]:
    """Every module that running ``module`` may load, its packages' ``__init__`` files included."""
    import_graph = import_graph if import_graph is not None else graph(sources)
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen or current not in sources:
            continue
        seen.add(current)
        todo.extend(import_graph[current])
        todo.extend(parents(current))
    return seen


def cycles(import_graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(import_graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(import_graph):
        if node not in index:
            visit(node)
    return found


def dependency_order(import_graph: Mapping[str, set[str]]) -> list[str]:
    """Every module after the modules it imports (and after its packages), for an acyclic graph."""
    order: list[str] = []
    done: set[str] = set()

    def place(node: str) -> None:
        if node in done:
            return
        done.add(node)
        for target in sorted(import_graph.get(node, set()) | set(parents(node)) & set(import_graph)):
            place(target)
        order.append(node)

    for node in sorted(import_graph):
        place(node)
    return order
