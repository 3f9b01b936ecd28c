"""Faults over Flower: a reply that does not decode, a remote traceback, a policy refusal (decoded inside the per-site
guard, so the server's round survives them), and, over a real loopback federation (``-m flower``), the exfiltration
request refused by a SuperNode whose operator did not allow it. The SuperNode that dies mid-round is
``tests/federated/test_flower.py::test_a_node_that_disappears_mid_run_is_left_out_and_the_round_finishes``."""

import os

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, RecordDict  # noqa: E402

from gliofed.errors import PolicyError  # noqa: E402
from gliofed.federated.protocol.payload import Payload  # noqa: E402
from gliofed.federated.protocol.records import payload_to_record  # noqa: E402
from gliofed.federated.server.rounds import SiteFailure, one_line  # noqa: E402
from gliofed.federated.server.server_app import decode_reply, distill_overrides  # noqa: E402

os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"


@pytest.fixture(autouse=True)
def _inside_a_run(monkeypatch):
    """flwr >= 1.41 builds a Message only inside a run (its TaskIdentity): these unit tests play the ServerApp."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def _request() -> Message:
    return Message(content=RecordDict({"x": ConfigRecord({})}), dst_node_id=7, message_type=MessageType.TRAIN)


@pytest.mark.parametrize("content", [
    RecordDict({}),
    RecordDict({"header": ConfigRecord({"kind": "weights_update", "meta": "{not json"}), "arrays": ArrayRecord()}),
    RecordDict({"header": ConfigRecord({"meta": "{}"}), "arrays": ArrayRecord()}),
    RecordDict({"header": ConfigRecord({"kind": "weights_update", "meta": "{}"})}),
])
def test_a_reply_that_does_not_decode_becomes_that_sites_failure(content):
    answer = decode_reply(Message(content, reply_to=_request()), "evil", 7)
    assert isinstance(answer, SiteFailure) and one_line(answer).startswith("undecodable reply: ")


def test_a_remote_traceback_becomes_one_line():
    reason = "<class 'RuntimeError'>:<'disk on fire\nTraceback (most recent call last):\n" + "  File 'x'\n" * 55 + "'>"
    answer = decode_reply(Message(Error(code=2, reason=reason), reply_to=_request()), "evil", 7)
    assert one_line(answer) == "RuntimeError: disk on fire (node 7)"


def test_a_refusal_is_recorded_as_the_sites_policy_error():
    refusal = RecordDict({"refusal": ConfigRecord({"reason": "site a refuses the 'distill' request: scale 1."})})
    answer = decode_reply(Message(refusal, reply_to=_request()), "a", 7)
    assert isinstance(answer, PolicyError) and one_line(answer) == ("PolicyError: site a refuses the 'distill' "
                                                                    "request: scale 1.")


def test_a_well_formed_reply_decodes_to_its_payload():
    payload = Payload("weights_update", {"w:a": np.arange(3, dtype=np.float32)}, {"site": "a", "n_cases": 2})
    answer = decode_reply(Message(payload_to_record(payload), reply_to=_request()), "a", 7)
    assert isinstance(answer, Payload) and answer.meta == payload.meta


def test_distill_overrides_from_the_run_config():
    assert distill_overrides("init=real_unsafe, scale=1,steps=0,perturb=0.5") == {
        "init": "real_unsafe", "scale": 1, "steps": 0, "perturb": 0.5}


@pytest.mark.flower
def test_the_exfiltration_request_is_refused_over_flower(loopback, tmp_path):
    # the shared federation (tests/conftest.py): upenn's operator opted in locally (teaching), brats21 runs the
    # default policy
    history = loopback.run({"strategy": "distill", "num-server-rounds": 1, "preset": "tiny", "min-nodes": 2,
                            "min-sites": 1, "round-timeout": 240, "distill": "init=real_unsafe,scale=1,steps=0",
                            "out-dir": str(tmp_path / "out")}, timeout=480)
    (round_one,) = history["rounds"]
    assert list(round_one["excluded"]) == ["brats21"]
    assert round_one["excluded"]["brats21"].startswith(
        "PolicyError: site brats21 refuses the 'distill' request: initialisation 'real_unsafe' copies patients")
    assert round_one["bytes_up"]["brats21"] == 0 and round_one["bytes_up"]["upenn"] > 0
