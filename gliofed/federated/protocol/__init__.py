"""The protocol between sites and the server: what may cross, and how a request is made.

- :mod:`~gliofed.federated.protocol.payload`: :class:`Payload` (declared kinds and fields, bytes on the wire) and
  the validation every reply passes before anything aggregates it;
- :mod:`~gliofed.federated.protocol.settings`: a :class:`Request` (task, payload, settings), :func:`site_request`,
  :func:`round_seed` and :class:`DistillSettings`;
- :mod:`~gliofed.federated.protocol.synthetic`: how a distilled set's low-resolution volumes are read back;
- :mod:`~gliofed.federated.protocol.records`: payloads as Flower records (needs ``flwr``).

Both rooms import this one; it imports neither (tested), nor the data pipeline or the engine.
"""

from __future__ import annotations

from gliofed.errors import PayloadError
from gliofed.federated.protocol.payload import Payload, arrays_to_state, state_to_arrays, validate, validate_reply
from gliofed.federated.protocol.settings import (
    MAX_PAYLOAD_BYTES,
    DistillSettings,
    Request,
    round_seed,
    site_request,
)

__all__ = ["Payload", "PayloadError", "validate", "validate_reply", "state_to_arrays", "arrays_to_state", "Request",
           "DistillSettings", "MAX_PAYLOAD_BYTES", "round_seed", "site_request"]
