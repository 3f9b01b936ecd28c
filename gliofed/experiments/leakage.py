"""What an attacker can compute, per candidate patient, from what left a site: the statistics the membership
attack (:mod:`gliofed.experiments.membership`) turns into scores.

The attacker holds the released object (a model, an update, or a distillation payload), the global model theta the
site worked from, the candidate's own record (the scan, its mask and labels: the usual membership-inference
threat model) and records of the population (here: the whole candidate pool, members and non-members alike, as
``reference`` means). It never holds the site's data.

Per payload part (``distilled_set``; see :mod:`gliofed.federated.site.condense`), read from the payload's arrays
as the server receives them:

- ``template``: the site's mean anatomy, read back as the mean over synthetic volumes of their background voxels
  (mask 0); statistic: correlation of the candidate's scan with it on the payload's grid, both minus the
  population mean (:func:`centred_correlation`).
- ``group_summaries``: the group statistics the volumes were painted from, read back per volume as the mean
  intensity per tissue class and contrast inside its synthetic mask, with the mask's class fractions; statistic:
  minus the (population-standardised) distance from the candidate's own summary to the nearest volume's.
- ``bn_statistics``: the BatchNorm input means and variances over the site's cases under theta (released as they
  are); statistic: the mean product of the candidate's own per-layer statistics and the released ones, both
  standardised by the population (an inner-product test: the released vector is an average of per-case vectors).
- ``soft_labels``: the mean tempered softmax per marker and class; statistic: the same inner-product test between
  the candidate's own softmax under theta and the row of its class.
- ``label_counts``: cases per marker class; statistic: the count of the candidate's own classes (a member adds one).
- ``synthetic_volumes``: the whole volumes; statistic: the highest correlation of the candidate's scan with any of
  them, minus the population mean (the privacy audit's nearest-neighbour correlation, seen from outside).

Per model: ``loss_drop`` (an update: the candidate's loss under theta minus under the updated model) and
``negative_loss`` (a final model: minus the candidate's loss).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gliofed.losses import MultiTaskLoss
from gliofed.vocab import MARKER_CLASSES, MARKERS

__all__ = ["PARTS", "CandidateRecords", "candidate_records", "case_losses", "part_statistics",
           "centred_correlation"]

#: payload parts whose leakage is measured (see the module docstring)
PARTS = ("template", "group_summaries", "bn_statistics", "soft_labels", "label_counts", "synthetic_volumes")


class CandidateRecords:
    """What the attacker knows of every candidate: scans, masks, labels, and under theta their BatchNorm input
    statistics and tempered softmax per marker.

    Attributes:
        images: list of (C, D, H, W) float32 tensors; segs: list of (D, H, W) int64 tensors; has_mask: (N,) bool.
        labels: (N, 4) int64, -1 unknown.
        bn: (N, F) per-case BatchNorm input means and variances under theta, concatenated (F = 0 without BatchNorm).
        bn_keys: the state-dict names in ``bn``'s order, with each one's length.
        soft: {marker: (N, K)} tempered softmax under theta.
    """

    def __init__(self, images, segs, has_mask, labels, bn, bn_keys, soft) -> None:
        self.images, self.segs, self.has_mask, self.labels = images, segs, has_mask, labels
        self.bn, self.bn_keys, self.soft = bn, bn_keys, soft

    def __len__(self) -> int:
        return len(self.images)


@torch.no_grad()
def candidate_records(model: torch.nn.Module, dataset, temperature: float = 2.0) -> CandidateRecords:
    """The attacker's records of every case of ``dataset`` (the candidate pool) under theta = ``model``."""
    from gliofed.federated.site.condense import real_bn_statistics

    images, segs, has_mask, labels, bn_rows, soft = [], [], [], [], [], {m: [] for m in MARKERS}
    keys: list[tuple[str, int]] = []
    model = model.eval()
    for i in range(len(dataset)):
        sample = dataset[i]
        images.append(sample["image"].float())
        segs.append(sample["seg"][0].long())
        has_mask.append(bool(sample["has_mask"]))
        labels.append(sample["labels"].numpy())
        stats = real_bn_statistics(model, dataset, [i])  # one case's BatchNorm input statistics
        keys = [(name, len(value)) for name, value in sorted(stats.items())]
        bn_rows.append(np.concatenate([stats[name] for name, _ in keys]) if keys else np.zeros(0))
        out = model(sample["image"][None].float())
        for marker in MARKERS:
            soft[marker].append(torch.softmax(out[marker][0].float() / temperature, 0).numpy())
    return CandidateRecords(images, segs, np.array(has_mask), np.array(labels, np.int64),
                            np.array(bn_rows, np.float64), keys, {m: np.array(v) for m, v in soft.items()})


@torch.no_grad()
def case_losses(model: torch.nn.Module, records: CandidateRecords) -> np.ndarray:
    """(N,) every candidate's own multi-task loss (Dice-CE where it has a mask, CE of each known marker) under
    ``model`` in eval mode: the per-case statistic of a released model."""
    loss_fn = MultiTaskLoss()
    model = model.eval()
    values = []
    for image, seg, has_mask, labels in zip(records.images, records.segs, records.has_mask, records.labels):
        out = model(image[None])
        total, _ = loss_fn(out, seg[None, None], torch.tensor([bool(has_mask)]), torch.from_numpy(labels)[None])
        values.append(float(total))
    return np.array(values)


def centred_correlation(a: np.ndarray, b: np.ndarray, mean: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson correlation of ``a - mean`` and ``b - mean`` over ``mask`` (default all finite entries)."""
    keep = np.isfinite(a) & np.isfinite(b) & np.isfinite(mean)
    if mask is not None:
        keep &= mask
    x, y = (a - mean)[keep], (b - mean)[keep]
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _on_grid(records: CandidateRecords, grid: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Every candidate's scan area-resampled to ``grid`` (N, C, d, h, w) and its mask nearest-resampled (N, d, h, w)."""
    images = np.stack([F.interpolate(image[None], size=tuple(grid), mode="area")[0].numpy()
                       for image in records.images])
    masks = np.stack([F.interpolate(seg[None, None].float(), size=tuple(grid), mode="nearest")[0, 0].long().numpy()
                      for seg in records.segs])
    return images, masks


def _class_summary(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N, 4 * C + 4): per volume, the mean intensity per lesion class (1-3) and contrast inside its mask (NaN for a
    class it lacks), then its class fractions (4)."""
    n, channels = images.shape[:2]
    rows = np.full((n, 3 * channels + 4), np.nan)
    for i in range(n):
        for k in (1, 2, 3):
            inside = masks[i] == k
            if inside.any():
                rows[i, (k - 1) * channels:k * channels] = images[i][:, inside].mean(1)
        rows[i, 3 * channels:] = np.bincount(masks[i].ravel(), minlength=4)[:4] / masks[i].size
    return rows


def _standardised_inner(own: np.ndarray, released: np.ndarray) -> np.ndarray:
    """Per candidate, the mean over features of (own - population mean) / sd times (released - mean) / sd."""
    mean, sd = own.mean(0), own.std(0) + 1e-8
    return (((own - mean) / sd) * ((released - mean) / sd)).mean(1)


def part_statistics(arrays: dict[str, np.ndarray], records: CandidateRecords) -> dict[str, np.ndarray]:
    """Per payload part (:data:`PARTS`), one statistic per candidate (higher = looks more like a member) computed
    from a ``distilled_set`` payload's ``arrays`` and the attacker's ``records``; parts the payload lacks (no
    BatchNorm statistics for a GroupNorm model) are NaN."""
    n = len(records)
    images = arrays["syn_images"].astype(np.float64)
    masks = arrays["syn_masks"].astype(np.int64)
    grid = images.shape[2:]
    own, own_masks = _on_grid(records, grid)
    flat_own = own.reshape(n, -1)
    population = flat_own.mean(0)
    out: dict[str, np.ndarray] = {}

    background = np.broadcast_to((masks == 0)[:, None], images.shape)
    counts = background.sum(0)
    template = np.where(counts > 0, np.where(background, images, 0.0).sum(0) / np.maximum(counts, 1), np.nan)
    out["template"] = np.array([centred_correlation(flat_own[i], template.ravel(), population) for i in range(n)])

    synthetic = _class_summary(images, masks)
    candidates = _class_summary(own, own_masks)
    mean, sd = np.nanmean(candidates, 0), np.nanstd(candidates, 0) + 1e-8
    z_syn, z_own = (synthetic - mean) / sd, (candidates - mean) / sd
    distance = np.array([[np.sqrt(np.nanmean((z_own[i] - z_syn[k]) ** 2)) for k in range(len(z_syn))]
                         for i in range(n)])
    out["group_summaries"] = np.where(records.has_mask, -np.nanmin(distance, 1), np.nan)

    if records.bn.shape[1] and all(f"bn:{name}" in arrays for name, _ in records.bn_keys):
        released = np.concatenate([arrays[f"bn:{name}"].astype(np.float64) for name, _ in records.bn_keys])
        out["bn_statistics"] = _standardised_inner(records.bn, released[None])
    else:
        out["bn_statistics"] = np.full(n, np.nan)

    soft_terms, count_terms = np.zeros(n), np.zeros(n)
    for j, marker in enumerate(MARKERS):
        table, class_counts = arrays.get(f"soft:{marker}"), arrays.get(f"counts:{marker}")
        for c in range(len(MARKER_CLASSES[marker])):
            rows = records.labels[:, j] == c
            if not rows.any():
                continue
            own_soft = records.soft[marker][rows]
            if table is not None and float(class_counts[c]) > 0 and rows.sum() > 1:
                soft_terms[rows] += _standardised_inner(own_soft, table[c][None].astype(np.float64))
            if class_counts is not None:
                count_terms[rows] += float(class_counts[c])
    out["soft_labels"] = soft_terms
    out["label_counts"] = count_terms

    flat_syn = images.reshape(len(images), -1)
    out["synthetic_volumes"] = np.array([max(centred_correlation(flat_own[i], s, population) for s in flat_syn)
                                         for i in range(n)])
    return out
