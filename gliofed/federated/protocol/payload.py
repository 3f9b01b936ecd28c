"""Payloads: the only things that cross between a site and the server.

A payload is named NumPy arrays plus JSON metadata, with a declared kind. Its size on the wire is the
length of its serialisation (``.npz`` of the arrays + the JSON), measured, never estimated. Every kind
declares its fields; anything undeclared is refused (:func:`validate`), so nothing leaves a site by accident.

A reply arriving at the server is checked as data by :func:`validate_reply` before any aggregation: kind,
exact field set, shapes and dtypes against the broadcast model, finite values, typed and bounded metadata.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from gliofed.errors import PayloadError
from gliofed.fileio import json_default
from gliofed.vocab import DISTILL_INITS, MARKER_CLASSES, MARKERS, MODALITIES, REGIONS

if TYPE_CHECKING:  # torch is imported where weights are converted: a Flower app starts without it
    import torch

__all__ = ["Payload", "PayloadError", "DECLARED", "REQUIRED_META", "SITE_METRICS", "validate", "validate_reply",
           "state_to_arrays", "arrays_to_state", "MAX_N_CASES", "MAX_SYNTHETIC", "MAX_WEIGHT_GROWTH"]


#: payload kind (:data:`~gliofed.vocab.PAYLOAD_KINDS`) -> field name prefixes it may carry (arrays) and metadata keys
DECLARED: dict[str, dict[str, tuple[str, ...]]] = {
    "model": {"arrays": ("w:",), "meta": ("round", "strategy")},
    # n_masked: cases with a segmentation mask; n_labelled: {marker: cases with a known label} (FedAvg weights
    # the decoder and each marker head by them)
    # dp: what a differentially private reply spent (mechanism, noise_multiplier, max_norm, delta, epsilon,
    # epsilon_total); withheld: synthetic volumes the site's audit kept back
    "weights_update": {"arrays": ("w:",), "meta": ("site", "n_cases", "n_masked", "n_labelled", "loss", "dp")},
    "distilled_set": {
        "arrays": ("syn_images", "syn_masks", "syn_labels", "soft:", "counts:", "bn:"),
        "meta": ("site", "n_cases", "shape", "scale", "init", "temperature", "dp", "withheld"),
    },
    "raw_cases": {"arrays": ("cases",), "meta": ("site", "n_cases")},  # centralized baseline: pooling by design
    "site_info": {"arrays": (), "meta": ("site", "n_cases", "raw_bytes")},  # what pooling a site's cases moves
    # the global model's quick metrics on a site's held-out cases (n_cases of them): numbers in [0, 1] or null
    "site_metrics": {"arrays": (), "meta": ("site", "n_cases", "metrics")},
    "nothing": {"arrays": (), "meta": ("site",)},
}
#: payload kind -> metadata keys a reply must carry (the other declared keys are optional)
REQUIRED_META: dict[str, tuple[str, ...]] = {
    "model": ("round", "strategy"),
    "weights_update": ("site", "n_cases"),
    "distilled_set": ("site", "n_cases", "shape", "scale", "init", "temperature"),
    "raw_cases": ("site", "n_cases"),
    "site_info": ("site", "n_cases", "raw_bytes"),
    "site_metrics": ("site", "n_cases", "metrics"),
    "nothing": ("site",),
}
#: the metrics a ``site_metrics`` reply may carry (:func:`gliofed.metrics.quick_metrics`' names): Dice per region and
#: AUC per marker, each a number in [0, 1] or null (not computable on the site's cases)
SITE_METRICS: tuple[str, ...] = (*(f"dice_{region}" for region in REGIONS), *(f"auc_{marker}" for marker in MARKERS))
#: largest ``n_cases`` a site may claim (a weight of 1e30 would replace the global model)
MAX_N_CASES = 10_000_000
#: how far a weight of a site's update may reach: this many times the largest magnitude of the same tensor in the
#: model the server sent (at least 1). Local training moves weights by a small fraction of that; a weight of 1e30,
#: or an update scaled by 10^5, does not pass
MAX_WEIGHT_GROWTH = 1e4
#: most synthetic volumes in one distilled set
MAX_SYNTHETIC = 4096
#: largest cache-grid side and down-sampling scale a distilled set may declare
MAX_SIDE, MAX_SCALE = 4096, 256
#: NumPy dtype kinds a payload array may have: bool, integers, floats, complex (never object, str, void, time)
_NUMERIC_KINDS = frozenset("biufc")


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
            header = json.dumps({"kind": self.kind, "meta": self.meta}, sort_keys=True, default=json_default)
            archive.writestr(zipfile.ZipInfo("meta.json", (1980, 1, 1, 0, 0, 0)), header)
            for name in sorted(self.arrays):
                array_buffer = io.BytesIO()
                # order="C", not ascontiguousarray: the latter turns a 0-d array (a BatchNorm counter) into 1-d
                np.save(array_buffer, np.asarray(self.arrays[name], order="C"), allow_pickle=False)
                archive.writestr(zipfile.ZipInfo(f"{name}.npy", (1980, 1, 1, 0, 0, 0)), array_buffer.getvalue())
        return buffer.getvalue()

    @classmethod
    def deserialize(cls, data: bytes) -> Payload:
        """Inverse of :meth:`serialize`; undecodable bytes raise :class:`PayloadError` (pickles are refused)."""
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                header = json.loads(archive.read("meta.json"))
                arrays = {n[:-4]: np.load(io.BytesIO(archive.read(n)), allow_pickle=False)
                          for n in archive.namelist() if n.endswith(".npy")}
        except Exception as error:  # any malformed byte string is a refused payload, never a crash
            raise PayloadError(f"payload could not be decoded ({type(error).__name__}: {str(error)[:120]}).") from error
        if not isinstance(header, dict) or not isinstance(header.get("kind"), str) or not isinstance(
                header.get("meta"), dict):
            raise PayloadError("payload header meta.json is not {\"kind\": str, \"meta\": object}.")
        return cls(header["kind"], arrays, header["meta"])

    @property
    def nbytes(self) -> int:
        """Size on the wire in bytes (length of :meth:`serialize`)."""
        return len(self.serialize())

    def audit(self) -> list[dict]:
        """One row per field: name, dtype, shape and bytes — what exactly left the site."""
        rows = [{"field": name, "dtype": str(a.dtype), "shape": tuple(a.shape), "bytes": int(a.nbytes)}
                for name, a in sorted(self.arrays.items())]
        rows += [{"field": f"meta.{k}", "dtype": type(v).__name__, "shape": (),
                  "bytes": len(json.dumps(v, default=json_default))}
                 for k, v in sorted(self.meta.items())]
        return rows


def _declared(spec: dict[str, tuple[str, ...]], name: str) -> bool:
    return any(name == p or (p.endswith(":") and name.startswith(p)) for p in spec["arrays"])


def validate(payload: Payload, max_bytes: int | None = None) -> None:
    """Refuse undeclared kinds or fields, non-numeric arrays, non-finite values and payloads over ``max_bytes``.

    This is what a site checks before anything leaves it; the server checks more with :func:`validate_reply`.

    Args:
        payload: the payload.
        max_bytes: refuse a serialisation longer than this (None: no limit).

    Raises:
        PayloadError: one sentence naming the field.
    """
    if not isinstance(payload.kind, str) or payload.kind not in DECLARED:
        raise PayloadError(f"payload kind {payload.kind!r} is not declared.")
    spec = DECLARED[payload.kind]
    if not isinstance(payload.arrays, Mapping) or not isinstance(payload.meta, Mapping):
        raise PayloadError("payload arrays and metadata must be mappings.")
    for name, array in payload.arrays.items():
        if not isinstance(name, str) or not _declared(spec, name):
            raise PayloadError(f"payload field {name!r} is not declared for kind {payload.kind!r}.")
        if not isinstance(array, np.ndarray):
            raise PayloadError(f"payload field {name!r} is a {type(array).__name__}, not a NumPy array.")
        if array.dtype.kind not in _NUMERIC_KINDS or array.dtype.fields is not None:
            raise PayloadError(f"payload field {name!r} has dtype {array.dtype}, not a numeric dtype.")
        # NaN/Inf exist in floating and complex dtypes; bool and integer arrays cannot hold them
        if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
            raise PayloadError(f"payload field {name!r} holds NaN or Inf values.")
    for key in payload.meta:
        if key not in spec["meta"]:
            raise PayloadError(f"payload metadata {key!r} is not declared for kind {payload.kind!r}.")
    if max_bytes is not None and payload.nbytes > max_bytes:
        raise PayloadError(f"payload of {payload.nbytes:,} bytes exceeds the limit of {max_bytes:,} bytes.")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _int_in(meta: Mapping, key: str, low: int, high: int) -> int:
    value = meta[key]
    if not _is_int(value) or not low <= int(value) <= high:
        raise PayloadError(f"payload metadata {key!r} = {_short(value)} is not an integer in [{low:,}, {high:,}].")
    return int(value)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_meta(payload: Payload) -> None:
    meta = payload.meta
    missing = [k for k in REQUIRED_META[payload.kind] if k not in meta]
    if missing:
        raise PayloadError(f"payload of kind {payload.kind!r} lacks metadata {missing[0]!r}.")
    if "site" in meta and (not isinstance(meta["site"], str) or not meta["site"]):
        raise PayloadError(f"payload metadata 'site' = {_short(meta['site'])} is not a non-empty string.")
    if "n_cases" in meta:
        n_cases = _int_in(meta, "n_cases", 1, MAX_N_CASES)
        if "n_masked" in meta:
            _int_in(meta, "n_masked", 0, n_cases)
        if "n_labelled" in meta:  # {marker: cases with a known label}, each within n_cases
            labelled = meta["n_labelled"]
            if not isinstance(labelled, Mapping) or not set(labelled) <= set(MARKERS):
                raise PayloadError(f"payload metadata 'n_labelled' = {_short(labelled)} is not a mapping of markers "
                                   "to counts.")
            for marker in labelled:
                _int_in(labelled, marker, 0, n_cases)
    if "loss" in meta and meta["loss"] is not None and (not _is_real(meta["loss"])
                                                        or not math.isfinite(float(meta["loss"]))):
        raise PayloadError(f"payload metadata 'loss' = {_short(meta['loss'])} is not a finite number or null.")
    if "round" in meta:
        _int_in(meta, "round", 0, 10_000_000)
    if "raw_bytes" in meta:
        _int_in(meta, "raw_bytes", 0, 2**62)
    if "strategy" in meta and not isinstance(meta["strategy"], str):
        raise PayloadError(f"payload metadata 'strategy' = {_short(meta['strategy'])} is not a string.")
    if "withheld" in meta:
        _int_in(meta, "withheld", 0, MAX_SYNTHETIC)
    if "dp" in meta:
        _check_dp(meta["dp"])
    if "metrics" in meta:
        _check_metrics(meta["metrics"])


#: the keys of a reply's ``dp`` metadata and their types
_DP_META = {"mechanism": str, "noise_multiplier": float, "max_norm": float, "delta": float, "epsilon": float,
            "epsilon_total": float}


def _check_dp(dp) -> None:
    """A reply's ``dp`` metadata: exactly the keys of :data:`_DP_META`, a known mechanism, positive finite numbers
    (epsilon may be inf), delta in (0, 1)."""
    from gliofed.dp import MECHANISMS

    if not isinstance(dp, Mapping) or set(dp) != set(_DP_META):
        raise PayloadError(f"payload metadata 'dp' = {_short(dp)} is not a mapping of {', '.join(_DP_META)}.")
    if dp["mechanism"] not in MECHANISMS or dp["mechanism"] == "off":
        raise PayloadError(f"payload metadata 'dp.mechanism' = {_short(dp['mechanism'])} is not a DP mechanism.")
    for key in ("noise_multiplier", "max_norm", "epsilon", "epsilon_total"):
        value = dp[key]
        if not _is_real(value) or math.isnan(float(value)) or float(value) < 0 or (
                key in ("noise_multiplier", "max_norm") and not math.isfinite(float(value))):
            raise PayloadError(f"payload metadata 'dp.{key}' = {_short(value)} is not a non-negative number.")
    if not _is_real(dp["delta"]) or not 0 < float(dp["delta"]) < 1:
        raise PayloadError(f"payload metadata 'dp.delta' = {_short(dp['delta'])} is not in (0, 1).")


def _check_metrics(metrics) -> None:
    """A ``site_metrics`` reply's metrics: a mapping of :data:`SITE_METRICS` names to numbers in [0, 1] or null."""
    if not isinstance(metrics, Mapping):
        raise PayloadError(f"payload metadata 'metrics' = {_short(metrics)} is not a mapping of metric names.")
    for name, value in metrics.items():
        if name not in SITE_METRICS:
            raise PayloadError(f"payload metric {_short(name)} is not one of {', '.join(SITE_METRICS)}.")
        if value is not None and (not _is_real(value) or not math.isfinite(float(value))
                                  or not 0.0 <= float(value) <= 1.0):
            raise PayloadError(f"payload metric {name!r} = {_short(value)} is not a number in [0, 1] or null.")


def _check_against(payload: Payload, reference: Mapping[str, np.ndarray]) -> None:
    """Exactly the reference's ``w:`` fields, each with the reference's shape and dtype."""
    expected = {k: v for k, v in reference.items() if k.startswith("w:")}
    got = {k for k in payload.arrays if k.startswith("w:")}
    for name in sorted(expected):
        if name not in got:
            raise PayloadError(f"payload lacks field {name!r} of the broadcast model.")
    for name in sorted(got - set(expected)):
        raise PayloadError(f"payload field {name!r} is not a field of the broadcast model.")
    for name, ref in expected.items():
        array = payload.arrays[name]
        ref = np.asarray(ref)
        if array.shape != ref.shape:
            raise PayloadError(f"payload field {name!r} has shape {array.shape}, the broadcast model {ref.shape}.")
        if array.dtype != ref.dtype:
            raise PayloadError(f"payload field {name!r} has dtype {array.dtype}, the broadcast model {ref.dtype}.")


def _check_values(payload: Payload, reference: Mapping[str, np.ndarray]) -> None:
    """The value checks a distilled set's statistics get, for a weights update: BatchNorm variances >= 0 and step
    counters >= 0, and every float weight within :data:`MAX_WEIGHT_GROWTH` times the largest magnitude of that
    tensor in the broadcast model (a poisoned site cannot make the average non-finite or drag it arbitrarily far)."""
    for name, array in payload.arrays.items():
        if not name.startswith("w:") or not array.size:
            continue
        if name.endswith(".running_var") and float(array.min()) < 0:
            raise PayloadError(f"payload field {name!r} holds a negative variance ({float(array.min()):.3g}).")
        if name.endswith(".num_batches_tracked") and int(array.min()) < 0:
            raise PayloadError(f"payload field {name!r} holds a negative count ({int(array.min())}).")
        if array.dtype.kind == "f":
            sent = np.asarray(reference[name])
            limit = MAX_WEIGHT_GROWTH * max(1.0, float(np.max(np.abs(sent))) if sent.size else 1.0)
            largest = float(np.max(np.abs(array.astype(np.float64))))
            if largest > limit:
                raise PayloadError(f"payload field {name!r} reaches {largest:.3g}, beyond {limit:.3g} "
                                   f"({MAX_WEIGHT_GROWTH:.0e} times the broadcast model's largest value there).")


def _check_bn(name: str, array: np.ndarray, reference: Mapping[str, np.ndarray] | None) -> None:
    """``bn:<layer>.running_mean|running_var``: a site's real BatchNorm statistics, float32 per channel, matching the
    broadcast model's buffer when the model is known."""
    if not name.endswith((".running_mean", ".running_var")) or array.dtype != np.float32 or array.ndim != 1 \
            or not 1 <= array.size <= 4096:
        raise PayloadError(f"payload field {name!r} is not a float32 per-channel BatchNorm statistic.")
    if name.endswith(".running_var") and array.min() < 0:
        raise PayloadError(f"payload field {name!r} holds a negative variance.")
    if reference is not None and tuple(getattr(reference.get("w:" + name[3:]), "shape", ())) != array.shape:
        raise PayloadError(f"payload field {name!r} does not match a BatchNorm buffer of the broadcast model.")


def _check_distilled(payload: Payload, reference: Mapping[str, np.ndarray] | None = None) -> None:
    """A distilled set is consistent with itself and with the label spaces of :data:`MARKER_CLASSES`."""
    arrays, meta = payload.arrays, payload.meta
    expected = {"syn_images", "syn_masks", "syn_labels", *(f"soft:{m}" for m in MARKERS),
                *(f"counts:{m}" for m in MARKERS)}
    for name in sorted(expected - set(arrays)):
        raise PayloadError(f"payload lacks field {name!r} of a distilled set.")
    for name in sorted(set(arrays) - expected):
        if not name.startswith("bn:"):
            raise PayloadError(f"payload field {name!r} is not a field of a distilled set.")
        _check_bn(name, arrays[name], reference)
    shape = meta["shape"]
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3
            or not all(_is_int(v) and 1 <= int(v) <= MAX_SIDE for v in shape)):
        raise PayloadError(f"payload metadata 'shape' = {_short(shape)} is not a list of 3 integers in "
                           f"[1, {MAX_SIDE}].")
    scale = _int_in(meta, "scale", 1, MAX_SCALE)
    if not isinstance(meta["init"], str) or meta["init"] not in DISTILL_INITS:
        raise PayloadError(f"payload metadata 'init' = {_short(meta['init'])} is not one of "
                           f"{', '.join(DISTILL_INITS)}.")
    temperature = meta["temperature"]
    if not _is_real(temperature) or not math.isfinite(float(temperature)) or not 0 < float(temperature) <= 1000:
        raise PayloadError(f"payload metadata 'temperature' = {_short(temperature)} is not a number in (0, 1000].")

    images = arrays["syn_images"]
    low = tuple(max(2, math.ceil(int(s) / scale)) for s in shape)  # as condense builds it
    if images.dtype not in (np.float16, np.float32) or images.ndim != 5:
        raise PayloadError(f"payload field 'syn_images' is {images.dtype} of {images.ndim} dimensions, not "
                           "float16/float32 (n, C, d, h, w).")
    n, channels = images.shape[:2]
    if not 1 <= n <= MAX_SYNTHETIC or not 1 <= channels <= len(MODALITIES) or images.shape[2:] != low:
        raise PayloadError(f"payload field 'syn_images' has shape {images.shape}; expected (1..{MAX_SYNTHETIC}, "
                           f"1..{len(MODALITIES)}, {', '.join(map(str, low))}) for shape {list(shape)} "
                           f"at scale {scale}.")
    masks = arrays["syn_masks"]
    if masks.dtype != np.uint8 or masks.shape != (n, *low):
        raise PayloadError(f"payload field 'syn_masks' is {masks.dtype} {masks.shape}, not uint8 {(n, *low)}.")
    if masks.size and int(masks.max()) > 3:
        raise PayloadError("payload field 'syn_masks' holds classes outside 0..3.")
    labels = arrays["syn_labels"]
    if labels.dtype != np.int8 or labels.shape != (n, len(MARKERS)):
        raise PayloadError(f"payload field 'syn_labels' is {labels.dtype} {labels.shape}, not int8 "
                           f"{(n, len(MARKERS))}.")
    n_cases = int(meta["n_cases"])
    for j, marker in enumerate(MARKERS):
        k = len(MARKER_CLASSES[marker])
        column = labels[:, j].astype(np.int64)
        if column.size and (column.min() < -1 or column.max() > k - 1):
            raise PayloadError(f"payload field 'syn_labels' holds {marker} codes outside [-1, {k - 1}].")
        soft, counts = arrays[f"soft:{marker}"], arrays[f"counts:{marker}"]
        if soft.dtype.kind != "f" or soft.shape != (k, k):
            raise PayloadError(f"payload field 'soft:{marker}' is {soft.dtype} {soft.shape}, "
                               f"not a float {(k, k)} table.")
        if soft.min() < 0 or soft.max() > 1:
            raise PayloadError(f"payload field 'soft:{marker}' holds values outside [0, 1].")
        if counts.dtype.kind not in "iu" or counts.shape != (k,):
            raise PayloadError(f"payload field 'counts:{marker}' is {counts.dtype} {counts.shape}, not integer ({k},).")
        if counts.min() < 0 or int(counts.astype(np.int64).sum()) > n_cases:
            raise PayloadError(f"payload field 'counts:{marker}' is negative or sums above n_cases = {n_cases}.")
        sums = soft.astype(np.float64).sum(axis=1)
        tolerance = 1e-2 if soft.dtype == np.float16 else 1e-4
        for c in range(k):
            want = 1.0 if counts[c] > 0 else 0.0
            if abs(sums[c] - want) > tolerance:
                raise PayloadError(f"payload field 'soft:{marker}' row {c} sums to {sums[c]:.4g}, not {want:g} "
                                   f"(counts:{marker}[{c}] = {int(counts[c])}).")


def validate_reply(reply: Payload, expected_kind: str, reference: Mapping[str, np.ndarray] | None = None,
                   max_bytes: int | None = None) -> None:
    """Check a site's reply as data before the server aggregates it; one-line :class:`PayloadError` if not.

    Checks, in order: the kind is ``expected_kind``; :func:`validate` (declared fields, numeric dtypes only —
    object, string and void arrays are refused —, finite floats and complex values, size); the metadata is
    typed and in range (``site`` a non-empty str, ``n_cases`` an int in [1, :data:`MAX_N_CASES`] — never a
    bool —, optional ``n_masked`` an int in [0, ``n_cases``], ``loss`` a finite number or None, ...); for
    ``weights_update`` and ``model`` with a ``reference``: exactly the reference's ``w:`` fields with equal
    shapes and dtypes, and for ``weights_update`` their values (:func:`_check_values`: BatchNorm variances and
    counters >= 0, magnitudes within :data:`MAX_WEIGHT_GROWTH` times the broadcast model's); for
    ``distilled_set``: every field present, dtypes, shapes consistent with ``shape``
    and ``scale``, mask classes 0..3, label codes in range per marker, soft tables in [0, 1] with rows
    summing to 1 (classes seen) or 0 (unseen, per ``counts``), counts non-negative and at most ``n_cases``.

    Args:
        reply: the payload received from a site.
        expected_kind: the kind the server asked for.
        reference: the broadcast model's arrays (``w:`` fields), e.g. ``state_to_arrays(model)`` or the
            ``arrays`` of the ``model`` payload sent this round; None skips the comparison.
        max_bytes: the size limit on the wire (None: no limit).

    Raises:
        PayloadError: naming the field and the problem.
    """
    if not isinstance(reply, Payload):
        raise PayloadError(f"reply is a {type(reply).__name__}, not a payload.")
    if reply.kind != expected_kind:
        raise PayloadError(f"payload kind {reply.kind!r} is not the expected {expected_kind!r}.")
    validate(reply, max_bytes)
    _check_meta(reply)
    if reply.kind in ("weights_update", "model") and reference is not None:
        _check_against(reply, reference)
        if reply.kind == "weights_update":
            _check_values(reply, reference)
    elif reply.kind == "distilled_set":
        _check_distilled(reply, reference)


def state_to_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """A model's state dict as ``w:<name>`` NumPy arrays (parameters and buffers)."""
    model = getattr(model, "_orig_mod", model)
    return OrderedDict((f"w:{k}", v.detach().cpu().numpy().copy()) for k, v in model.state_dict().items())


def arrays_to_state(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`state_to_arrays` (ignores fields that are not ``w:`` weights)."""
    import torch

    return OrderedDict((k[2:], torch.from_numpy(np.array(v))) for k, v in arrays.items() if k.startswith("w:"))
