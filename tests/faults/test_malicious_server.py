"""A server that asks a site to copy its patients out is refused, in the simulator as in any federation: the site's
operator set the policy, the server's request cannot change it, and the server records the refusal."""

import pytest

from gliofed.data.dataset import CaseDataset
from gliofed.experiments import run_experiment
from gliofed.federated.server.strategies import DistillFederation, FederationError
from gliofed.federated.simulate import simulate
from gliofed.federated.site import Site
from gliofed.federated.site.policy import SitePolicy
from tests.federated.helpers import small_config

EXFILTRATION = {"init": "real_unsafe", "scale": 1, "steps": 0, "server_epochs": 1}


def test_every_site_refuses_the_exfiltration_request_and_the_server_records_why(tiny_cache):
    sites = [Site("brats21", tiny_cache), Site("upenn", tiny_cache)]
    with pytest.raises(FederationError) as stopped:
        simulate(DistillFederation(EXFILTRATION), sites, CaseDataset(tiny_cache, split="test"), small_config(),
                 rounds=1, progress=False)
    message = str(stopped.value)
    assert "only 0 of 2 sites answered" in message
    assert "brats21: PolicyError: site brats21 refuses the 'distill' request: initialisation 'real_unsafe'" in message
    assert "upenn: PolicyError: site upenn refuses" in message and "\n" not in message


def test_a_site_whose_operator_opted_in_complies_and_only_the_other_is_left_out(tiny_cache):
    sites = [Site("brats21", tiny_cache, policy=SitePolicy.teaching(min_scale=1)), Site("upenn", tiny_cache)]
    _, history = simulate(DistillFederation(EXFILTRATION), sites, CaseDataset(tiny_cache, split="test"),
                          small_config(), rounds=1, progress=False)
    excluded = history.rounds[0]["excluded"]
    assert list(excluded) == ["upenn"] and excluded["upenn"].startswith("PolicyError: site upenn refuses")
    assert history.rounds[0]["bytes_up"]["brats21"] > 0


def test_the_request_is_refused_through_run_experiment_too(tiny_cache):
    with pytest.raises(FederationError, match="PolicyError: site .* refuses the 'distill' request"):
        run_experiment(tiny_cache, "distill", small_config(), rounds=1, distill=EXFILTRATION, progress=False)


def test_the_server_run_config_cannot_choose_a_flower_sites_split(tiny_cache, monkeypatch):
    """The split of cases with a blank manifest split is seeded from the site's node config (``split-seed``), not
    from the run config the server writes: a server cannot pick which of a site's cases it trains and summarises."""
    from types import SimpleNamespace

    import gliofed.federated.site as site_package
    from gliofed.errors import ConfigError
    from gliofed.federated.site import client_app

    made = []
    monkeypatch.setattr(site_package, "Site", lambda name, cache, modalities, seed, policy: made.append(seed) or name)
    monkeypatch.setattr(client_app, "_SITES", {})
    node = {"site": "brats21", "cache": str(tiny_cache)}
    for run_seed in (0, 7, 12345):
        client_app.site_from_context(SimpleNamespace(node_config=node, run_config={"seed": run_seed}))
    assert made == [0]  # one site, seeded by the node, whatever the server's seed
    client_app.site_from_context(SimpleNamespace(node_config={**node, "split-seed": 5}, run_config={"seed": 0}))
    assert made == [0, 5]
    with pytest.raises(ConfigError, match="'split-seed' must be an integer"):
        client_app.site_from_context(SimpleNamespace(node_config={**node, "split-seed": "x"}, run_config={}))
