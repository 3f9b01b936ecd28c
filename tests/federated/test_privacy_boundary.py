"""Server-side code has no path to a site's cases; sites answer only with declared payloads.

Both sides are read off the folders: the server side is every module under ``federated/server/``; a site's cases are
reached through anything under ``federated/site/``, ``gliofed/data/`` and the engine. The check follows every import
form (:mod:`tests.import_graph`); each form, planted in a server module, must fail it (:data:`PLANTED`).
"""

import pytest

from gliofed.federated.protocol.payload import Payload, state_to_arrays, validate
from gliofed.federated.site import Site
from tests.federated.helpers import site_settings, small_model
from tests.import_graph import closure, graph, read_sources, submodules

SOURCES = read_sources()
SERVER_MODULES = sorted(submodules("gliofed.federated.server", SOURCES))
PROTOCOL_MODULES = sorted(submodules("gliofed.federated.protocol", SOURCES))
PRIVATE = submodules("gliofed.federated.site", SOURCES) | submodules("gliofed.data", SOURCES) | {"gliofed.engine"}


def reached(module: str, sources=SOURCES) -> set[str]:
    """The site-data modules ``module`` may load, by any import form."""
    return closure(module, sources, graph(sources) if sources is not SOURCES else GRAPH) & PRIVATE


GRAPH = graph(SOURCES)

#: every import form, planted in the round loop (or, where named, in a module the server imports): each must reach
#: site data
PLANTED = {
    "import": "import gliofed.engine",
    "import as": "import gliofed.data.cache as cache",
    "from import (module)": "from gliofed import engine",
    "from import (name)": "from gliofed.engine import fit",
    "lazy export of gliofed.data": "from gliofed.data import CaseDataset",
    "package re-export": "from gliofed.federated.site import Site",
    "subpackage as a name": "from gliofed.federated import site",
    "relative": "from ..site import policy",
    "relative, deeper": "from ...data import dataset",
    "inside a function": "def late():\n    from gliofed.engine import fit\n    return fit",
    "under TYPE_CHECKING": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import gliofed.data.dataset",
    "importlib": "import importlib\nimportlib.import_module('gliofed.engine')",
    "__import__": "__import__('gliofed.data.dataset')",
    "through a shared module the server imports": ("gliofed.losses", "import gliofed.engine"),
    "through a package that re-exports": "from gliofed.experiments import run_experiment",
}


def test_the_folders_name_both_sides():
    assert "gliofed.federated.server.strategies.distill" in SERVER_MODULES and len(SERVER_MODULES) >= 10
    assert "gliofed.federated.server.server_app" in SERVER_MODULES
    assert {"gliofed.federated.site.condense", "gliofed.federated.site.client_app", "gliofed.data.cache",
            "gliofed.data.dataset", "gliofed.data", "gliofed.engine"} <= PRIVATE


@pytest.mark.parametrize("module", SERVER_MODULES)
def test_server_side_modules_cannot_reach_site_data(module):
    assert reached(module) == set(), f"{module} reaches {sorted(reached(module))}"


@pytest.mark.parametrize("module", PROTOCOL_MODULES)
def test_the_protocol_reaches_neither_room(module):
    rooms = PRIVATE | set(SERVER_MODULES)
    assert closure(module, SOURCES, GRAPH) & rooms == set()


@pytest.mark.parametrize("form", sorted(PLANTED))
def test_each_import_form_planted_in_the_server_fails_the_check(form):
    target, line = PLANTED[form] if isinstance(PLANTED[form], tuple) else ("gliofed.federated.server.rounds",
                                                                             PLANTED[form])
    planted = {**SOURCES, target: SOURCES[target] + "\n" + line + "\n"}
    assert reached("gliofed.federated.server.rounds", planted), f"planted {form!r} was not caught"
    assert reached("gliofed.federated.server.rounds") == set()  # and the real one is clean


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
    # audit_payload and privacy_spent return reports (correlations, flags, epsilon), never cases; n_held_out is a count
    assert public == {"name", "n_cases", "n_held_out", "handle", "raw_bytes", "privacy_audit", "audit_payload",
                      "privacy_spent", "policy"}
