import numpy as np
import pytest

from gliofed.federated.payload import (
    Payload,
    PayloadError,
    arrays_to_state,
    state_to_arrays,
    validate,
)
from gliofed.model import MultiTaskUNet


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
