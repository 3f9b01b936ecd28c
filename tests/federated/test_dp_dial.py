"""Differential privacy as a dial: strategies ask for it, a site's policy can require it with a maximum epsilon,
the site accounts what it spends and says so in its reply; the outgoing audit judges every payload part and never
uploads a flagged volume."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from gliofed.dp import DPSettings
from gliofed.errors import PolicyError
from gliofed.federated.protocol import DistillSettings, site_request
from gliofed.federated.protocol.payload import Payload, PayloadError, state_to_arrays, validate_reply
from gliofed.federated.server.strategies import DistillFederation, FedAvg, FedProx, make_strategy
from gliofed.federated.site import Site
from gliofed.federated.site.policy import SitePolicy
from tests.federated.helpers import SMALL_MODEL, small_config

GROUP_MODEL = {**SMALL_MODEL, "norm": "group"}


def _model(norm: str = "batch"):
    from gliofed.model import MultiTaskUNet

    return MultiTaskUNet(**{**SMALL_MODEL, "norm": norm})


def _request(model, task: str, dp: DPSettings | None = None, **extra):
    settings = dict(extra)
    if task == "train":
        settings.setdefault("epochs", 1)
    if task == "distill":
        settings.setdefault("distill", dataclasses.asdict(DistillSettings(steps=1, n_synthetic=2, real_batch=3)))
    if dp is not None:
        settings["dp"] = dp.to_dict()
    config = small_config(model=dict(model.config))
    return site_request(config, model, 1, task, Payload("model", state_to_arrays(model), {"round": 1,
                                                                                         "strategy": "t"}), settings)


def test_a_site_that_requires_dp_refuses_a_request_without_it(tiny_cache):
    site = Site("brats21", tiny_cache, policy=SitePolicy(require_dp=True, max_epsilon=8.0))
    for task in ("train", "distill"):
        with pytest.raises(PolicyError, match=f"site brats21 refuses the '{task}' request: this site requires "
                                              "differential privacy \\(at most epsilon 8 at delta 1e-05\\)"):
            site.handle(*_request(_model(), task))
    assert site.privacy_spent.history == []


def test_a_request_past_the_sites_maximum_epsilon_is_refused_and_spends_nothing(tiny_cache):
    site = Site("brats21", tiny_cache, policy=SitePolicy(require_dp=True, max_epsilon=1.0))
    with pytest.raises(PolicyError, match="above its maximum of 1"):
        site.handle(*_request(_model("group"), "train", DPSettings("dp_sgd", noise_multiplier=0.5)))
    assert site.privacy_spent.history == []


def test_a_mechanism_that_does_not_fit_the_task_is_refused():
    found = SitePolicy().privacy_violations("distill", DPSettings("dp_sgd"), 1.0)
    assert found == ["DP mechanism 'dp_sgd' does not apply to a 'distill' request (use 'gaussian')"]
    assert SitePolicy(max_delta=1e-6).privacy_violations("train", DPSettings("dp_sgd", delta=1e-5), 1.0)


def test_dp_sgd_on_a_batchnorm_model_is_refused_in_one_sentence(tiny_cache):
    site = Site("brats21", tiny_cache)
    with pytest.raises(PolicyError, match="needs a model without BatchNorm"):
        site.handle(*_request(_model("batch"), "train", DPSettings("dp_sgd")))


def test_a_dp_sgd_reply_says_what_it_spent_and_the_site_composes_it(tiny_cache):
    site = Site("brats21", tiny_cache, policy=SitePolicy(require_dp=True, max_epsilon=100.0))
    model = _model("group")
    request = _request(model, "train", DPSettings("dp_sgd", noise_multiplier=1.0))
    first = site.handle(*request)
    validate_reply(first, "weights_update", request.payload.arrays)
    spent = first.meta["dp"]
    assert spent["mechanism"] == "dp_sgd" and 0 < spent["epsilon"] == spent["epsilon_total"] < 100
    assert first.meta["loss"] is None  # the training loss is not noised, so it is not sent
    second = site.handle(*request)
    assert second.meta["dp"]["epsilon_total"] > spent["epsilon_total"]
    assert site.privacy_spent.epsilon(1e-5) == pytest.approx(second.meta["dp"]["epsilon_total"])


def test_a_clipped_update_moves_the_model_by_at_most_the_clip_plus_the_noise(tiny_cache):
    site = Site("brats21", tiny_cache)
    model = _model()
    request = _request(model, "train", DPSettings("clipped_update", noise_multiplier=1e-9, max_norm=0.01))
    reply = site.handle(*request)
    moved = np.sqrt(sum(((reply.arrays[k].astype(np.float64) - request.payload.arrays[k]) ** 2).sum()
                        for k in reply.arrays if reply.arrays[k].dtype.kind == "f"))
    assert moved <= 0.01 + 1e-6 and reply.meta["dp"]["mechanism"] == "clipped_update"


def test_a_gaussian_distilled_set_is_complete_valid_and_accounted(tiny_cache):
    site = Site("brats21", tiny_cache)
    request = _request(_model(), "distill", DPSettings("gaussian", noise_multiplier=1.0))
    reply = site.handle(*request)
    validate_reply(reply, "distilled_set", request.payload.arrays)
    assert reply.meta["dp"]["mechanism"] == "gaussian" and np.isfinite(reply.meta["dp"]["epsilon"])
    assert any(k.startswith("bn:") for k in reply.arrays) and any(k.startswith("soft:") for k in reply.arrays)


def test_a_flagged_volume_is_never_uploaded_and_the_site_says_so(tiny_cache, monkeypatch, caplog):
    """One of three volumes is a down-sampled copy of a patient: the site withholds it and sends the other two."""
    from gliofed.data.dataset import CaseDataset
    from gliofed.federated.site import site as site_module

    real = CaseDataset(tiny_cache, split="train", sites=["brats21"])
    honest = site_module.condense

    def leaky(model, dataset, settings, seed, name, **kwargs):
        payload = honest(model, dataset, settings, seed, name, **kwargs)
        images = payload.arrays["syn_images"].astype(np.float32)
        copy = torch.nn.functional.interpolate(real[0]["image"][None], size=images.shape[2:], mode="area")
        images[1] = copy[0].numpy()
        return Payload(payload.kind, {**payload.arrays, "syn_images": images.astype(np.float16)}, payload.meta)

    monkeypatch.setattr(site_module, "condense", leaky)
    site = Site("brats21", tiny_cache)
    request = _request(_model(), "distill", distill=dataclasses.asdict(DistillSettings(steps=0, n_synthetic=3,
                                                                                       real_batch=3, init="noise")))
    with caplog.at_level(logging.WARNING, logger="gliofed.federated"):
        reply = site.handle(*request)
    assert len(reply.arrays["syn_images"]) == 2 and reply.meta["withheld"] == 1
    sent = reply.arrays["syn_images"].astype(np.float32).reshape(2, -1)
    copy = torch.nn.functional.interpolate(real[0]["image"][None], size=reply.arrays["syn_images"].shape[2:],
                                           mode="area")[0].numpy().astype(np.float16).astype(np.float32).ravel()
    assert not any(np.allclose(row, copy) for row in sent)
    sentences = [r.getMessage() for r in caplog.records if "withholds" in r.getMessage()]
    assert sentences == [sentences[0]] and "site brats21 withholds 1 of 3 synthetic volume(s)" in sentences[0]
    validate_reply(reply, "distilled_set", request.payload.arrays)


def test_every_part_of_a_distilled_set_is_audited_with_a_rule(tiny_cache):
    site = Site("brats21", tiny_cache)
    request = _request(_model(), "distill")
    report = site.audit_payload(site.handle(*request))
    assert {"synthetic_volume", "template", "label_vectors", "soft_labels", "label_counts",
            "bn_statistics"} <= set(report["part"])
    assert report["passed"].all() and report["rule"].str.len().gt(10).all()


def test_strategies_ask_for_dp_only_when_it_is_on():
    assert "dp" not in FedAvg().site_settings(1) and "dp" not in DistillFederation().site_settings(1)
    dp = DPSettings("dp_sgd", noise_multiplier=2.0)
    assert FedProx(dp=dp).site_settings(1)["dp"] == dp.to_dict()
    assert make_strategy("distill", dp={"mechanism": "gaussian"}).site_settings(1)["dp"]["mechanism"] == "gaussian"
    with pytest.raises(Exception, match="no differential-privacy dial"):
        make_strategy("local", dp=dp)


@pytest.mark.parametrize("bad", [{"mechanism": "dp_sgd"}, {**DPSettings("dp_sgd").to_dict(), "epsilon": -1.0,
                                                            "epsilon_total": 1.0},
                                 {**DPSettings("dp_sgd").to_dict(), "mechanism": "off", "epsilon": 1.0,
                                  "epsilon_total": 1.0}])
def test_a_reply_with_malformed_dp_metadata_is_refused(bad):
    reply = Payload("weights_update", {"w:x": np.zeros(2, np.float32)}, {"site": "a", "n_cases": 3, "dp": bad})
    with pytest.raises(PayloadError, match="'dp"):
        validate_reply(reply, "weights_update", {"w:x": np.zeros(2, np.float32)})


def test_the_dp_requirement_comes_from_the_node_config():
    from gliofed.errors import ConfigError

    policy = SitePolicy.from_node_config({"policy-require-dp": "true", "policy-max-epsilon": "8"})
    assert policy.require_dp and policy.max_epsilon == 8.0 and SitePolicy().max_epsilon == float("inf")
    with pytest.raises(ConfigError, match="policy-max-epsilon must be a number"):
        SitePolicy.from_node_config({"policy-max-epsilon": "lots"})
    with pytest.raises(ConfigError, match="max_epsilon must be a positive number"):
        SitePolicy(max_epsilon=0.0)
