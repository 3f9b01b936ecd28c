"""Differentially private condensation: everything the condensation reads of the site's cases, released once per
request through one Gaussian mechanism with per-case clipping (:func:`gliofed.dp.gaussian_release`); everything
after it (label vectors, masks, initialisation, matching, packing) is post-processing of that release, so the
whole ``distilled_set`` is (epsilon, delta)-DP for adding or removing one patient, with epsilon from the site's
accountant (one step of the noise multiplier at sample rate 1 per request). Compare FedDM (CVPR 2023) and
FedLAP-DP, which add formal DP to condensation-based federation.

Per case, its contribution to every summary (the *groups* below), each group clipped to its own data-independent
bound ``max_norm * base`` (base: the square root of the coordinates one case fills, at one unit per coordinate; the
soft labels 2, the counts sqrt(5), the label histogram 1) and weighted so that a case's whole contribution has norm
at most ``max_norm`` (the groups share it equally). Noise in a group's own units is then ``noise_multiplier *
max_norm * base * sqrt(groups)`` per coordinate of a sum; means divide by the noised case count.

- ``soft``: the case's tempered softmax under theta in the row of its class, per marker -> the soft-label tables.
- ``counts``: a one-hot of its class per marker and a 1 for the case -> label counts and the case count.
- ``labels``: a one-hot of its whole label vector (unknown is a value) -> the synthetic label vectors, drawn from
  the noised histogram (a marker value whose noised count is below ``min_group`` is sent unknown).
- ``bn``: its BatchNorm input means and variances under theta -> the BatchNorm statistics.
- ``template``: its scan on the low-resolution grid and its brain indicator -> the template and the brain.
- ``lesion``: per tissue class its intensity mean and spread per contrast (with presence), class fractions,
  lesion centre -> the one site-wide group summary the volumes are painted from (no label groups under DP).
- ``targets<k>``: per model copy k, its features at each matched level in its class slot per marker and its mean
  decoder feature per segmentation class -> the matching targets (a voxel target averages per-case means).

Not covered by the guarantee (stated, not hidden): the grid (the median slice count of the site's cases, in the
payload's shapes) and the case count ``n_cases`` in the metadata, which the site discloses in every reply.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from gliofed.dp import DPSettings, gaussian_release
from gliofed.errors import ConfigError
from gliofed.federated.protocol import DistillSettings, Payload
from gliofed.federated.protocol.synthetic import upsample_synthetic
from gliofed.federated.site.condense._cases import real_batches
from gliofed.federated.site.condense.init import (
    case_statistics,
    class_fractions,
    init_synthetic,
    lesion_centres,
    reference_shape,
    synthetic_masks,
)
from gliofed.federated.site.condense.matching import _levels, matching_loss, perturbed
from gliofed.federated.site.condense.packing import build_payload, real_bn_statistics
from gliofed.vocab import MARKER_CLASSES, MARKERS

__all__ = ["private_summaries", "condense_private"]

#: the matched levels of the classification branch (as :mod:`matching`)
_LEVELS = ("bottleneck", "hidden", "logits")


def _label_cells() -> list[int]:
    """Values per marker in the joint label histogram: its classes and unknown."""
    return [len(MARKER_CLASSES[m]) + 1 for m in MARKERS]


def _label_index(labels: np.ndarray) -> int:
    index = 0
    for value, size in zip(labels, _label_cells()):
        index = index * size + (int(value) + 1)
    return index


def _label_vector(index: int) -> np.ndarray:
    out = []
    for size in reversed(_label_cells()):
        out.append(index % size - 1)
        index //= size
    return np.array(out[::-1], np.int64)


def _clip(values: np.ndarray, bound: float) -> np.ndarray:
    norm = float(np.linalg.norm(values))
    return values * min(1.0, bound / norm) if norm > 0 else values


@torch.no_grad()
def private_summaries(model: torch.nn.Module, nets: list[torch.nn.Module], dataset, temperature: float,
                      low: tuple[int, int, int], dp: DPSettings, rng: np.random.Generator,
                      min_group: int) -> dict:
    """One Gaussian release of every summary condensation needs (module docstring), post-processed.

    Returns:
        ``{"tables", "counts"}`` (soft labels and label counts per marker, rows and counts below ``min_group``
        emptied), ``"bn"`` (state-dict names -> float32), ``"label_histogram"`` (noised, >= 0), ``"class_counts"``
        (marker -> noised counts), ``"template"`` ((C, d, h, w) tensor) and ``"brain"`` ((d, h, w) bool),
        ``"pseudo_cases"`` (``min_group`` copies of the site-wide lesion summary, in :func:`case_statistics`'s
        form), ``"targets"`` (per model copy, as :func:`~gliofed.federated.site.condense.matching.real_targets`),
        ``"n_hat"`` (the noised case count).
    """
    channels = int(dataset[0]["image"].shape[0])
    cells = int(np.prod(_label_cells()))
    rows: dict[str, list[np.ndarray]] = {}
    groups: dict[str, list[str]] = {}
    bn_keys: list[tuple[str, int]] = []
    target_keys: list[list[tuple]] = [[] for _ in nets]

    def add(group: str, name: str, value) -> None:
        rows.setdefault(name, []).append(np.asarray(value, np.float64).reshape(-1))
        if name not in groups.setdefault(group, []):
            groups[group].append(name)

    for i, (image, seg, has_mask, labels) in enumerate(real_batches(dataset, range(len(dataset)))):
        labels = np.asarray(labels, np.int64)
        out = model(image)
        for j, marker in enumerate(MARKERS):
            k = len(MARKER_CLASSES[marker])
            table, onehot = np.zeros((k, k)), np.zeros(k)
            if labels[j] >= 0:
                table[labels[j]] = torch.softmax(out[marker][0].float() / temperature, 0).numpy()
                onehot[labels[j]] = 1.0
            add("soft", f"soft:{marker}", table)
            add("counts", f"counts:{marker}", onehot)
        add("counts", "cases", [1.0])
        histogram = np.zeros(cells)
        histogram[_label_index(labels)] = 1.0
        add("labels", "labels", histogram)
        stats = real_bn_statistics(model, dataset, [i])
        bn_keys = [(name, len(value)) for name, value in sorted(stats.items())]
        if bn_keys:
            add("bn", "bn", np.concatenate([stats[name] for name, _ in bn_keys]))
        small = F.interpolate(image.float(), size=tuple(low), mode="area")[0]
        inside = F.interpolate((image != 0).any(1, keepdim=True).float(), size=tuple(low), mode="area")[0, 0]
        add("template", "template", small.numpy())
        add("template", "brain", (inside >= 0.5).float().numpy())
        summary = case_statistics(dataset, [i])
        present = np.zeros(4)
        class_stats, fractions, centre, lesion = np.zeros((4, channels, 2)), np.zeros(4), np.zeros(3), 0.0
        if summary:
            case = summary[0]
            values = case["stats"].numpy()
            present = (~np.isnan(values[:, 0, 0])).astype(float)
            class_stats = np.nan_to_num(values)
            fractions = np.asarray(case["fractions"], float)
            if np.isfinite(case["centre"]).all():
                centre, lesion = np.asarray(case["centre"], float), 1.0
        add("lesion", "class_stats", class_stats)
        add("lesion", "class_present", present)
        add("lesion", "fractions", fractions)
        add("lesion", "centre", centre)
        add("lesion", "lesion", [lesion])
        for k, net in enumerate(nets):
            levels = _levels(net, image.float())
            keys = []
            for j, marker in enumerate(MARKERS):
                for c in range(len(MARKER_CLASSES[marker])):
                    hit = float(labels[j] == c)
                    for level in _LEVELS:
                        value = levels[level][marker][0] if level == "logits" else levels[level][0]
                        add(f"targets{k}", f"t{k}:{level}:{j}:{c}", value.numpy() * hit)
                        keys.append((level, j, c))
                    add(f"targets{k}", f"t{k}:count:{j}:{c}", [hit])
            decoder = levels["decoder"][0].reshape(levels["decoder"].shape[1], -1)
            classes = seg.reshape(-1)
            for cls in range(4):
                chosen = (classes == cls) if has_mask else torch.zeros_like(classes, dtype=torch.bool)
                mean = decoder[:, chosen].mean(1).numpy() if bool(chosen.any()) else np.zeros(decoder.shape[0])
                add(f"targets{k}", f"t{k}:voxel:{cls}", mean)
                add(f"targets{k}", f"t{k}:voxelcount:{cls}", [float(bool(chosen.any()))])
            target_keys[k] = keys
    pieces = {name: np.stack(values) for name, values in rows.items()}
    # per group: the data-independent bound and the clipping of each case's contribution to it
    n_groups = len(groups)
    bases = {"soft": 2.0, "counts": math.sqrt(len(MARKERS) + 1), "labels": 1.0}
    weights = {}
    for group, names in groups.items():
        if group in bases:
            base = bases[group]
        elif group.startswith("targets"):  # a case fills one class slot per marker and its own voxel classes
            slot = sum(pieces[n].shape[1] for n in names if n.split(":")[1] in _LEVELS) / sum(
                len(MARKER_CLASSES[m]) for m in MARKERS)
            voxel = sum(pieces[n].shape[1] for n in names if ":voxel" in n)
            base = math.sqrt(len(MARKERS) * (slot + 1) + voxel)
        else:
            base = math.sqrt(sum(pieces[n].shape[1] for n in names))
        bound = dp.max_norm * base
        joined = np.concatenate([pieces[n] for n in names], axis=1)
        clipped = np.stack([_clip(row, bound) for row in joined])
        start = 0
        for name in names:
            width = pieces[name].shape[1]
            pieces[name] = clipped[:, start:start + width]
            start += width
            weights[name] = 1.0 / (base * math.sqrt(n_groups))
    noised = gaussian_release(pieces, dp.max_norm, dp.noise_multiplier, rng, weights)
    return _post_process(noised, bn_keys, target_keys, len(nets), channels, low, min_group, len(dataset))


def _post_process(noised: dict, bn_keys, target_keys, n_nets: int, channels: int, low, min_group: int,
                  n_cases: int) -> dict:
    least = max(1, int(min_group))
    n_hat = max(float(noised["cases"][0]), 1.0)
    tables, counts, class_counts = {}, {}, {}
    for marker in MARKERS:
        k = len(MARKER_CLASSES[marker])
        noisy = noised[f"counts:{marker}"]
        class_counts[marker] = noisy
        table = np.clip(noised[f"soft:{marker}"].reshape(k, k) / np.maximum(noisy, 1.0)[:, None], 1e-6, 1.0)
        table = table / table.sum(1, keepdims=True)
        keep = noisy >= least
        tables[marker] = np.where(keep[:, None], table, 0.0).astype(np.float32)
        released = np.where(keep, np.round(noisy), 0).astype(np.int64)
        if released.sum() > n_cases:  # the disclosed case count bounds them (a payload rule)
            released = np.floor(released * (n_cases / released.sum())).astype(np.int64)
            released[released < least] = 0
            tables[marker][released == 0] = 0.0
        counts[marker] = released
    bn, start = {}, 0
    for name, width in bn_keys:
        values = noised["bn"][start:start + width] / n_hat
        start += width
        bn[name] = (np.maximum(values, 1e-5) if name.endswith("running_var") else values).astype(np.float32)
    template = torch.from_numpy(noised["template"].reshape(channels, *low) / n_hat).float()
    brain = torch.from_numpy(noised["brain"].reshape(low) / n_hat >= 0.5)
    present = noised["class_present"]
    stats = noised["class_stats"].reshape(4, channels, 2) / np.maximum(present, 1.0)[:, None, None]
    stats[..., 1] = np.maximum(stats[..., 1], 1e-3)
    stats[present < least] = np.nan
    fractions = np.clip(noised["fractions"] / n_hat, 0.0, 1.0)
    fractions[0] = max(0.0, 1.0 - fractions[1:].sum())
    lesions = float(noised["lesion"][0])
    centre = np.clip(noised["centre"] / max(lesions, 1.0), -1, 1) if lesions >= least else np.full(3, np.nan)
    pseudo = {"labels": np.full(len(MARKERS), -1, np.int64), "fractions": fractions,
              "stats": torch.from_numpy(stats).float(), "centre": centre}
    targets = []
    for k in range(n_nets):
        classes, voxels = {}, {}
        for level, j, c in target_keys[k]:
            count = float(noised[f"t{k}:count:{j}:{c}"][0])
            if count >= least:
                classes[(level, j, c)] = torch.from_numpy(noised[f"t{k}:{level}:{j}:{c}"] / count).float()
        for cls in range(4):
            count = float(noised[f"t{k}:voxelcount:{cls}"][0])
            if count >= least:
                voxels[cls] = torch.from_numpy(noised[f"t{k}:voxel:{cls}"] / count).float()
        targets.append({"class": classes, "voxel": voxels})
    return {"tables": tables, "counts": counts, "bn": bn, "label_histogram": np.maximum(noised["labels"], 0.0),
            "class_counts": class_counts, "template": template, "brain": brain,
            "pseudo_cases": [dict(pseudo) for _ in range(least)], "targets": targets, "n_hat": n_hat}


def _draw_labels(release: dict, n: int, rng: np.random.Generator, min_group: int) -> np.ndarray:
    """``n`` label vectors drawn from the noised joint histogram; a value whose noised count is below ``min_group``
    is sent unknown."""
    histogram = release["label_histogram"]
    total = histogram.sum()
    probabilities = histogram / total if total > 0 else np.full(len(histogram), 1.0 / len(histogram))
    drawn = np.stack([_label_vector(int(i)) for i in rng.choice(len(histogram), size=n, p=probabilities)])
    for j, marker in enumerate(MARKERS):
        rare = release["class_counts"][marker] < max(1, int(min_group))
        values = drawn[:, j]
        drawn[:, j] = np.where((values >= 0) & rare[np.clip(values, 0, None)], -1, values)
    return drawn


def condense_private(model: torch.nn.Module, dataset, settings: DistillSettings, seed: int, site: str, *,
                     min_group: int, dp: DPSettings) -> Payload:
    """:func:`~gliofed.federated.site.condense.condense` with every summary of the site's cases released through
    one Gaussian mechanism (:func:`private_summaries`); the rest is the same algorithm on the released summaries
    (one site-wide lesion summary instead of label groups).

    Raises:
        ConfigError: ``init="real_unsafe"`` (copies patients: never private).
    """
    if settings.init == "real_unsafe":
        raise ConfigError("initialisation 'real_unsafe' copies patients and cannot be differentially private.")
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    model = model.eval()
    shape, low = reference_shape(dataset, settings.scale)
    nets = [perturbed(model, settings.perturb if k else 0.0, generator) for k in range(max(1, settings.models))] \
        if settings.steps > 0 else []
    release = private_summaries(model, nets, dataset, settings.temperature, low, dp, rng, min_group)
    labels = _draw_labels(release, settings.n_synthetic, rng, min_group)
    pseudo = release["pseudo_cases"]
    template = release["template"] if settings.init == "class_stats" else None
    brain = release["brain"].numpy() if settings.init == "class_stats" else None
    masks = torch.from_numpy(synthetic_masks(low, class_fractions(pseudo, labels, min_group), settings.n_synthetic,
                                             rng, centres=lesion_centres(pseudo, labels, min_group), brain=brain))
    images = init_synthetic(dataset, settings.init, masks, low, rng, generator, labels=labels, cases=pseudo,
                            min_group=min_group, template=template).clone().requires_grad_(True)
    full_masks = upsample_synthetic(images.detach(), masks, shape)[1]
    if settings.steps > 0:
        optimizer = torch.optim.Adam([images], lr=settings.lr)
        syn_labels = torch.from_numpy(labels)
        for step in range(settings.steps):
            k = step % len(nets)
            loss = matching_loss(nets[k], images, full_masks, syn_labels, shape, release["targets"][k])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    meta = {"site": site, "n_cases": len(dataset), "shape": list(shape), "scale": settings.scale,
            "init": settings.init, "temperature": settings.temperature}
    return build_payload(images, masks, labels, release["tables"], release["counts"], release["bn"], meta)
