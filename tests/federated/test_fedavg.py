import numpy as np
import pytest

from gliofed.federated.protocol.payload import Payload, state_to_arrays
from gliofed.federated.server.strategies.base import weighted_average
from gliofed.federated.server.strategies.fedavg import FedAvg, part_weights
from gliofed.federated.site import Site
from tests.federated.helpers import site_settings, small_model


def _update(value, n_cases, n_masked, labelled):
    arrays = {"w:down_1.w": np.full(3, value, np.float32), "w:upcat_1.w": np.full(3, value, np.float32),
              "w:seg_head.w": np.full(2, value, np.float32), "w:heads.idh.w": np.full(2, value, np.float32),
              "w:heads.grade.w": np.full(2, value, np.float32), "w:down_1.n": np.array(value, np.int64)}
    return Payload("weights_update", arrays, {"site": "s", "n_cases": n_cases, "n_masked": n_masked,
                                              "n_labelled": labelled, "loss": 0.0})


def test_decoder_is_weighted_by_masked_cases_and_marker_heads_by_labelled_cases():
    # site a: 10 cases, all masked, idh known for 2, grade unknown; site b: 30 cases, no masks, idh 0, grade 30
    a = _update(1.0, 10, 10, {"idh": 2, "codeletion": 0, "mgmt": 0, "grade": 0})
    b = _update(5.0, 30, 0, {"idh": 0, "codeletion": 0, "mgmt": 0, "grade": 30})
    averaged = weighted_average([(a.arrays, 10.0), (b.arrays, 30.0)], [part_weights(a), part_weights(b)])
    assert averaged["w:down_1.w"] == pytest.approx(np.full(3, 4.0))  # shared encoder: by all cases (10 : 30)
    assert averaged["w:upcat_1.w"] == pytest.approx(np.full(3, 1.0))  # decoder: only the site with masks
    assert averaged["w:seg_head.w"] == pytest.approx(np.full(2, 1.0))
    assert averaged["w:heads.idh.w"] == pytest.approx(np.full(2, 1.0))
    assert averaged["w:heads.grade.w"] == pytest.approx(np.full(2, 5.0))
    assert averaged["w:down_1.n"] == 5  # integer step counters: the maximum


def test_parameters_no_site_could_train_fall_back_to_case_weights():
    a = _update(1.0, 10, 0, {})
    b = _update(5.0, 30, 0, {})
    averaged = weighted_average([(a.arrays, 10.0), (b.arrays, 30.0)], [part_weights(a), part_weights(b)])
    assert averaged["w:upcat_1.w"] == pytest.approx(np.full(3, 4.0))


def test_fedavg_without_partial_weights_averages_everything_by_cases():
    a = _update(1.0, 10, 10, {"idh": 2})
    b = _update(5.0, 30, 0, {"idh": 0})
    model = type("M", (), {})()
    captured = {}
    strategy = FedAvg(partial_weights=False)
    strategy.load = lambda m, arrays: captured.update(arrays)
    strategy.aggregate(model, {"a": a, "b": b}, rnd=1)
    assert captured["w:upcat_1.w"] == pytest.approx(np.full(3, 4.0))


def test_site_discloses_its_masked_and_labelled_case_counts(tiny_cache):
    site = Site("rembrandt", tiny_cache)  # the site without masks
    model = small_model()
    reply = site.handle("train", Payload("model", state_to_arrays(model), {}), site_settings(model, epochs=1))
    assert reply.meta["n_masked"] == 0 and reply.meta["n_cases"] == site.n_cases > 0
    assert reply.meta["n_labelled"]["idh"] == 0  # REMBRANDT never records IDH
    assert set(reply.meta["n_labelled"]) == {"idh", "codeletion", "mgmt", "grade"}


def test_a_site_that_trained_before_answers_as_a_fresh_site_and_keeps_its_batches(tiny_cache):
    # a site keeps its training batches and network across rounds: nothing of an earlier round may leak into a reply
    model = small_model()
    first, later = site_settings(model, seed=3, epochs=1), site_settings(model, seed=4, epochs=1)
    later["train"]["augment"] = first["train"]["augment"] = True
    broadcast = Payload("model", state_to_arrays(model), {})
    kept = Site("brats21", tiny_cache)
    kept.handle("train", broadcast, first)
    batches, network = kept._Site__batches, kept._Site__network
    reply = kept.handle("train", broadcast, later)
    fresh = Site("brats21", tiny_cache).handle("train", broadcast, later)
    assert kept._Site__batches is batches and kept._Site__network is network
    assert reply.meta == fresh.meta
    assert all(np.array_equal(reply.arrays[k], fresh.arrays[k]) for k in fresh.arrays)
    kept.handle("train", broadcast, {**later, "train": {**later["train"], "batch_size": 2}})
    assert kept._Site__batches is not batches  # other batch settings: other batches
