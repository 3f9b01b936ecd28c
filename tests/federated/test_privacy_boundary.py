"""Server-side code has no path to a site's cases; sites answer only with declared payloads.

The two sides are read off the folders: server side = everything under ``federated/strategies/``, plus
``federated/payload.py``, ``federated/rounds.py``, ``runs.py`` and the Flower ServerApp and records; site data =
everything under ``federated/site/`` and ``gliofed/data/`` (except ``data/manifest.py``, the label vocabulary the
server needs: the data package's exports are lazy, so importing it loads nothing else) and the engine.
"""

import ast
from pathlib import Path

import pytest

import gliofed
from gliofed.federated.payload import Payload, state_to_arrays, validate
from gliofed.federated.site import Site
from tests.federated.helpers import site_settings, small_model

PACKAGE = Path(gliofed.__file__).parent


def _modules(folder: str) -> list[str]:
    root = PACKAGE / folder
    return sorted("gliofed." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
                  for p in root.rglob("*.py"))


SERVER_MODULES = [*_modules("federated/strategies"), "gliofed.federated.payload", "gliofed.federated.rounds",
                  "gliofed.runs", "gliofed.federated.flower.server_app", "gliofed.federated.flower.records"]
PRIVATE = {*_modules("federated/site"), *_modules("data"), "gliofed.engine"} - {"gliofed.data.manifest",
                                                                                  "gliofed.data"}


def _imports(module: str) -> set[str]:
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return {m for m in found if m.startswith("gliofed")}


def _closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(_imports(current))
        parts = current.split(".")  # importing a.b.c also runs a.b's __init__
        todo.extend(".".join(parts[:i]) for i in range(2, len(parts)))
    return seen


def test_the_folders_name_both_sides():
    assert "gliofed.federated.strategies.distill" in SERVER_MODULES and len(SERVER_MODULES) >= 11
    assert {"gliofed.federated.site.condense", "gliofed.data.cache", "gliofed.data.dataset"} <= PRIVATE


@pytest.mark.parametrize("module", SERVER_MODULES)
def test_server_side_modules_cannot_reach_site_data(module):
    reachable = _closure(module)
    assert not reachable & PRIVATE, f"{module} reaches {sorted(reachable & PRIVATE)}"


def test_the_closure_check_would_catch_a_violation():
    assert "gliofed.data.cache" in _closure("gliofed.data.dataset")
    assert "gliofed.federated.site.condense" in _closure("gliofed.federated.site")


def test_site_answers_only_with_declared_payloads(tiny_cache):
    site = Site("brats21", tiny_cache)
    model = small_model()
    outgoing = Payload("model", state_to_arrays(model), {"round": 1, "strategy": "test"})
    for task, extra in (("train", {"epochs": 1}), ("distill", {"distill": {"steps": 1, "server_epochs": 1}})):
        reply = site.handle(task, outgoing, site_settings(model, **extra))
        validate(reply)
        assert reply.kind == {"train": "weights_update", "distill": "distilled_set"}[task]


def test_site_keeps_its_cases_private(tiny_cache):
    site = Site("brats21", tiny_cache)
    public = {name for name in dir(site) if not name.startswith("_")}
    assert public == {"name", "n_cases", "handle", "raw_bytes", "privacy_audit"}
