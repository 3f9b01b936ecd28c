"""The one round loop: what it records, how a strategy configures a round, who must answer (no transport, no data)."""

import numpy as np
import pytest

from gliofed.errors import FederationError
from gliofed.federated.protocol import Payload, Request, state_to_arrays
from gliofed.federated.server.rounds import RoundResult, federated_round, run_rounds
from gliofed.federated.server.strategies import Centralized, FedAvg
from gliofed.federated.server.strategies.centralized import POOLED
from tests.federated.helpers import small_config, small_model


def _answering(shift: float, n_cases=None, calls=None):
    """An exchange whose every site sends the broadcast weights + ``shift`` (and describes itself when asked)."""

    def exchange(requests):
        if calls is not None:
            calls.append({site: request.task for site, request in requests.items()})
        answers = {}
        for site, request in requests.items():
            if request.task == "describe":
                answers[site] = Payload("site_info", {}, {"site": site, "n_cases": 2, "raw_bytes": 1000 + len(site)})
                continue
            arrays = {k: (v + shift).astype(v.dtype) if v.dtype.kind == "f" else v.copy()
                      for k, v in request.payload.arrays.items()}
            answers[site] = Payload("weights_update", arrays,
                                    {"site": site, "n_cases": (n_cases or {}).get(site, 2), "loss": 0.5})
        return answers

    return exchange


def test_a_round_records_bytes_per_site_and_the_strategy_information():
    model = small_model()
    result = federated_round(FedAvg(1), model, 1, ["a", "b"], small_config(), _answering(1.0))
    assert isinstance(result, RoundResult) and result.excluded == {}
    assert set(result.bytes_up) == set(result.bytes_down) == {"a", "b"}
    assert result.bytes_down["a"] == Payload("model", state_to_arrays(small_model()),
                                             {"round": 1, "strategy": "fedavg"}).nbytes
    assert result.info == {"site_loss": {"a": 0.5, "b": 0.5}}
    assert result.record()["info"] == {"site_loss": {"a": 0.5, "b": 0.5}}


def test_run_rounds_plays_from_the_start_round_and_calls_the_hooks_in_order():
    model, seen = small_model(), []
    before = state_to_arrays(model)
    history = run_rounds(FedAvg(1), model, ["a", "b"], small_config(), lambda rnd: _answering(0.25), 3,
                         start_round=2, history=[{"round": 1}],
                         evaluate=lambda rnd, net: seen.append(("evaluate", rnd)) or {"metrics": {"dice_WT": 0.5}},
                         after_round=lambda rnd, so_far: seen.append(("saved", rnd, len(so_far))))
    assert [r["round"] for r in history] == [1, 2, 3]
    assert seen == [("evaluate", 2), ("saved", 2, 2), ("evaluate", 3), ("saved", 3, 3)]
    assert list(history[-1]) == ["round", "wall_s", "metrics", "bytes_up", "bytes_down", "excluded", "info"]
    name = next(k for k, v in before.items() if v.dtype.kind == "f")
    np.testing.assert_allclose(state_to_arrays(model)[name], before[name] + 0.5, rtol=0, atol=1e-6)  # two rounds


def test_centralized_configures_its_rounds_through_the_same_loop():
    """Round 1 asks every site its size and the data centre to train; later rounds only the data centre."""
    calls, model = [], small_model()
    sites = ["a", "b", POOLED]
    history = run_rounds(Centralized(1), model, sites, small_config(), lambda rnd: _answering(1.0, calls=calls), 2)
    assert calls == [{"a": "describe", "b": "describe", POOLED: "train"}, {POOLED: "train"}]
    assert history[0]["bytes_up"] == {"a": 1001, "b": 1001} and history[1]["bytes_up"] == {"a": 0, "b": 0}
    assert history[0]["bytes_down"] == {"a": 0, "b": 0} and history[0]["info"] == {"loss": 0.5}


def test_centralized_stops_when_a_site_cannot_describe_its_cases():
    def exchange(requests):
        answers = _answering(1.0)(requests)
        answers["b"] = OSError("cache unreadable")
        return answers

    with pytest.raises(FederationError, match="site b could not describe its cases: OSError: cache unreadable"):
        federated_round(Centralized(1), small_model(), 1, ["a", "b", POOLED], small_config(), exchange)


def test_a_strategy_decides_who_must_answer():
    class Everyone(FedAvg):
        def check_answers(self, rnd, requests, replies, excluded, min_sites):
            if excluded:
                raise FederationError(f"round {rnd}: {sorted(excluded)} did not answer")

    def exchange(requests):
        answers = _answering(1.0)(requests)
        del answers["b"]
        return answers

    result = federated_round(FedAvg(1), small_model(), 1, ["a", "b"], small_config(), exchange)
    assert set(result.excluded) == {"b"} and result.excluded["b"].startswith("TimeoutError")
    with pytest.raises(FederationError, match=r"\['b'\] did not answer"):
        federated_round(Everyone(1), small_model(), 1, ["a", "b"], small_config(), exchange)


def test_requests_are_named_tuples_a_transport_can_unpack():
    requests = FedAvg(2).configure_round(small_model(), 3, ["a", "b"], small_config(seed=7))
    task, payload, settings = requests["b"]
    assert isinstance(requests["b"], Request) and task == "train" and payload.kind == "model"
    assert settings["epochs"] == 2 and settings["seed"] != requests["a"].settings["seed"]
