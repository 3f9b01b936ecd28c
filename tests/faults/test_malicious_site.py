"""A site's reply is data to validate, not to trust: every malformed reply costs only its sender the round, the
global model is averaged from the valid replies alone, and the reason recorded is one line."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gliofed.federated.protocol.payload import Payload, PayloadError, state_to_arrays
from gliofed.federated.server.rounds import check_reply, federated_round, one_line
from gliofed.federated.server.strategies import DistillFederation, FedAvg, FederationError
from tests.federated.helpers import small_config, small_model

HONEST = "honest"


def _honest_update(outgoing: Payload) -> Payload:
    arrays = {k: (v + 1 if v.dtype.kind == "f" else v.copy()) for k, v in outgoing.arrays.items()}
    return Payload("weights_update", arrays, {"site": HONEST, "n_cases": 3, "loss": 0.5})


def _first_float(arrays):
    return next(k for k, v in arrays.items() if v.dtype.kind == "f" and v.ndim > 1)


def _mutate(reply: Payload, how: str) -> Payload:
    arrays, meta = dict(reply.arrays), {**reply.meta, "site": "evil"}
    key = _first_float(arrays)
    if how == "wrong_shape":
        arrays[key] = np.ones(1, arrays[key].dtype)  # broadcast into the average on main
    elif how == "complex_nan":
        arrays[key] = np.full(arrays[key].shape, complex(np.nan, 0))
    elif how == "int_instead_of_float":
        arrays[key] = np.zeros(arrays[key].shape, np.int64)
    elif how == "missing_key":
        del arrays[key]
    elif how == "undeclared_array":
        arrays["images"] = np.zeros(3, np.float32)
    elif how == "extra_weight":
        arrays["w:backdoor"] = np.zeros(3, np.float32)
    elif how == "undeclared_meta":
        meta["patient_id"] = "P-0001"
    elif how == "wrong_kind":
        return Payload("site_info", {}, {"site": "evil", "n_cases": 3, "raw_bytes": 0})
    elif how == "other_site_name":
        meta["site"] = HONEST
    elif how.startswith("n_cases="):
        meta["n_cases"] = {"nan": float("nan"), "negative": -3, "zero": 0, "string": "3", "huge": 1e30,
                           "bool": True, "float": 3.0, "inf": float("inf")}[how.split("=")[1]]
    elif how == "loss_inf":
        meta["loss"] = float("inf")
    return Payload(reply.kind, arrays, meta)


MUTATIONS = ["wrong_shape", "complex_nan", "int_instead_of_float", "missing_key", "undeclared_array", "extra_weight",
             "undeclared_meta", "wrong_kind", "other_site_name", "loss_inf",
             *[f"n_cases={v}" for v in ("nan", "negative", "zero", "string", "huge", "bool", "float", "inf")]]


def _round(replies, strategy=None, min_sites=1, model=None):
    model = model or small_model()
    outgoing = Payload("model", state_to_arrays(model), {})

    def exchange(requests):
        return {site: (reply(outgoing) if callable(reply) else reply) for site, reply in replies.items()}

    result = federated_round(strategy or FedAvg(1), model, 1, list(replies), small_config(), exchange,
                             min_sites=min_sites)
    return model, outgoing, result


@pytest.mark.parametrize("how", MUTATIONS)
def test_a_malformed_reply_leaves_only_its_site_out_and_never_reaches_the_average(how):
    model, outgoing, result = _round({HONEST: _honest_update, "evil": lambda o: _mutate(_honest_update(o), how)})
    excluded = result.excluded
    assert set(excluded) == {"evil"} and excluded["evil"].startswith("PayloadError: ")
    expected = _honest_update(outgoing).arrays
    for key, value in state_to_arrays(model).items():  # the global model is the honest site's update alone
        np.testing.assert_array_equal(value, expected[key])


def test_too_few_valid_replies_stop_the_round_with_every_reason():
    with pytest.raises(FederationError, match="only 1 of 2 sites answered \\(min_sites=2\\): evil: PayloadError"):
        _round({HONEST: _honest_update, "evil": lambda o: _mutate(_honest_update(o), "missing_key")}, min_sites=2)


def test_a_nested_traceback_becomes_a_one_line_reason():
    nested = RuntimeError("disk on fire\nTraceback (most recent call last):\n" + "  File 'x.py', line 1\n" * 55)
    _, _, result = _round({HONEST: _honest_update, "evil": nested})
    assert result.excluded["evil"] == "RuntimeError: disk on fire"
    assert len(one_line(ValueError("x" * 5000))) <= 300


def _distilled_set(site: str, **changes) -> Payload:
    rng = np.random.default_rng(0)
    arrays = {"syn_images": rng.normal(size=(2, 4, 2, 4, 4)).astype(np.float16),  # shape / scale 4, at least 2
              "syn_masks": rng.integers(0, 4, (2, 2, 4, 4)).astype(np.uint8),
              "syn_labels": np.array([[0, 1, 0, 2], [1, 0, 1, 0]], np.int8)}
    for marker, k in (("idh", 2), ("codeletion", 2), ("mgmt", 2), ("grade", 3)):
        arrays[f"soft:{marker}"] = np.full((k, k), 1.0 / k, np.float32)
        arrays[f"counts:{marker}"] = np.ones(k, np.int64)
    meta = {"site": site, "n_cases": 4, "shape": [3, 16, 16], "scale": 4, "init": "class_stats", "temperature": 2.0}
    for key, value in changes.items():
        (meta if key in meta else arrays)[key] = value
    if "drop" in changes:
        del arrays[changes["drop"]]
        del arrays["drop"]
    return Payload("distilled_set", arrays, meta)


@pytest.mark.parametrize("changes", [
    {"drop": "soft:idh"},
    {"syn_masks": np.full((2, 2, 4, 4), 9, np.uint8)},
    {"syn_labels": np.array([[5, 1, 0, 2], [1, 0, 1, 0]], np.int8)},
    {"shape": [10**6, 10**6, 10**6]},
    {"shape": "3x16x16"},
    {"syn_images": np.zeros((2, 4, 3, 4), np.float16)},
])
def test_a_malformed_distilled_set_is_left_out_before_the_server_trains_on_it(changes):
    strategy = DistillFederation({"server_epochs": 1, "steps": 0})
    _, _, result = _round({HONEST: lambda o: _distilled_set(HONEST),
                           "evil": lambda o: _distilled_set("evil", **changes)}, strategy=strategy)
    assert set(result.excluded) == {"evil"} and result.excluded["evil"].startswith("PayloadError: ")
    assert np.isfinite(result.info["server_loss"])


# property-based: whatever a site sends that differs from the model's layout, the server refuses it ------------------
_MODEL = small_model()
_OUTGOING = Payload("model", state_to_arrays(_MODEL), {})
_KEYS = sorted(_OUTGOING.arrays)


@st.composite
def malformed_updates(draw):
    reply = _honest_update(_OUTGOING)
    arrays, meta = dict(reply.arrays), dict(reply.meta)
    key = draw(st.sampled_from(_KEYS))
    kind = draw(st.sampled_from(["shape", "dtype", "nonfinite", "drop", "extra", "n_cases"]))
    if kind == "shape":
        shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=4)))
        if shape == arrays[key].shape:
            shape = (*shape, 2)
        arrays[key] = np.zeros(shape, arrays[key].dtype)
    elif kind == "dtype":
        dtype = draw(st.sampled_from(["float16", "float64", "int8", "int32", "uint8", "bool", "complex64"]))
        if np.dtype(dtype) == arrays[key].dtype:
            dtype = "complex128"
        arrays[key] = arrays[key].astype(dtype)
    elif kind == "nonfinite":
        float_keys = [k for k in _KEYS if arrays[k].dtype.kind == "f" and arrays[k].size]
        key = draw(st.sampled_from(float_keys))
        broken = arrays[key].copy().reshape(-1)
        broken[draw(st.integers(0, broken.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        arrays[key] = broken.reshape(arrays[key].shape)
    elif kind == "drop":
        del arrays[key]
    elif kind == "extra":
        arrays[draw(st.sampled_from(["w:extra", "images", "cases", "w:"]))] = np.zeros(2, np.float32)
    else:
        meta["n_cases"] = draw(st.one_of(st.integers(max_value=0), st.integers(min_value=10_000_001),
                                         st.floats(allow_nan=True), st.text(max_size=3), st.booleans(), st.none()))
    return Payload("weights_update", arrays, meta)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(malformed_updates())
def test_every_malformed_update_is_refused_with_a_payload_error(reply):
    with pytest.raises(PayloadError):
        check_reply(HONEST, reply, "train", _OUTGOING, None)


def test_the_honest_update_passes():
    check_reply(HONEST, _honest_update(_OUTGOING), "train", _OUTGOING, None)
