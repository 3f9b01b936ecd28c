"""FedAvgM, FedAdam, FedBN, the learning-rate schedule, kept optimizer state and float16 transport."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gliofed.errors import ConfigError, GliofedError, PolicyError
from gliofed.federated.protocol import Payload, state_to_arrays, validate_reply
from gliofed.federated.server.strategies import FedAdam, FedAvg, FedAvgM, FedBN, make_strategy
from gliofed.federated.server.strategies.fedavg import LR_FLOOR, schedule_factor
from gliofed.federated.site import Site
from tests.federated.helpers import site_settings, small_config, small_model


class Tiny(nn.Module):
    """Two parameters and a BatchNorm (parameters and buffers)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.bn = nn.BatchNorm1d(2)
        with torch.no_grad():
            self.lin.weight.fill_(1.0)
            self.lin.bias.fill_(0.0)


def _reply(model: nn.Module, site: str, n_cases: int, shift: float, bn_mean: float = 0.0) -> Payload:
    """A site's update: every parameter moved by ``shift``, running mean set to ``bn_mean``."""
    arrays = state_to_arrays(model)
    for key in ("w:lin.weight", "w:lin.bias", "w:bn.weight", "w:bn.bias"):
        arrays[key] = arrays[key] + np.float32(shift)
    arrays["w:bn.running_mean"] = np.full(2, bn_mean, np.float32)
    return Payload("weights_update", arrays, {"site": site, "n_cases": n_cases})


def _weight(model: Tiny) -> float:
    return float(model.lin.weight.detach()[0, 0])


def _round(strategy, model, shifts, rnd, bn_means=(0.0, 0.0)):
    replies = {site: _reply(model, site, 10, shift, mean) for site, shift, mean in zip("ab", shifts, bn_means)}
    strategy.aggregate(model, replies, rnd)


def test_fedavgm_without_momentum_at_server_lr_one_is_fedavg():
    a, b = Tiny(), Tiny()
    _round(FedAvg(), a, (0.2, -0.4), 1)
    _round(FedAvgM(server_lr=1.0, momentum=0.0), b, (0.2, -0.4), 1)
    for key, value in state_to_arrays(a).items():
        np.testing.assert_allclose(state_to_arrays(b)[key], value, rtol=1e-6)


def test_fedavgm_accumulates_momentum_on_the_pseudo_gradient():
    model, strategy = Tiny(), FedAvgM(server_lr=1.0, momentum=0.9)
    _round(strategy, model, (-0.1, -0.1), 1)  # sites move every parameter by -0.1: g = +0.1, m = 0.1
    assert _weight(model) == pytest.approx(0.9)
    _round(strategy, model, (-0.1, -0.1), 2)  # m = 0.9 * 0.1 + 0.1 = 0.19
    assert _weight(model) == pytest.approx(0.9 - 0.19)


def test_fedadam_steps_by_about_its_learning_rate_with_adams_bias_correction():
    model, strategy = Tiny(), FedAdam(server_lr=0.01, beta1=0.9, beta2=0.99)
    _round(strategy, model, (0.3, 0.1), 1)  # delta = +0.2: m_hat = 0.2, v_hat = 0.04 -> step +0.01
    assert _weight(model) == pytest.approx(1.01)
    _round(strategy, model, (-0.2, -0.2), 2)  # delta = -0.2
    m = 0.9 * 0.02 + 0.1 * -0.2
    v = 0.99 * 0.0004 + 0.01 * 0.04
    expected = 1.01 + 0.01 * (m / (1 - 0.81)) / (math.sqrt(v / (1 - 0.99**2)) + 1e-9)
    assert _weight(model) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("strategy", [FedAvgM(server_lr=0.5, momentum=0.9), FedAdam(server_lr=0.01)])
def test_server_optimizers_leave_batchnorm_statistics_to_the_plain_average(strategy):
    model = Tiny()
    _round(strategy, model, (0.2, 0.2), 1, bn_means=(1.0, 3.0))
    assert model.bn.running_mean.tolist() == pytest.approx([2.0, 2.0])  # averaged, not stepped
    assert float(model.bn.weight.detach()[0]) != pytest.approx(1.2)  # a parameter: stepped, not averaged


def test_server_optimizer_state_survives_a_checkpoint():
    def run(interrupt: bool):
        model, strategy = Tiny(), FedAvgM(server_lr=0.7, momentum=0.9)
        _round(strategy, model, (-0.1, 0.05), 1)
        _round(strategy, model, (0.2, -0.3), 2)
        if interrupt:
            fresh = FedAvgM(server_lr=0.7, momentum=0.9)
            fresh.load_state_dict(strategy.state_dict())
            strategy = fresh
        _round(strategy, model, (0.1, 0.1), 3)
        return state_to_arrays(model)

    once, resumed = run(False), run(True)
    for key in once:
        np.testing.assert_array_equal(once[key], resumed[key])


def test_fedbn_sends_each_site_its_own_batchnorm_and_averages_the_rest():
    model, strategy = Tiny(), FedBN()
    _round(strategy, model, (0.2, -0.4), 1, bn_means=(1.0, 3.0))
    assert _weight(model) == pytest.approx(0.9)  # shared weights: averaged
    to_a, to_b = strategy.broadcast("a", model, 2).arrays, strategy.broadcast("b", model, 2).arrays
    assert to_a["w:bn.running_mean"].tolist() == [1.0, 1.0] and to_b["w:bn.running_mean"].tolist() == [3.0, 3.0]
    assert float(to_a["w:bn.weight"][0]) == pytest.approx(1.2) and float(to_b["w:bn.weight"][0]) == pytest.approx(0.6)
    np.testing.assert_array_equal(to_a["w:lin.weight"], to_b["w:lin.weight"])
    new = strategy.broadcast("c", model, 2).arrays  # a site that never trained: the averaged BatchNorm
    assert new["w:bn.running_mean"].tolist() == [2.0, 2.0]
    routed = strategy.case_site_models(model)
    assert set(routed) == {"a", "b"} and routed["b"]["w:bn.running_mean"].tolist() == [3.0, 3.0]


def test_fedbn_scores_each_test_case_with_its_own_sites_model(tiny_cache):
    from gliofed.data.dataset import CaseDataset
    from gliofed.engine import predict
    from gliofed.federated.simulate import routed_predictions

    model, strategy = small_model(), FedBN()
    test = CaseDataset(tiny_cache, split="test")
    site = test.sites[0]
    changed = {key: value + 0.5 for key, value in state_to_arrays(model).items() if key.endswith("running_mean")}
    strategy.site_bn = {site: changed}
    predictions = routed_predictions(strategy, model, test, "cpu", hd95=False)
    assert list(predictions["subject"]) == list(test.index["subject_id"])
    own = small_model()
    own.load_state_dict({**model.state_dict(), **{k[2:]: torch.from_numpy(v) for k, v in changed.items()}})
    expected = predict(own, test.for_site(site), device="cpu", progress=False, hd95=False)
    got = predictions[predictions["site"] == site].reset_index(drop=True)
    np.testing.assert_allclose(got["p_idh_1"], expected["p_idh_1"], rtol=1e-6)
    other = predictions[predictions["site"] != site].reset_index(drop=True)  # no BatchNorm of their own: global
    plain = predict(model, test, device="cpu", progress=False, hd95=False)
    np.testing.assert_allclose(other["p_idh_1"], plain[plain["site"] != site]["p_idh_1"], rtol=1e-6)


def test_cosine_schedule_sends_a_decaying_learning_rate_floored_at_five_percent():
    model, config = small_model(), small_config(lr=0.01)
    strategy = FedAvg(lr_schedule="cosine", rounds=4)
    rates = [strategy.configure_round(model, r, ["a"], config)["a"].settings["train"]["lr"] for r in (1, 3, 4)]
    assert rates == pytest.approx([0.01, 0.005, 0.01 * max(LR_FLOOR, 0.5 * (1 + math.cos(math.pi * 3 / 4)))])
    assert schedule_factor("cosine", 10, 10) >= LR_FLOOR
    assert FedAvg().configure_round(model, 3, ["a"], config)["a"].settings["train"]["lr"] == 0.01
    with pytest.raises(ConfigError, match="needs the run's rounds"):
        FedAvg(lr_schedule="cosine")


def test_float16_transport_halves_the_bytes_and_a_site_answers_in_float16(tiny_cache):
    model = small_model()
    full, half = FedAvg().broadcast("s", model, 1), FedAvg(transport="float16").broadcast("s", model, 1)
    floats = {key for key, value in full.arrays.items() if value.dtype.kind == "f"}
    assert floats and all(half.arrays[key].dtype == np.float16 for key in floats)
    assert half.nbytes < 0.6 * full.nbytes
    site = Site("tcga_lgg", tiny_cache)
    reply = site.handle("train", half, site_settings(model, epochs=1))
    assert {v.dtype for k, v in reply.arrays.items() if v.dtype.kind == "f"} == {np.dtype(np.float16)}
    validate_reply(reply, "weights_update", half.arrays)  # the server's check against what it sent passes


def test_a_site_keeps_its_optimizer_state_only_when_asked(tiny_cache):
    model = small_model()
    sent = Payload("model", state_to_arrays(model), {})

    def second_update(keep: bool, site: Site) -> dict:
        site.handle("train", sent, site_settings(model, epochs=1, keep_optimizer=keep))
        return site.handle("train", sent, site_settings(model, epochs=1, keep_optimizer=keep)).arrays

    kept, fresh = second_update(True, Site("tcga_lgg", tiny_cache)), second_update(False, Site("tcga_lgg", tiny_cache))
    first = Site("tcga_lgg", tiny_cache).handle("train", sent, site_settings(model, epochs=1)).arrays
    assert any(not np.array_equal(kept[k], fresh[k]) for k in kept)  # the kept moments change the second round
    for key in fresh:  # without the option every round starts fresh: the same request, the same answer
        np.testing.assert_array_equal(fresh[key], first[key])
    with pytest.raises(PolicyError, match="keep_optimizer"):
        Site("tcga_lgg", tiny_cache).handle("train", sent, site_settings(model, epochs=1, keep_optimizer="yes"))


def test_make_strategy_builds_the_new_strategies_with_their_options():
    adam = make_strategy("fedadam", 2, options={"server_lr": 3e-3, "lr_schedule": "cosine", "rounds": 7})
    assert isinstance(adam, FedAdam) and adam.local_epochs == 2 and adam.server_lr == 3e-3 and adam.rounds == 7
    assert adam.identity()["settings"]["options"]["server_lr"] == 3e-3  # a resume checks the options too
    assert make_strategy("fedprox", 1, 0.1, options={"keep_optimizer": True}).mu == 0.1
    assert isinstance(make_strategy("fedbn"), FedBN) and isinstance(make_strategy("fedavgm"), FedAvgM)
    with pytest.raises(GliofedError, match="does not take"):
        make_strategy("fedavg", options={"momentum": 0.9})
    with pytest.raises(GliofedError, match="takes no options"):
        make_strategy("distill", options={"transport": "float16"})
    with pytest.raises(ConfigError, match="transport"):
        make_strategy("fedavg", options={"transport": "int8"})
