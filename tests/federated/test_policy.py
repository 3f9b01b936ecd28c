"""A site's operator, not the server, decides what the site does: SitePolicy bounds, refusals, the outgoing audit."""

import dataclasses

import pytest

from gliofed.errors import ConfigError, PolicyError
from gliofed.federated.protocol import site_request
from gliofed.federated.protocol.payload import Payload, state_to_arrays
from gliofed.federated.server.strategies import DistillSettings, make_strategy
from gliofed.federated.site import Site
from gliofed.federated.site.policy import SitePolicy
from gliofed.presets import PRESETS
from tests.federated.helpers import small_config, small_model

EXFILTRATION = {"init": "real_unsafe", "scale": 1, "steps": 0}


def _distill_request(model, **distill):
    settings = dataclasses.asdict(DistillSettings(**distill))
    return site_request(small_config(), model, 1, "distill", Payload("model", state_to_arrays(model), {}),
                        {"distill": settings})


def test_the_exfiltration_request_is_refused_before_any_case_is_read(tiny_cache):
    site, model = Site("brats21", tiny_cache), small_model()
    with pytest.raises(PolicyError, match="site brats21 refuses the 'distill' request") as refused:
        site.handle(*_distill_request(model, **EXFILTRATION))
    message = str(refused.value)
    assert "'real_unsafe' copies patients" in message and "scale 1 is below this site's minimum of 2" in message
    assert "\n" not in message


def test_real_initialisation_alone_is_refused_unless_the_operator_allows_it():
    request = {"distill": {"init": "real_unsafe", "scale": 4}}
    assert SitePolicy().violations("distill", request)
    assert SitePolicy(allow_real_init=True).violations("distill", request) == []


def test_full_resolution_alone_is_refused():
    assert SitePolicy().violations("distill", {"distill": {"init": "noise", "scale": 1}}) == [
        "scale 1 is below this site's minimum of 2"]


def test_an_operator_opt_in_still_cannot_send_patient_copies_the_audit_flags(tiny_cache):
    site, model = Site("brats21", tiny_cache, policy=SitePolicy(allow_real_init=True)), small_model()
    with pytest.raises(PolicyError, match="privacy audit flags 3 of 3 synthetic volume"):
        site.handle(*_distill_request(model, init="real_unsafe", scale=4, steps=0))


def test_a_safe_distillation_passes_the_audit_and_leaves(tiny_cache):
    site, model = Site("brats21", tiny_cache), small_model()
    reply = site.handle(*_distill_request(model, init="class_stats", scale=4, steps=1))
    assert reply.kind == "distilled_set" and reply.arrays["syn_images"].shape[0] == 3


@pytest.mark.parametrize("task,settings,reason", [
    ("distill", {"distill": {"n_synthetic": 33}}, "n_synthetic 33 exceeds this site's maximum of 32"),
    ("distill", {"distill": {"steps": 10**6}}, "steps 1000000 exceeds this site's maximum of 1000"),
    ("distill", {"distill": {"real_batch": 500}}, "real_batch 500 exceeds this site's maximum of 64"),
    ("distill", {"distill": {"real_batch": 1}}, "real_batch 1 is below this site's minimum of 3"),
    ("distill", {"distill": {"min_group": 1}}, "unknown distillation setting(s) min_group"),
    ("distill", {"distill": {"perturb": 50.0}}, "perturb 50.0 exceeds this site's maximum of 1.0"),
    ("distill", {"distill": {"temperature": 0.0}}, "temperature 0.0 is below this site's minimum of 0.05"),
    ("distill", {"distill": {"init": "copy_everything"}}, "initialisation 'copy_everything' is unknown"),
    ("train", {"epochs": 10**6}, "epochs 1000000 exceeds this site's maximum of 100"),
    ("train", {"epochs": 1, "train": {"batch_size": 10**4}}, "batch_size 10000 exceeds this site's maximum of 64"),
    ("train", {"epochs": 1, "train": {"num_workers": 64}}, "num_workers 64 exceeds this site's maximum of 4"),
    ("train", {"epochs": 1, "mu": float("nan")}, "mu nan is not finite"),
    ("train", {"epochs": "2"}, "epochs '2' is not a number"),
    ("upload_cases", {}, "task 'upload_cases' is not allowed"),
])
def test_requests_outside_the_policy_name_the_setting(task, settings, reason):
    assert any(found.startswith(reason) for found in SitePolicy().violations(task, settings))


def test_a_task_the_operator_did_not_allow_is_refused():
    assert SitePolicy(tasks=("train",)).violations("distill", {}) == [
        "task 'distill' is not allowed (allowed: train)"]


def test_a_model_larger_than_the_limit_is_refused():
    assert SitePolicy(max_bytes=1000).violations("train", {"epochs": 1}, model_bytes=5000) == [
        "the model of 5,000 bytes exceeds the limit of 1,000 bytes"]


def test_a_reply_larger_than_the_limit_stays_at_the_site(tiny_cache):
    model = small_model()
    arrays = state_to_arrays(model)
    limit = sum(a.nbytes for a in arrays.values()) + 10  # the model is let in; its serialised update is larger
    site = Site("brats21", tiny_cache, policy=SitePolicy(max_bytes=limit))
    with pytest.raises(PolicyError, match=f"refuses to send a reply of .* bytes \\(its limit is {limit:,} bytes\\)"):
        site.handle(*site_request(small_config(), model, 1, "train", Payload("model", arrays, {}), {"epochs": 0}))


def test_a_request_for_a_huge_network_is_refused_before_it_is_built(tiny_cache):
    model = small_model()
    task, outgoing, settings = site_request(small_config(), model, 1, "train", Payload("model", {}, {}),
                                            {"epochs": 1})
    settings["model_config"] = {**settings["model_config"], "features": (4096, 8192, 16384, 32768)}
    with pytest.raises(PolicyError, match="the model of [0-9,]+ bytes exceeds the limit of 67,108,864 bytes"):
        Site("brats21", tiny_cache).handle(task, outgoing, settings)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_the_default_policy_accepts_every_shipped_preset(preset):
    chosen = PRESETS[preset]
    model = small_model()
    for name in ("fedavg", "fedprox", "distill", "centralized"):
        strategy = make_strategy(name, distill=chosen.distill)
        task, _, settings = site_request(chosen.train, model, 0, strategy.task, None, strategy.site_settings(1))
        assert SitePolicy().violations(task, settings) == [], (preset, name)


def test_the_policy_comes_from_the_node_config():
    policy = SitePolicy.from_node_config({"site": "a", "cache": "/c", "policy-tasks": "train,describe",
                                          "policy-min-scale": 8, "policy-allow-real-init": "true",
                                          "policy-max-bytes": 1000.0, "policy-device": "cpu"})
    assert policy.tasks == ("train", "describe") and policy.min_scale == 8 and policy.allow_real_init
    assert policy.max_bytes == 1000 and policy.device == "cpu" and policy.refuse_flagged


@pytest.mark.parametrize("config,message", [
    ({"policy-allow-everything": True}, "'policy-allow-everything' is not a site policy setting"),
    ({"policy-min-scale": 2.5}, "policy-min-scale must be an integer"),
    ({"policy-allow-real-init": "yes"}, "policy-allow-real-init must be true or false"),
    ({"policy-tasks": "train,exfiltrate"}, "unknown task\\(s\\) exfiltrate"),
    ({"policy-min-scale": 0}, "min_scale must be a positive integer"),
    ({"policy-min-group": 65}, "min_group \\(65\\) is above max_real_batch \\(64\\)"),
])
def test_a_bad_node_config_policy_is_a_clear_error(config, message):
    with pytest.raises(ConfigError, match=message):
        SitePolicy.from_node_config(config)
