import copy
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gliofed.federated.protocol.payload import (
    MAX_N_CASES,
    Payload,
    PayloadError,
    arrays_to_state,
    state_to_arrays,
    validate,
    validate_reply,
)
from gliofed.model import MultiTaskUNet
from gliofed.vocab import MARKER_CLASSES, MARKERS


def test_serialisation_round_trips_and_nbytes_is_its_length():
    p = Payload("weights_update", {"w:a": np.arange(7, dtype=np.float32), "w:b": np.ones((2, 3), np.int64)},
                {"site": "x", "n_cases": 3})
    data = p.serialize()
    back = Payload.deserialize(data)
    assert p.nbytes == len(data) and back.kind == p.kind and back.meta == p.meta
    np.testing.assert_array_equal(back.arrays["w:b"], p.arrays["w:b"])
    assert Payload.deserialize(data).serialize() == data  # deterministic bytes


def test_model_weights_round_trip():
    net = MultiTaskUNet(features=(4, 8, 16, 32), hidden=8)
    state = arrays_to_state(state_to_arrays(net))
    assert state.keys() == net.state_dict().keys()


@pytest.mark.parametrize("payload,message", [
    (Payload("weights_update", {"images": np.zeros(3)}, {"site": "x"}), "field 'images' is not declared"),
    (Payload("weights_update", {"w:a": np.array([np.nan])}, {"site": "x"}), "NaN or Inf"),
    (Payload("weights_update", {}, {"patient": "x"}), "metadata 'patient' is not declared"),
    (Payload("secrets", {}, {}), "kind 'secrets' is not declared"),
])
def test_validation_refuses_undeclared_or_bad_payloads(payload, message):
    with pytest.raises(PayloadError, match=message):
        validate(payload)


def test_oversized_payload_is_refused():
    payload = Payload("weights_update", {"w:a": np.zeros(1000, np.float32)}, {"site": "x"})
    validate(payload, max_bytes=10_000)
    with pytest.raises(PayloadError, match="exceeds the limit of 1,000 bytes"):
        validate(payload, max_bytes=1000)


# ------------------------------------------------------------------------- issue 14: replies as data

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)
WEIGHT_DTYPES = st.sampled_from([np.float32, np.float64, np.float16, np.int64])


@st.composite
def references(draw) -> dict[str, np.ndarray]:
    """A broadcast model: 1-4 ``w:`` arrays of small shapes, float weights and integer buffers."""
    names = draw(st.lists(st.from_regex(r"w:[a-z]{1,6}(\.[a-z0-9]{1,3})?", fullmatch=True), min_size=1, max_size=4,
                          unique=True))
    return {n: np.zeros(draw(SHAPES), dtype=draw(WEIGHT_DTYPES)) for n in names}


def _finite(dtype) -> st.SearchStrategy:
    if np.dtype(dtype).kind == "f":
        return st.floats(-1e3, 1e3, allow_nan=False, width=16 if dtype == np.float16 else 32)
    return st.integers(-1000, 1000)


@st.composite
def weight_replies(draw) -> tuple[Payload, dict[str, np.ndarray]]:
    """A well-formed weights_update for a drawn broadcast model (the reference)."""
    reference = draw(references())
    arrays = {n: draw(hnp.arrays(r.dtype, r.shape, elements=_finite(r.dtype))) for n, r in reference.items()}
    n_cases = draw(st.integers(1, MAX_N_CASES))
    meta = {"site": draw(st.text(min_size=1, max_size=8)), "n_cases": n_cases,
            "loss": draw(st.none() | st.floats(-1e6, 1e6, allow_nan=False))}
    if draw(st.booleans()):
        meta["n_masked"] = draw(st.integers(0, n_cases))
    return Payload("weights_update", arrays, meta), reference


def _set(arrays, name, value):
    arrays[name] = value


def _first_float(payload):
    return next((n for n, a in payload.arrays.items() if a.dtype.kind == "f" and a.size), None)


#: one malformation each; every one must be refused (a mutation that does not apply returns False)
def _mutate_weights(payload: Payload, reference, choice: int, data) -> bool:
    arrays, meta = payload.arrays, payload.meta
    name = min(arrays)
    if choice == 0:  # a missing key
        del arrays[name]
    elif choice == 1:  # an unexpected weight
        arrays["w:zz_extra"] = np.zeros(2, np.float32)
    elif choice == 2:  # an undeclared field
        arrays["images"] = np.zeros(2, np.float32)
    elif choice == 3:  # wrong shape (broadcastable, which the average would silently accept)
        arrays[name] = np.zeros((*arrays[name].shape, 2), arrays[name].dtype)
    elif choice == 4:  # wrong dtype
        arrays[name] = arrays[name].astype(np.complex64 if arrays[name].dtype != np.complex64 else np.float32)
    elif choice == 5:  # NaN / Inf in a float weight
        target = _first_float(payload)
        if target is None:
            return False
        arrays[target] = arrays[target].copy()
        arrays[target].flat[data.draw(st.integers(0, arrays[target].size - 1))] = data.draw(
            st.sampled_from([np.nan, np.inf, -np.inf]))
    elif choice == 6:  # NaN hidden in an object / string / void / complex array
        arrays[name] = data.draw(st.sampled_from([
            np.array([1.0, np.nan], dtype=object), np.array(["nan"]), np.zeros(2, dtype="V8"),
            np.array([1 + 1j, complex(np.nan, 0)]), np.zeros(2, dtype=[("a", "f4")])]))
    elif choice == 7:  # n_cases poisoned
        meta["n_cases"] = data.draw(st.sampled_from([float("nan"), -3, 0, "12", 1e30, True, 3.0, None,
                                                     MAX_N_CASES + 1, [4]]))
    elif choice == 8:  # loss not a finite number
        meta["loss"] = data.draw(st.sampled_from([float("nan"), float("inf"), "0.1", [0.1], True]))
    elif choice == 9:  # site not a string
        meta["site"] = data.draw(st.sampled_from([3, None, "", ["a"]]))
    elif choice == 10:  # n_masked out of range
        meta["n_masked"] = data.draw(st.sampled_from([-1, meta["n_cases"] + 1, True, 0.5, "1"]))
    elif choice == 11:  # a required key missing
        del meta[data.draw(st.sampled_from(["site", "n_cases"]))]
    elif choice == 12:  # an undeclared metadata key
        meta["patient_age"] = 61
    elif choice == 13:  # the wrong kind
        payload.kind = data.draw(st.sampled_from(["distilled_set", "model", "secrets"]))
    elif choice == 14:  # an array that is not an array
        arrays[name] = arrays[name].tolist()
    return True


@FAST
@given(weight_replies())
def test_every_well_formed_weights_update_passes(case):
    payload, reference = case
    validate_reply(payload, "weights_update", reference, max_bytes=None)
    validate_reply(Payload.deserialize(payload.serialize()), "weights_update", reference)  # also after the wire


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(weight_replies(), st.integers(0, 14), st.data())
def test_every_malformed_weights_update_is_refused(case, choice, data):
    payload, reference = case
    payload = Payload(payload.kind, dict(payload.arrays), copy.deepcopy(payload.meta))
    if not _mutate_weights(payload, reference, choice, data):
        return
    with pytest.raises(PayloadError, match=r"^payload|^reply"):
        validate_reply(payload, "weights_update", reference)


def test_refusals_name_the_field_in_one_line():
    reference = {"w:conv.weight": np.zeros((2, 3), np.float32), "w:bn.count": np.zeros((), np.int64)}
    good = {"w:conv.weight": np.ones((2, 3), np.float32), "w:bn.count": np.array(4)}
    cases = [
        ({"w:conv.weight": np.ones((2, 3), np.float32)}, {}, "lacks field 'w:bn.count'"),
        ({**good, "w:conv.weight": np.ones((1, 3), np.float32)}, {}, r"'w:conv.weight' has shape \(1, 3\)"),
        ({**good, "w:conv.weight": np.ones((2, 3), np.float64)}, {}, "'w:conv.weight' has dtype float64"),
        (good, {"n_cases": 1e30}, r"'n_cases' = 1e\+30 is not an integer"),
        (good, {"n_cases": True}, "'n_cases' = True is not an integer"),
        (good, {"n_masked": 9}, r"'n_masked' = 9 is not an integer in \[0, 4\]"),
        (good, {"loss": float("nan")}, "'loss' = nan is not a finite number"),
    ]
    for arrays, meta, message in cases:
        payload = Payload("weights_update", arrays, {"site": "a", "n_cases": 4, "loss": 0.5, **meta})
        with pytest.raises(PayloadError, match=message) as error:
            validate_reply(payload, "weights_update", reference)
        assert "\n" not in str(error.value)
    validate_reply(Payload("weights_update", good, {"site": "a", "n_cases": 4, "loss": None, "n_masked": 4}),
                   "weights_update", reference)


def test_size_limit_still_applies_to_replies():
    payload = Payload("weights_update", {"w:a": np.zeros(1000, np.float32)}, {"site": "x", "n_cases": 1})
    with pytest.raises(PayloadError, match="exceeds the limit"):
        validate_reply(payload, "weights_update", {"w:a": np.zeros(1000, np.float32)}, max_bytes=1000)


@FAST
@given(st.binary(max_size=300) | st.builds(lambda p, cut: p[:cut], st.just(
    Payload("weights_update", {"w:a": np.ones(3, np.float32)}, {"site": "x", "n_cases": 2}).serialize()),
    st.integers(0, 400)))
def test_undecodable_bytes_are_a_payload_error_never_a_crash(data):
    try:
        Payload.deserialize(data)
    except PayloadError as error:
        assert "\n" not in str(error)


# distilled sets ------------------------------------------------------------------------------------
@st.composite
def distilled_sets(draw) -> Payload:
    """A well-formed distilled set: drawn n, channels, cache shape and scale, consistent tables and counts."""
    n, channels = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    shape = [draw(st.integers(1, 12)) for _ in range(3)]
    scale = draw(st.integers(1, 6))
    low = tuple(max(2, math.ceil(s / scale)) for s in shape)
    n_cases = draw(st.integers(1, 50))
    dtype = draw(st.sampled_from([np.float16, np.float32]))
    arrays = {
        "syn_images": draw(hnp.arrays(dtype, (n, channels, *low), elements=st.floats(-4, 4, width=16))),
        "syn_masks": draw(hnp.arrays(np.uint8, (n, *low), elements=st.integers(0, 3))),
        "syn_labels": np.stack([draw(hnp.arrays(np.int8, n, elements=st.integers(-1, len(MARKER_CLASSES[m]) - 1)))
                                for m in MARKERS], axis=1),
    }
    for marker in MARKERS:
        k = len(MARKER_CLASSES[marker])
        counts = np.array(draw(st.lists(st.integers(0, n_cases // k), min_size=k, max_size=k)), np.int64)
        raw = draw(hnp.arrays(np.float64, (k, k), elements=st.floats(0.01, 1.0)))
        table = (raw / raw.sum(1, keepdims=True)) * (counts > 0)[:, None]
        arrays[f"soft:{marker}"], arrays[f"counts:{marker}"] = table.astype(np.float32), counts
    meta = {"site": "s", "n_cases": n_cases, "shape": shape, "scale": scale,
            "init": draw(st.sampled_from(["noise", "class_stats", "real_unsafe"])),
            "temperature": draw(st.floats(0.1, 10.0))}
    return Payload("distilled_set", arrays, meta)


def _mutate_distilled(payload: Payload, choice: int, data) -> bool:
    arrays, meta = payload.arrays, payload.meta
    marker = data.draw(st.sampled_from(MARKERS))
    k = len(MARKER_CLASSES[marker])
    if choice == 0:
        del arrays[data.draw(st.sampled_from(sorted(arrays)))]
    elif choice == 1:
        arrays["soft:unknown"] = np.zeros((2, 2), np.float32)
    elif choice == 2:
        arrays["syn_images"] = arrays["syn_images"].astype(np.float64)
    elif choice == 3:  # spatial shape inconsistent with shape / scale (e.g. a full-resolution copy)
        images = arrays["syn_images"]
        arrays["syn_images"] = np.zeros((*images.shape[:2], *(s + 1 for s in images.shape[2:])), images.dtype)
    elif choice == 4:
        masks = arrays["syn_masks"].copy()
        masks.flat[0] = data.draw(st.integers(4, 255))
        arrays["syn_masks"] = masks
    elif choice == 5:
        labels = arrays["syn_labels"].copy()
        labels[0, MARKERS.index(marker)] = data.draw(st.sampled_from([-2, k, 100]))
        arrays["syn_labels"] = labels
    elif choice == 6:
        soft = arrays[f"soft:{marker}"].copy()
        soft[0, 0] = data.draw(st.sampled_from([-0.5, 1.5, np.nan]))
        arrays[f"soft:{marker}"] = soft
    elif choice == 7:  # a row that does not sum to 1 (seen class) or 0 (unseen)
        soft = arrays[f"soft:{marker}"].copy()
        soft[0] = soft[0] * 0.5 if soft[0].sum() > 0 else np.full(k, 0.4)
        arrays[f"soft:{marker}"] = soft
    elif choice == 8:
        counts = arrays[f"counts:{marker}"].copy()
        counts[0] = data.draw(st.sampled_from([-1, meta["n_cases"] + 1]))
        arrays[f"counts:{marker}"] = counts
    elif choice == 9:
        arrays[f"counts:{marker}"] = arrays[f"counts:{marker}"].astype(np.float32)
    elif choice == 10:
        meta["shape"] = data.draw(st.sampled_from([[4, 4], [0, 4, 4], [4.0, 4, 4], "4,4,4", [True, 4, 4], None]))
    elif choice == 11:
        meta["scale"] = data.draw(st.sampled_from([0, -1, 1.5, "2", True]))
    elif choice == 12:
        meta["init"] = data.draw(st.sampled_from(["real", 3, None]))
    elif choice == 13:
        meta["temperature"] = data.draw(st.sampled_from([0, -1.0, float("nan"), "2", True]))
    elif choice == 14:
        arrays["syn_labels"] = arrays["syn_labels"].astype(np.int64)
    elif choice == 15:
        arrays[f"soft:{marker}"] = np.zeros((k + 1, k), np.float32)
    return True


@FAST
@given(distilled_sets())
def test_every_well_formed_distilled_set_passes(payload):
    validate_reply(payload, "distilled_set", None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(distilled_sets(), st.integers(0, 15), st.data())
def test_every_malformed_distilled_set_is_refused(payload, choice, data):
    payload = Payload(payload.kind, dict(payload.arrays), copy.deepcopy(payload.meta))
    _mutate_distilled(payload, choice, data)
    with pytest.raises(PayloadError, match=r"^payload"):
        validate_reply(payload, "distilled_set", None)


def test_replies_built_by_a_site_pass(tiny_cache):
    """The real producers (a Site training and condensing) make replies that validate_reply accepts."""
    from gliofed.federated.site import Site
    from tests.federated.helpers import site_settings, small_model

    model = small_model()
    reference = state_to_arrays(model)
    outgoing = Payload("model", reference, {"round": 1, "strategy": "fedavg"})
    distilled = Site("tcga_lgg", tiny_cache).handle("distill", outgoing, site_settings(model, distill={"steps": 0}))
    validate_reply(distilled, "distilled_set", None)
    reply = Site("brats21", tiny_cache).handle("train", outgoing, site_settings(model, epochs=1))
    validate_reply(reply, "weights_update", reference)
    validate_reply(Payload.deserialize(reply.serialize()), "weights_update", reference)  # as over Flower


def test_every_payload_kind_of_the_vocabulary_is_declared_once():
    from gliofed.federated.protocol.payload import DECLARED, REQUIRED_META
    from gliofed.vocab import PAYLOAD_KINDS, REPLY_KINDS, TASKS

    assert tuple(DECLARED) == tuple(REQUIRED_META) == PAYLOAD_KINDS
    assert set(REPLY_KINDS) == set(TASKS) and set(REPLY_KINDS.values()) <= set(PAYLOAD_KINDS)
