"""Packing: the summaries a distilled set carries besides its synthetic volumes, and the payload itself.

Soft labels (per marker and class, the global model's mean tempered softmax over the site's real cases of that class;
a class fewer than ``min_group`` cases show is an empty row with count 0) and the BatchNorm statistics of the real
cases (whole blocks) under the global model, which the server trains with frozen so that the network normalises
synthetic volumes as it will normalise real ones at test time. :func:`build_payload` makes the ``distilled_set``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from gliofed.federated.protocol import Payload
from gliofed.federated.site.condense._cases import real_batches
from gliofed.vocab import MARKER_CLASSES, MARKERS

__all__ = ["soft_labels", "real_bn_statistics", "build_payload"]


@torch.no_grad()
def soft_labels(model: torch.nn.Module, dataset, temperature: float,
                min_group: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per marker: (K, K) table, row c = mean tempered softmax over real cases of class c; and counts (K,).

    A class fewer than ``min_group`` cases show gets an all-zero row and count 0 (the server then skips it):
    a row over one patient would be that patient's prediction."""
    model.eval()
    sums = {m: np.zeros((len(c), len(c)), np.float64) for m, c in MARKER_CLASSES.items()}
    counts = {m: np.zeros(len(c), np.int64) for m, c in MARKER_CLASSES.items()}
    for image, _, _, labels in real_batches(dataset, range(len(dataset))):
        out = model(image)
        for i, marker in enumerate(MARKERS):
            label = int(labels[i])
            if label >= 0:
                sums[marker][label] += torch.softmax(out[marker][0].float() / temperature, 0).numpy()
                counts[marker][label] += 1
    for marker in MARKERS:
        few = counts[marker] < max(1, int(min_group))
        sums[marker][few], counts[marker][few] = 0.0, 0
    tables = {m: (sums[m] / np.maximum(counts[m], 1)[:, None]).astype(np.float32) for m in MARKERS}
    return tables, counts


def _batchnorms(model: torch.nn.Module) -> dict[str, torch.nn.modules.batchnorm._BatchNorm]:
    return {name: module for name, module in model.named_modules()
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)}


@torch.no_grad()
def real_bn_statistics(model: torch.nn.Module, dataset, indices) -> dict[str, np.ndarray]:
    """Mean and variance of every BatchNorm layer's input over real cases under ``model``.

    The equal-weight average over cases of each case's batch statistics (BatchNorm with ``momentum=None``),
    computed on a copy; ``model`` is not changed.

    Returns:
        ``{"<layer>.running_mean": (C,), "<layer>.running_var": (C,)}`` float32 (state-dict names); empty if
        the model has no BatchNorm.
    """
    twin = copy.deepcopy(model)
    layers = _batchnorms(twin)
    if not layers:
        return {}
    for layer in layers.values():
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the forward passes
    twin.train()
    for image, _, _, _ in real_batches(dataset, indices):
        twin(image)
    stats = {}
    for name, layer in layers.items():
        stats[f"{name}.running_mean"] = layer.running_mean.detach().float().numpy().copy()
        stats[f"{name}.running_var"] = layer.running_var.detach().float().numpy().copy()
    return stats


def build_payload(images: torch.Tensor, masks: torch.Tensor, labels: np.ndarray, tables: dict[str, np.ndarray],
                  counts: dict[str, np.ndarray], bn_stats: dict[str, np.ndarray], meta: dict) -> Payload:
    """The ``distilled_set`` payload: ``syn_images`` float16 (n, C, d, h, w), ``syn_masks`` uint8 (n, d, h, w),
    ``syn_labels`` int8 (n, 4), ``soft:<marker>`` float32 (K, K), ``counts:<marker>`` int64 (K,),
    ``bn:<layer>.running_mean|var`` float32 (C,) and the given metadata."""
    arrays = {
        "syn_images": images.detach().numpy().astype(np.float16),
        "syn_masks": masks.numpy().astype(np.uint8),
        "syn_labels": np.asarray(labels).astype(np.int8),
    }
    for marker in MARKERS:
        arrays[f"soft:{marker}"] = tables[marker]
        arrays[f"counts:{marker}"] = counts[marker]
    for name, value in bn_stats.items():
        arrays[f"bn:{name}"] = value.astype(np.float32)
    return Payload("distilled_set", arrays, meta)
