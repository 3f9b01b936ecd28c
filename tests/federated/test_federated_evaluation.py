"""Flower on real hardware, without Flower: federated evaluation (each site reports only its metrics on its own
held-out cases, validated like every reply), the site's device from its node config, and the preprocessing record a
SuperNode checks against its federation (one sentence when its cache was made at another size)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from gliofed.data.dataset import CaseDataset
from gliofed.errors import ConfigError, FederationError, PayloadError, PolicyError
from gliofed.federated.protocol import Payload, state_to_arrays, validate_reply
from gliofed.federated.protocol.payload import SITE_METRICS
from gliofed.federated.server.rounds import federated_evaluation
from gliofed.federated.server.server_app import agreed_preprocessing
from gliofed.federated.server.strategies import make_strategy
from gliofed.federated.simulate import in_process_exchange
from gliofed.federated.site import Site
from gliofed.federated.site.policy import SitePolicy
from gliofed.model import build_model
from gliofed.preprocessing import Preprocessing
from tests.federated.helpers import small_config

SITES = ("brats21", "upenn")


@pytest.fixture(scope="module")
def evaluated(tiny_cache):
    """One round of federated evaluation of an untrained small model at two sites that report on one case."""
    config = small_config()
    model = build_model(config)
    sites = [Site(name, tiny_cache, policy=SitePolicy(min_group=1)) for name in SITES]
    return federated_evaluation(make_strategy("fedavg"), model, 1, list(SITES), config, in_process_exchange(sites))


def test_each_site_reports_its_metrics_on_its_own_held_out_cases(evaluated, tiny_cache):
    held_out = CaseDataset(tiny_cache, split="test").index["site"].value_counts()
    assert set(evaluated["site_metrics"]) == set(SITES) and not evaluated["evaluation_excluded"]
    for site, metrics in evaluated["site_metrics"].items():
        assert metrics["n_cases"] == held_out[site]
        assert set(metrics) == {*SITE_METRICS, "n_cases"} and 0 <= metrics["dice_WT"] <= 1


def test_the_pooled_metric_is_the_case_weighted_mean_of_the_sites(evaluated):
    reports = evaluated["site_metrics"].values()
    expected = sum(m["dice_WT"] * m["n_cases"] for m in reports) / sum(m["n_cases"] for m in reports)
    assert evaluated["metrics"]["dice_WT"] == pytest.approx(expected)


def test_nothing_per_case_leaves_the_site(tiny_cache):
    config = small_config()
    model = build_model(config)
    reply = Site("upenn", tiny_cache, policy=SitePolicy(min_group=1)).handle(
        "evaluate", Payload("model", state_to_arrays(model), {"round": 1, "strategy": "fedavg"}),
        {"train": config.to_dict(), "model_config": model.config, "seed": 0})
    validate_reply(reply, "site_metrics")
    assert reply.arrays == {} and set(reply.meta) == {"site", "n_cases", "metrics"}
    assert set(reply.meta["metrics"]) <= set(SITE_METRICS)


def test_a_site_with_fewer_held_out_cases_than_its_floor_refuses(tiny_cache):
    config = small_config()
    model = build_model(config)
    site = Site("upenn", tiny_cache)  # the default floor: 3 cases; it holds out 1
    with pytest.raises(PolicyError, match="^site upenn refuses the 'evaluate' request: it has 1 held-out case"):
        site.handle("evaluate", Payload("model", state_to_arrays(model), {"round": 1, "strategy": "fedavg"}),
                    {"train": config.to_dict(), "model_config": model.config, "seed": 0})


@pytest.mark.parametrize(("metrics", "message"), [
    ({"dice_WT": 1.5}, "'dice_WT' = 1.5 is not a number in"),
    ({"dice_WT": float("nan")}, "is not a number in"),
    ({"subject_007_dice": 0.9}, "is not one of dice_WT"),
    ([0.9], "is not a mapping"),
    ({"auc_idh": True}, "is not a number in"),
])
def test_a_site_metrics_reply_is_validated_like_every_reply(metrics, message):
    with pytest.raises(PayloadError, match=message):
        validate_reply(Payload("site_metrics", {}, {"site": "a", "n_cases": 3, "metrics": metrics}), "site_metrics")


def test_a_bad_report_costs_only_its_sender_this_rounds_evaluation(tiny_cache):
    config = small_config()
    model = build_model(config)

    def exchange(requests):
        return {"a": Payload("site_metrics", {}, {"site": "a", "n_cases": 2, "metrics": {"dice_WT": 0.5}}),
                "b": Payload("site_metrics", {}, {"site": "b", "n_cases": 2, "metrics": {"dice_WT": 7.0}}),
                "c": PolicyError("site c refuses the 'evaluate' request: it has 1 held-out case(s).")}

    result = federated_evaluation(make_strategy("fedavg"), model, 1, ["a", "b", "c"], config, exchange)
    assert result["site_metrics"] == {"a": {"dice_WT": 0.5, "n_cases": 2}}
    assert result["evaluation_excluded"]["b"].startswith("PayloadError: payload metric 'dice_WT' = 7.0")
    assert result["evaluation_excluded"]["c"].startswith("PolicyError: site c refuses")
    assert result["metrics"]["dice_WT"] == 0.5 and result["metrics"]["auc_idh"] is None


# --- a SuperNode's settings -----------------------------------------------------------------------------------------
@pytest.fixture
def client_app(monkeypatch):
    from gliofed.federated.site import client_app

    monkeypatch.setattr(client_app, "_SITES", {})
    return client_app


def _context(cache, run=None, **node):
    return SimpleNamespace(node_config={"site": "brats21", "cache": str(cache), **node}, run_config=run or {})


def test_a_supernode_whose_cache_was_made_at_another_size_refuses_in_one_sentence(client_app, tiny_cache):
    with pytest.raises(ConfigError) as refused:
        client_app.site_from_context(_context(tiny_cache, {"size": 24}))
    assert str(refused.value).startswith(f"site brats21 takes no part: cache {tiny_cache} was preprocessed with "
                                         "32x32 in-plane but this federation expects 24x24;")
    assert "\n" not in str(refused.value)
    assert client_app.site_from_context(_context(tiny_cache, {"size": 32})).name == "brats21"
    assert client_app.site_from_context(_context(tiny_cache, {"size": 0})).name == "brats21"  # the cache decides


def test_the_sites_device_comes_from_its_node_config(client_app, tiny_cache):
    import torch

    assert client_app.site_from_context(_context(tiny_cache, device="cpu")).policy.device == "cpu"
    default = client_app.site_from_context(_context(tiny_cache)).policy.device
    assert default == "auto"  # the engine resolves it on the site: CUDA when present
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device 'cuda' was requested but CUDA is not available"):
            client_app.site_from_context(_context(tiny_cache, device="cuda"))
    with pytest.raises(ConfigError, match="names two devices"):
        client_app.site_from_context(_context(tiny_cache, device="cpu", **{"policy-device": "cuda:1"}))


def test_the_site_trains_on_its_own_device_whatever_the_request_says(tiny_cache, monkeypatch):
    import gliofed.federated.site.site as site_module

    seen = []
    monkeypatch.setattr(site_module, "fit", lambda net, cases, config, **k: seen.append(config.device) or [])
    config = small_config()
    model = build_model(config)
    site = Site("upenn", tiny_cache, policy=SitePolicy(device="cpu"))
    site.handle("train", Payload("model", state_to_arrays(model), {"round": 1, "strategy": "fedavg"}),
                {"train": config.replace(device="cuda:7").to_dict(), "model_config": model.config, "seed": 0,
                 "epochs": 1})
    assert seen == ["cpu"]


def test_the_server_takes_the_sites_shared_record_and_refuses_a_disagreement():
    plan = Preprocessing(size=32)
    described = {"a": {"preprocessing": plan}, "b": {"preprocessing": plan}}
    assert agreed_preprocessing(described) == plan and agreed_preprocessing(described, 32) == plan
    with pytest.raises(FederationError, match="site b's cache was preprocessed at 32x32 in-plane, not the run's 24x24"):
        agreed_preprocessing({"b": {"preprocessing": plan}}, 24)
    with pytest.raises(FederationError, match="site a's was preprocessed with 32x32 in-plane, site b's with 24x24"):
        agreed_preprocessing({"a": {"preprocessing": plan}, "b": {"preprocessing": Preprocessing(size=24)}})


def test_the_handshake_description_is_validated(monkeypatch):
    pytest.importorskip("flwr")
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from gliofed.federated.server.server_app import _description

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    request = Message(content=RecordDict({"site": ConfigRecord({})}), dst_node_id=7, message_type=MessageType.QUERY)

    def reply(**values):
        return Message(RecordDict({"site": ConfigRecord(values)}), reply_to=request)

    name, description = _description(reply(site="a", n_cases=3, device="cpu",
                                            preprocessing=json.dumps(Preprocessing(size=32).to_dict())))
    assert name == "a" and description["preprocessing"] == Preprocessing(size=32) and description["device"] == "cpu"
    with pytest.raises(ConfigError, match="site a: unknown preprocessing setting"):
        _description(reply(site="a", n_cases=3, preprocessing=json.dumps({"size": 32, "evil": 1})))
    with pytest.raises(ConfigError, match="reports -1 training cases"):
        _description(reply(site="a", n_cases=-1))
    refusal = Message(RecordDict({"refusal": ConfigRecord({"reason": "site a takes no part: ..."})}), reply_to=request)
    with pytest.raises(PolicyError, match="site a takes no part"):
        _description(refusal)
