"""The house's floors: no import runs upward, there is no cycle, every module imports in dependency order, and the
vocabulary imports nothing beyond the standard library."""

import json
import subprocess
import sys

import pytest

from tests.import_graph import cycles, dependency_order, graph, read_sources

SOURCES = read_sources()
GRAPH = graph(SOURCES)

#: floors, lowest first: a module may import its own floor and the floors below, never one above. A module is on the
#: floor of the longest prefix listed.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("gliofed", "gliofed._startup", "gliofed.vocab", "gliofed.errors", "gliofed.fileio", "gliofed.provenance"),
    ("gliofed.config", "gliofed.presets", "gliofed.preprocessing"),
    ("gliofed.model", "gliofed.losses", "gliofed.metrics", "gliofed.brats_metrics", "gliofed.segmentation"),
    ("gliofed.data",),
    ("gliofed.engine", "gliofed.runs"),
    ("gliofed.federated.protocol",),
    ("gliofed.federated.server", "gliofed.federated.site"),
    ("gliofed.federated",),
    ("gliofed.inference", "gliofed.evaluation", "gliofed.explain", "gliofed.workspace", "gliofed.card"),
    ("gliofed.experiments", "gliofed.viz", "gliofed.notebooks"),
    ("gliofed.cli",),
)
#: rooms on one floor that must not import each other
SEPARATE_ROOMS = ("gliofed.federated.server", "gliofed.federated.site")


def floor(module: str) -> int:
    best, level = -1, None
    for number, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), number
    assert level is not None, f"{module} is on no floor: add it to FLOORS"
    return level


def room(module: str) -> str | None:
    return next((r for r in SEPARATE_ROOMS if module == r or module.startswith(r + ".")), None)


def upward(import_graph) -> list[str]:
    found = []
    for module, targets in import_graph.items():
        for target in targets:
            if floor(target) > floor(module):
                found.append(f"{module} (floor {floor(module)}) imports {target} (floor {floor(target)})")
            elif room(module) and room(target) and room(module) != room(target):
                found.append(f"{module} imports {target} across rooms")
    return sorted(found)


def test_every_module_is_on_a_floor():
    assert {floor(module) for module in SOURCES} == set(range(len(FLOORS)))


def test_no_import_runs_upward():
    assert upward(GRAPH) == []


def test_the_floor_check_catches_an_upward_import():
    """config importing the data package (as it once did, for the contrast names) runs upward."""
    planted = {**GRAPH, "gliofed.config": GRAPH["gliofed.config"] | {"gliofed.data.manifest"}}
    assert upward(planted) == ["gliofed.config (floor 1) imports gliofed.data.manifest (floor 3)"]
    crossing = {**GRAPH, "gliofed.federated.site.site": GRAPH["gliofed.federated.site.site"]
                | {"gliofed.federated.server.strategies.distill"}}
    assert upward(crossing) == ["gliofed.federated.site.site imports gliofed.federated.server.strategies.distill "
                                "across rooms"]


def test_there_is_no_import_cycle():
    assert cycles(GRAPH) == []


def test_the_cycle_check_catches_a_cycle_through_a_lazy_import():
    """strategies/base.py importing rounds.py in a function, while rounds.py imports base.py, as it once did."""
    base, rounds = "gliofed.federated.server.strategies.base", "gliofed.federated.server.rounds"
    planted = dict(SOURCES)
    planted[base] += "\n\ndef _late():\n    from gliofed.federated.server.rounds import federated_round\n"
    planted[rounds] += "\nfrom gliofed.federated.server.strategies.base import Strategy\n"
    assert sorted([base, rounds]) in [[m for m in c if m in (base, rounds)] for c in cycles(graph(planted))]


def test_every_module_imports_in_a_fresh_interpreter_in_dependency_order():
    order = dependency_order(GRAPH)
    assert len(order) == len(SOURCES)
    script = ("import importlib, json, sys\n"
              "for name in json.loads(sys.argv[1]):\n"
              "    importlib.import_module(name)\n"
              "print('imported', len(json.loads(sys.argv[1])))\n")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(order)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"imported {len(order)}"


def _imported(*command: str) -> tuple[set[str], str]:
    done = subprocess.run([sys.executable, "-X", "importtime", *command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    names = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return names - {"package"}, done.stdout


@pytest.mark.parametrize("how", ["-m", "import"])
def test_the_vocabulary_imports_nothing_beyond_the_standard_library(how):
    at_startup, _ = _imported("-c", "pass")  # the interpreter's own start-up (site, .pth files)
    imported, printed = _imported(*(["-m", "gliofed.vocab"] if how == "-m" else ["-c", "import gliofed.vocab"]))
    ours = imported - at_startup
    assert ours and all(m.startswith("gliofed") or m.split(".")[0] in sys.stdlib_module_names for m in ours), ours
    if how == "-m":
        assert json.loads(printed)["MARKERS"] == ["idh", "codeletion", "mgmt", "grade"]
    else:
        assert "gliofed.vocab" in ours


def test_the_stdlib_check_catches_a_third_party_import(tmp_path):
    """The same check on a module that imports NumPy finds it."""
    (tmp_path / "leaky.py").write_text("import numpy\n")
    at_startup, _ = _imported("-c", "pass")
    imported, _ = _imported("-c", f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import leaky")
    assert "numpy" in imported - at_startup and "numpy" not in sys.stdlib_module_names
