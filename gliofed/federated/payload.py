"""Payloads: the only things that cross between a site and the server.

A payload is named NumPy arrays plus JSON metadata, with a declared kind. Its size on the wire is the
length of its serialisation (``.npz`` of the arrays + the JSON), measured, never estimated. Every kind
declares its fields; anything undeclared is refused (:func:`validate`), so nothing leaves a site by accident.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from gliofed.errors import GliofedError

__all__ = ["Payload", "PayloadError", "DECLARED", "validate", "state_to_arrays", "arrays_to_state"]


class PayloadError(GliofedError):
    """A payload holds undeclared fields, non-finite values or exceeds its size limit."""


#: payload kind -> field name prefixes it may carry (arrays) and metadata keys
DECLARED: dict[str, dict[str, tuple[str, ...]]] = {
    "model": {"arrays": ("w:",), "meta": ("round", "strategy")},
    # n_masked: cases with a segmentation mask; n_labelled: {marker: cases with a known label} (FedAvg weights
    # the decoder and each marker head by them)
    "weights_update": {"arrays": ("w:",), "meta": ("site", "n_cases", "n_masked", "n_labelled", "loss")},
    "distilled_set": {
        "arrays": ("syn_images", "syn_masks", "syn_labels", "soft:", "counts:", "bn:"),
        "meta": ("site", "n_cases", "shape", "scale", "init", "temperature"),
    },
    "raw_cases": {"arrays": ("cases",), "meta": ("site", "n_cases")},  # centralized baseline: pooling by design
    "site_info": {"arrays": (), "meta": ("site", "n_cases", "raw_bytes")},  # what pooling a site's cases moves
    "nothing": {"arrays": (), "meta": ("site",)},
}


@dataclass
class Payload:
    """Named arrays + metadata of a declared ``kind``.

    >>> p = Payload("weights_update", {"w:conv": np.zeros(3, np.float32)}, {"site": "a", "n_cases": 4})
    >>> p.nbytes > 12
    True
    """

    kind: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def serialize(self) -> bytes:
        """Deterministic bytes on the wire: an uncompressed zip of ``.npy`` arrays and ``meta.json``."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            header = json.dumps({"kind": self.kind, "meta": self.meta}, sort_keys=True, default=_json_default)
            archive.writestr(zipfile.ZipInfo("meta.json", (1980, 1, 1, 0, 0, 0)), header)
            for name in sorted(self.arrays):
                array_buffer = io.BytesIO()
                np.save(array_buffer, np.ascontiguousarray(self.arrays[name]), allow_pickle=False)
                archive.writestr(zipfile.ZipInfo(f"{name}.npy", (1980, 1, 1, 0, 0, 0)), array_buffer.getvalue())
        return buffer.getvalue()

    @classmethod
    def deserialize(cls, data: bytes) -> "Payload":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            header = json.loads(archive.read("meta.json"))
            arrays = {n[:-4]: np.load(io.BytesIO(archive.read(n)), allow_pickle=False)
                      for n in archive.namelist() if n.endswith(".npy")}
        return cls(header["kind"], arrays, header["meta"])

    @property
    def nbytes(self) -> int:
        """Size on the wire in bytes (length of :meth:`serialize`)."""
        return len(self.serialize())

    def audit(self) -> list[dict]:
        """One row per field: name, dtype, shape and bytes — what exactly left the site."""
        rows = [{"field": name, "dtype": str(a.dtype), "shape": tuple(a.shape), "bytes": int(a.nbytes)}
                for name, a in sorted(self.arrays.items())]
        rows += [{"field": f"meta.{k}", "dtype": type(v).__name__, "shape": (), "bytes": len(json.dumps(v, default=_json_default))}
                 for k, v in sorted(self.meta.items())]
        return rows


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"metadata value of type {type(value).__name__} is not JSON-serialisable")


def validate(payload: Payload, max_bytes: int | None = None) -> None:
    """Refuse undeclared kinds or fields, non-finite floats, and payloads over ``max_bytes``."""
    if payload.kind not in DECLARED:
        raise PayloadError(f"payload kind {payload.kind!r} is not declared.")
    spec = DECLARED[payload.kind]
    for name, array in payload.arrays.items():
        if not any(name == p or (p.endswith(":") and name.startswith(p)) for p in spec["arrays"]):
            raise PayloadError(f"payload field {name!r} is not declared for kind {payload.kind!r}.")
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise PayloadError(f"payload field {name!r} holds NaN or Inf values.")
    for key in payload.meta:
        if key not in spec["meta"]:
            raise PayloadError(f"payload metadata {key!r} is not declared for kind {payload.kind!r}.")
    if max_bytes is not None and payload.nbytes > max_bytes:
        raise PayloadError(f"payload of {payload.nbytes:,} bytes exceeds the limit of {max_bytes:,} bytes.")


def state_to_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """A model's state dict as ``w:<name>`` NumPy arrays (parameters and buffers)."""
    model = getattr(model, "_orig_mod", model)
    return OrderedDict((f"w:{k}", v.detach().cpu().numpy().copy()) for k, v in model.state_dict().items())


def arrays_to_state(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`state_to_arrays` (ignores fields that are not ``w:`` weights)."""
    return OrderedDict((k[2:], torch.from_numpy(np.array(v))) for k, v in arrays.items() if k.startswith("w:"))
