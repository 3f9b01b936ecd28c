"""Site-side half of distillation federation: soft labels and dataset condensation.

Runs inside a :class:`~gliofed.federated.site.Site` on its real cases; what it returns is a
``distilled_set`` payload (synthetic volumes stored at low resolution, their hard labels and masks,
the soft-label tables and label counts) and nothing else.

Algorithm (compare FedDM, CVPR 2023 and FedAF, CVPR 2024; the seed study's "distillation federation"):

1. Soft labels. For every marker m and class c, the mean tempered softmax ``softmax(z_m / tau)`` of the
   global model over the site's real cases whose label of m is c (cases with unknown m are skipped).
2. Condensation. ``n_synthetic`` volumes at ``1 / scale`` of the site's reference shape are optimised so
   that, under the global model and randomly perturbed copies of it, (a) the class-wise means of the
   pooled bottleneck features of synthetic and real cases match for every marker and class they share,
   and (b) the per-class means of the last decoder features over voxels of each segmentation class
   match (voxel-class matching). Synthetic volumes are upsampled trilinearly on use.
   Initialisation: ``"noise"`` (standard normal) or ``"class_stats"`` (per-class, per-contrast mean and
   standard deviation of the real voxels painted into the synthetic mask, plus noise) — neither copies
   a patient. ``"real_unsafe"`` starts from down-sampled real cases: for teaching only; the privacy
   audit flags it.
3. Hard labels are balanced over the classes the site has seen; markers the site never labels stay -1.
   Synthetic masks are an ellipsoidal lesion (enhancing rim, core, oedema) sized from the site's mean
   region volumes: class statistics, not a patient's mask.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from gliofed.data.manifest import MARKER_CLASSES, MARKERS
from gliofed.federated.payload import Payload
from gliofed.federated.strategies.distill import DistillSettings, upsample_synthetic

__all__ = ["soft_labels", "condense"]


def _real_batches(dataset, indices):
    for i in indices:
        sample = dataset[int(i)]
        yield sample["image"][None], sample["seg"], bool(sample["has_mask"]), sample["labels"]


@torch.no_grad()
def soft_labels(model: torch.nn.Module, dataset, temperature: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per marker: (K, K) table, row c = mean tempered softmax over real cases of class c; and counts (K,)."""
    model.eval()
    sums = {m: np.zeros((len(c), len(c)), np.float64) for m, c in MARKER_CLASSES.items()}
    counts = {m: np.zeros(len(c), np.int64) for m, c in MARKER_CLASSES.items()}
    for image, _, _, labels in _real_batches(dataset, range(len(dataset))):
        out = model(image)
        for i, marker in enumerate(MARKERS):
            label = int(labels[i])
            if label >= 0:
                sums[marker][label] += torch.softmax(out[marker][0].float() / temperature, 0).numpy()
                counts[marker][label] += 1
    tables = {m: (sums[m] / np.maximum(counts[m], 1)[:, None]).astype(np.float32) for m in MARKERS}
    return tables, counts


def _reference_shape(dataset, scale: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    depth = int(np.median(dataset.index["depth"]))
    shape = (depth, int(dataset.index["height"].iloc[0]), int(dataset.index["width"].iloc[0]))
    low = tuple(max(2, int(np.ceil(s / scale))) for s in shape)
    return shape, low


def _synthetic_labels(counts: dict[str, np.ndarray], n: int) -> np.ndarray:
    labels = np.full((n, len(MARKERS)), -1, np.int64)
    for j, marker in enumerate(MARKERS):
        seen = np.flatnonzero(counts[marker] > 0)
        if len(seen):
            labels[:, j] = seen[np.arange(n) % len(seen)]
    return labels


def _class_volumes(dataset, indices) -> np.ndarray:
    fractions = []
    for _, seg, has_mask, _ in _real_batches(dataset, indices):
        if has_mask:
            fractions.append(np.bincount(seg.numpy().ravel(), minlength=4) / seg.numel())
    return np.mean(fractions, 0) if fractions else np.array([1.0, 0, 0, 0])


def _synthetic_masks(low: tuple[int, int, int], fractions: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Ellipsoidal lesions: oedema shell, core, enhancing rim, with the site's mean class fractions."""
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in low], indexing="ij")
    masks = np.zeros((n, *low), np.uint8)
    lesion = float(fractions[1:].sum())
    if lesion <= 0:
        return masks
    for i in range(n):
        centre = rng.uniform(-0.3, 0.3, 3)
        r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre)))
        order = np.argsort(r, axis=None)
        flat = masks[i].reshape(-1)
        total = int(round(lesion * flat.size))
        # innermost voxels necrosis/core (1), then enhancing rim (3), then oedema (2)
        counts = (fractions[1:] / lesion * total).round().astype(int)
        ncr, ed, et = counts[0], counts[1], counts[2]
        flat[order[:ncr]] = 1
        flat[order[ncr:ncr + et]] = 3
        flat[order[ncr + et:ncr + et + ed]] = 2
    return masks


def _perturbed(model: torch.nn.Module, relative: float, generator: torch.Generator) -> torch.nn.Module:
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            if relative > 0:
                noise = torch.randn(p.shape, generator=generator)
                p.add_(noise * relative * (p.detach().std() if p.numel() > 1 else p.detach().abs() + 1e-8))
    return twin.eval()


def _class_means(features: torch.Tensor, labels: torch.Tensor) -> dict[tuple[int, int], torch.Tensor]:
    """(N, F) features, (N, 4) labels -> {(marker index, class): mean feature}."""
    means = {}
    for j, marker in enumerate(MARKERS):
        for c in range(len(MARKER_CLASSES[marker])):
            chosen = labels[:, j] == c
            if bool(chosen.any()):
                means[(j, c)] = features[chosen].mean(0)
    return means


def _voxel_class_means(decoder: torch.Tensor, seg: torch.Tensor) -> dict[int, torch.Tensor]:
    """(N, F, D, H, W) decoder features, (N, 1, D, H, W) classes -> {class: mean feature over its voxels}."""
    flat = decoder.permute(1, 0, 2, 3, 4).reshape(decoder.shape[1], -1)
    classes = seg.reshape(-1)
    return {int(k): flat[:, classes == k].mean(1) for k in torch.unique(classes).tolist()}


def condense(model: torch.nn.Module, dataset, settings: DistillSettings, seed: int, site: str) -> Payload:
    """Soft labels + condensed synthetic set of one site's real cases under the global ``model``.

    Returns:
        ``distilled_set`` payload: ``syn_images`` float16 (n, C, d, h, w), ``syn_masks`` uint8 (n, d, h, w),
        ``syn_labels`` int8 (n, 4), ``soft:<marker>`` float32 (K, K), ``counts:<marker>`` int64 (K,);
        meta ``site``, ``n_cases``, ``shape`` (full-resolution D, H, W), ``scale``, ``init``, ``temperature``.
    """
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    model = model.eval()
    tables, counts = soft_labels(model, dataset, settings.temperature)
    shape, low = _reference_shape(dataset, settings.scale)
    n, channels = settings.n_synthetic, int(dataset[0]["image"].shape[0])
    syn_labels = torch.from_numpy(_synthetic_labels(counts, n))
    all_indices = np.arange(len(dataset))
    fractions = _class_volumes(dataset, rng.choice(all_indices, size=min(len(all_indices), 8), replace=False))
    masks = torch.from_numpy(_synthetic_masks(low, fractions, n, rng))

    if settings.init == "real_unsafe":
        picks = rng.choice(all_indices, size=n, replace=len(all_indices) < n)
        images = torch.cat([F.interpolate(dataset[int(i)]["image"][None], size=low, mode="area") for i in picks])
    elif settings.init == "class_stats":
        stats = torch.zeros(4, channels, 2)
        stats[:, :, 1] = 1.0
        values = {k: [] for k in range(4)}
        for image, seg, has_mask, _ in _real_batches(dataset, rng.choice(all_indices, size=min(len(all_indices), 4), replace=False)):
            if has_mask:
                for k in range(4):
                    chosen = seg[0] == k
                    if chosen.any():
                        values[k].append(image[0][:, chosen])
        for k, parts in values.items():
            if parts:
                joined = torch.cat(parts, 1)
                stats[k, :, 0], stats[k, :, 1] = joined.mean(1), joined.std(1).clamp_min(1e-3)
        mean = stats[masks.long(), :, 0].permute(0, 4, 1, 2, 3)
        std = stats[masks.long(), :, 1].permute(0, 4, 1, 2, 3)
        images = mean + 0.5 * std * torch.randn(mean.shape, generator=generator)
    else:
        images = torch.randn((n, channels, *low), generator=generator)
    images = images.float().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([images], lr=settings.lr)
    full_masks = upsample_synthetic(images.detach(), masks, shape)[1]

    for step in range(settings.steps):
        net = _perturbed(model, settings.perturb if step % 2 else 0.0, generator)  # theta_r and perturbed copies
        for p in net.parameters():
            p.requires_grad_(False)
        batch = rng.choice(all_indices, size=min(len(all_indices), settings.real_batch), replace=False)
        real_feats, real_labels, real_voxel = [], [], {}
        with torch.no_grad():
            voxel_sums: dict[int, list[torch.Tensor]] = {}
            for image, seg, has_mask, labels in _real_batches(dataset, batch):
                out = net(image, return_features=True)
                real_feats.append(out["bottleneck"])
                real_labels.append(labels[None])
                if has_mask:
                    for k, mean in _voxel_class_means(out["decoder"], seg[None]).items():
                        voxel_sums.setdefault(k, []).append(mean)
            real_voxel = {k: torch.stack(v).mean(0) for k, v in voxel_sums.items()}
        real_means = _class_means(torch.cat(real_feats), torch.cat(real_labels))
        syn_full, _ = upsample_synthetic(images, masks, shape)
        out = net(syn_full, return_features=True)
        syn_means = _class_means(out["bottleneck"], syn_labels)
        shared = [key for key in syn_means if key in real_means]
        loss = sum(((syn_means[k] - real_means[k]) ** 2).sum() for k in shared) if shared else images.sum() * 0
        syn_voxel = _voxel_class_means(out["decoder"], full_masks)
        seg_shared = [k for k in syn_voxel if k in real_voxel]
        if seg_shared:
            loss = loss + sum(((syn_voxel[k] - real_voxel[k]) ** 2).sum() for k in seg_shared)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    arrays = {
        "syn_images": images.detach().numpy().astype(np.float16),
        "syn_masks": masks.numpy().astype(np.uint8),
        "syn_labels": syn_labels.numpy().astype(np.int8),
    }
    for marker in MARKERS:
        arrays[f"soft:{marker}"] = tables[marker]
        arrays[f"counts:{marker}"] = counts[marker]
    meta = {"site": site, "n_cases": len(dataset), "shape": list(shape), "scale": settings.scale,
            "init": settings.init, "temperature": settings.temperature}
    return Payload("distilled_set", arrays, meta)
