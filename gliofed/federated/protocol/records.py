"""gliofed payloads <-> Flower records. Server and client side; imports no site data."""

from __future__ import annotations

import json

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from gliofed.federated.protocol.payload import Payload
from gliofed.fileio import json_default

__all__ = ["payload_to_record", "record_to_payload", "REFUSAL"]

ARRAYS = "arrays"
HEADER = "header"
#: record name of a site's policy refusal (a ``ConfigRecord`` with ``reason``), sent instead of a payload
REFUSAL = "refusal"


def payload_to_record(payload: Payload, task: str | None = None, settings: dict | None = None) -> RecordDict:
    """One payload (and, server to site, the task and its settings) as a ``RecordDict``: the arrays in an
    ``ArrayRecord``, the kind, metadata and settings as JSON strings in a ``ConfigRecord``."""
    header = {"kind": payload.kind, "meta": json.dumps(payload.meta, sort_keys=True, default=json_default)}
    if task is not None:
        header["task"] = task
    if settings is not None:
        header["settings"] = json.dumps(settings, default=json_default)
    arrays = ArrayRecord(array_dict={name: Array(array) for name, array in payload.arrays.items()})
    return RecordDict({ARRAYS: arrays, HEADER: ConfigRecord(header)})


def record_to_payload(record: RecordDict) -> tuple[Payload, str | None, dict | None]:
    """Inverse of :func:`payload_to_record`: (payload, task or None, settings or None)."""
    header = record.config_records[HEADER]
    arrays = {name: array.numpy() for name, array in record.array_records[ARRAYS].items()}
    payload = Payload(str(header["kind"]), arrays, json.loads(str(header["meta"])))
    settings = json.loads(str(header["settings"])) if "settings" in header else None
    return payload, (str(header["task"]) if "task" in header else None), settings
