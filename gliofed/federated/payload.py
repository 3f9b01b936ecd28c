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

__all__ = ["Payload", "PayloadError", "DECLARED", "validate", "validate_reply", "state_to_arrays", "arrays_to_state"]


class PayloadError(GliofedError):
    """A payload holds undeclared fields, non-finite values or exceeds its size limit."""


#: payload kind -> field name prefixes it may carry (arrays) and metadata keys
DECLARED: dict[str, dict[str, tuple[str, ...]]] = {
    "model": {"arrays": ("w:",), "meta": ("round", "strategy")},
    "weights_update": {"arrays": ("w:",), "meta": ("site", "n_cases", "loss")},
    "distilled_set": {
        "arrays": ("syn_images", "syn_masks", "syn_labels", "soft:", "counts:"),
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


#: largest case count a reply may claim (FedAvg weights by it)
MAX_CASES = 10_000_000
#: largest synthetic grid (voxels per volume) a distilled set may ask the server to upsample to
MAX_VOXELS = 512**3


def validate_reply(reply: Payload, expected_kind: str, reference_arrays: dict[str, np.ndarray],
                   max_bytes: int | None = None) -> None:
    """Refuse a site's reply unless it is data the server may aggregate: :func:`validate`, the ``expected_kind``,
    numeric dtypes finite everywhere, ``weights_update`` arrays with exactly the keys, shapes and dtypes of
    ``reference_arrays`` (the broadcast model), and metadata typed and in range.

    Raises:
        PayloadError: one sentence naming the first problem.
    """
    validate(reply, max_bytes)
    if reply.kind != expected_kind:
        raise PayloadError(f"reply of kind {reply.kind!r} where {expected_kind!r} was expected.")
    for name, array in reply.arrays.items():
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
            raise PayloadError(f"payload field {name!r} has dtype {getattr(array, 'dtype', type(array))}, not a "
                               "real number type.")
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise PayloadError(f"payload field {name!r} holds NaN or Inf values.")
    if expected_kind == "weights_update":
        missing = sorted(set(reference_arrays) - set(reply.arrays))
        extra = sorted(set(reply.arrays) - set(reference_arrays))
        if missing or extra:
            raise PayloadError(f"weights differ from the model's: missing {missing[:3]}, unexpected {extra[:3]}.")
        for name, reference in reference_arrays.items():
            array = reply.arrays[name]
            if array.shape != reference.shape or array.dtype != reference.dtype:
                raise PayloadError(f"weight {name!r} is {array.dtype}{list(array.shape)}, the model's is "
                                   f"{reference.dtype}{list(reference.shape)}.")
    if expected_kind == "distilled_set":
        _check_distilled_set(reply)
    meta = reply.meta
    if expected_kind in ("weights_update", "distilled_set", "site_info"):
        n_cases = meta.get("n_cases")
        if isinstance(n_cases, bool) or not isinstance(n_cases, int) or not 1 <= n_cases <= MAX_CASES:
            raise PayloadError(f"n_cases {n_cases!r} is not an integer in 1..{MAX_CASES:,}.")
    if "loss" in meta and (isinstance(meta["loss"], bool) or not isinstance(meta["loss"], (int, float))
                           or np.isinf(meta["loss"])):
        raise PayloadError(f"loss {meta['loss']!r} is not a number.")
    raw = meta.get("raw_bytes", 0)
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise PayloadError(f"raw_bytes {raw!r} is not a non-negative integer.")
    if "site" in meta and not isinstance(meta["site"], str):
        raise PayloadError(f"site {meta['site']!r} is not a name.")


def _check_distilled_set(reply: Payload) -> None:
    arrays, meta = reply.arrays, reply.meta
    needed = ("syn_images", "syn_masks", "syn_labels")
    if any(name not in arrays for name in needed):
        raise PayloadError(f"distilled set lacks {[n for n in needed if n not in arrays]}.")
    images, masks, labels = (arrays[n] for n in needed)
    if images.ndim != 5 or masks.shape != (images.shape[0], *images.shape[2:]) or labels.shape[:1] != images.shape[:1]:
        raise PayloadError(f"distilled set shapes disagree: images {list(images.shape)}, masks {list(masks.shape)}, "
                           f"labels {list(labels.shape)}.")
    from gliofed.data.manifest import MARKER_CLASSES  # the label vocabulary (no site data)

    if labels.shape != (images.shape[0], len(MARKER_CLASSES)) or (masks.size and (masks.min() < 0 or masks.max() > 3)):
        raise PayloadError("distilled set labels are not (n, markers) or its masks hold classes outside 0..3.")
    for j, (marker, classes) in enumerate(MARKER_CLASSES.items()):
        k = len(classes)
        soft, counts = arrays.get(f"soft:{marker}"), arrays.get(f"counts:{marker}")
        if soft is None or counts is None or soft.shape != (k, k) or counts.shape != (k,):
            raise PayloadError(f"distilled set lacks a ({k}, {k}) soft:{marker} table or its counts.")
        if labels[:, j].size and (labels[:, j].min() < -1 or labels[:, j].max() >= k):
            raise PayloadError(f"distilled set labels of {marker} lie outside -1..{k - 1}.")
    shape = meta.get("shape")
    if (not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape)
            or int(np.prod(shape, dtype=np.float64)) > MAX_VOXELS):
        raise PayloadError(f"distilled set shape {shape!r} is not three positive integers of at most "
                           f"{MAX_VOXELS:,} voxels.")


def state_to_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """A model's state dict as ``w:<name>`` NumPy arrays (parameters and buffers)."""
    model = getattr(model, "_orig_mod", model)
    return OrderedDict((f"w:{k}", v.detach().cpu().numpy().copy()) for k, v in model.state_dict().items())


def arrays_to_state(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`state_to_arrays` (ignores fields that are not ``w:`` weights)."""
    return OrderedDict((k[2:], torch.from_numpy(np.array(v))) for k, v in arrays.items() if k.startswith("w:"))
