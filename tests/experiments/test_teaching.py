"""The mechanisms notebook 02 opens up: FedAvg by hand, client drift, what distillation uploads, the audit's
evidence, and a flagged set refused by its site."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from gliofed.errors import ConfigError, PolicyError
from gliofed.experiments.privacy import outgoing_audit
from gliofed.experiments.teaching import client_drift, distilled_sets, flagged_upload, library_average, toy_sites
from gliofed.federated.site import Site
from gliofed.model import build_model
from gliofed.presets import get_preset, train_preset

SMALL_MODEL = {"features": (4, 8, 16, 32), "hidden": 8}


def test_the_library_average_is_the_case_weighted_mean():
    sites = toy_sites(seed=3, sizes=(1, 2, 7))
    averaged = library_average(sites)
    for name in ("w:layer.weight", "w:layer.bias"):
        by_hand = (1 * sites["site A"][0][name] + 2 * sites["site B"][0][name] + 7 * sites["site C"][0][name]) / 10
        assert np.allclose(averaged[name], by_hand, atol=1e-6)
        assert not np.allclose(averaged[name], np.mean([a[name] for a, _ in sites.values()], axis=0))


@pytest.fixture(scope="module")
def config():
    return train_preset("tiny", seed=0, device="cpu", model=SMALL_MODEL)


@pytest.fixture(scope="module")
def model(config):
    torch.manual_seed(0)
    return build_model(config)


def test_client_drift_keeps_every_sites_model_and_fedprox_pulls_them_in(tiny_cache, model, config):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    drift = client_drift(tiny_cache, model, config, strategies=("fedavg", "fedprox"), local_epochs=2, mu=50.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model is untouched
    assert set(drift.table["strategy"]) == {"fedavg", "fedprox"} and len(drift.table) == 10
    assert (drift.table["to_start"] > 0).all()
    moved = drift.table.groupby("strategy")["to_start"].mean()
    assert moved["fedprox"] < moved["fedavg"]  # a strong proximal term keeps local models near the start
    vectors = drift.vectors["fedavg"]
    assert {"start", "average"} <= set(vectors) and len({v.shape for v in vectors.values()}) == 1


@pytest.fixture(scope="module")
def sets(tiny_cache, model, config):
    return distilled_sets(tiny_cache, model, config, get_preset("tiny").distill,
                          inits={"class_stats": None, "real_unsafe": ["upenn"]}, sites=["brats21", "upenn"])


def test_distilled_sets_hold_each_sites_upload_and_its_audit(sets):
    sites = sorted({site for site, _ in sets.payloads})
    assert sites == ["brats21", "upenn"] and all(payload.kind == "distilled_set" for payload in sets.payloads.values())
    assert set(sets.payloads) == {("brats21", "class_stats"), ("upenn", "class_stats"), ("upenn", "real_unsafe")}
    assert set(sets.audit.loc[sets.audit["init"] == "real_unsafe", "site"]) == {"upenn"}
    assert set(sets.real_to_real["site"]) == set(sites) and sets.real_to_real["nn_corr"].between(-1, 1).all()
    assert sets.audit.loc[sets.audit["init"] == "real_unsafe", "flagged"].any()  # copies of patients are caught
    assert not sets.audit.loc[sets.audit["init"] == "class_stats", "flagged"].any()


def test_a_site_refuses_to_send_a_flagged_set(tiny_cache, model, config, sets):
    site = sets.audit[sets.audit["flagged"]]["site"].iloc[0]
    refusal = flagged_upload(tiny_cache, model, config, site, get_preset("tiny").distill)
    assert refusal.startswith(f"site {site} refuses to send its distilled set: the privacy audit flags")


def test_the_outgoing_audit_audits_sets_already_made_instead_of_condensing_again(tiny_cache, model, config, sets,
                                                                                 monkeypatch):
    distill = get_preset("tiny").distill
    fresh, said = outgoing_audit(tiny_cache, model, config, distill)
    condensed, handle = [], Site.handle

    def counting(self, *args, **kwargs):
        condensed.append(self.name)
        return handle(self, *args, **kwargs)

    monkeypatch.setattr(Site, "handle", counting)
    reused, said_again = outgoing_audit(tiny_cache, model, config, distill, made=sets)
    assert condensed and not {"brats21", "upenn"} & set(condensed)  # their class_stats sets were audited as made
    pd.testing.assert_frame_equal(fresh, reused)  # the same request gives the same set, so the same audit
    assert said == said_again


def test_the_outgoing_audit_refuses_sets_made_under_another_model_seed_or_settings(tiny_cache, model, config, sets):
    distill = get_preset("tiny").distill
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    for changed in ({"model": other}, {"seed": 1}, {"distill": {**distill, "steps": distill.get("steps", 30) + 1}},
                    {"config": config.replace(lr=config.lr * 2)}):
        asked = {"model": model, "config": config, "distill": distill, "seed": 0, **changed}
        with pytest.raises(ConfigError, match="condensed under another model, seed or settings"):
            outgoing_audit(tiny_cache, asked["model"], asked["config"], asked["distill"], asked["seed"], made=sets)


def test_the_outgoing_audit_never_reuses_a_real_unsafe_set(tiny_cache, model, config, sets):
    distill = {**get_preset("tiny").distill, "init": "real_unsafe"}  # sets holds upenn's real_unsafe set
    with pytest.raises(PolicyError, match="copies patients and this site's operator has not allowed it"):
        outgoing_audit(tiny_cache, model, config, distill, made=sets)
