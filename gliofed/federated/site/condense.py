"""Site-side half of distillation federation: soft labels, label vectors, BatchNorm statistics and condensation.

Runs inside a :class:`~gliofed.federated.site.Site` on its real cases; what it returns is a
``distilled_set`` payload (synthetic volumes stored at low resolution, their label vectors and masks, the
soft-label tables, label counts and the BatchNorm statistics of the site's real data) and nothing else.

Nothing it returns summarises fewer than ``min_group`` real patients (the site operator's
``SitePolicy.min_group``, default 3; the server cannot lower it), and no two things it returns, in one round
or across rounds and requests, are averages over case sets that differ by fewer than ``min_group`` patients:

- every average over "the real cases" (BatchNorm statistics, matching targets) is over a union of fixed,
  disjoint **blocks** of at least ``min_group`` cases (:func:`real_blocks`, :func:`real_subset`), drawn from
  the site's own fixed order: the server's seed only picks which blocks, its ``real_batch`` only how many;
- every per-class summary (a soft-label row, a class-wise matching target, a tissue class's intensity
  statistics or volume fraction) that fewer than ``min_group`` cases back is left out;
- image summaries come from fixed, disjoint **groups** of at least ``min_group`` cases sharing labels
  (:func:`summary_groups`), and a label value goes out only where at least ``min_group`` cases of a group
  share it (:func:`group_labels`).

This bounds what differencing can single out; it is not differential privacy (a server that crafts the model
still learns block-level averages of features it chooses; see the README's privacy section).

Algorithm (compare FedDM, CVPR 2023, FedAF, CVPR 2024 and FedLGD; the seed study's "distillation federation"):

1. Soft labels. For every marker m and class c, the mean tempered softmax ``softmax(z_m / tau)`` of the
   global model over the site's real cases whose label of m is c (cases with unknown m are skipped); a class
   fewer than ``min_group`` cases show is sent as an empty row with count 0.
2. Label vectors (:func:`joint_labels`, :func:`group_labels`). Each synthetic volume carries the label vector
   of one of the real cases that define the matching targets, drawn uniformly, with every marker value fewer
   than ``min_group`` cases of its summary group share sent as -1 (unknown); no value is made up. Synthetic
   labels thus follow the site's real joint distribution (grade II with IDH-mutant, co-deletion only with
   IDH-mutant); cycling each marker on its own, as the first version did, made all markers perfectly
   correlated and paired grade II with IDH-wildtype.
3. BatchNorm statistics (:func:`real_bn_statistics`): the mean and variance of every BatchNorm input over
   the real cases (whole blocks) under the global model. The server trains with them frozen, so that the
   network normalises synthetic volumes as it will normalise real ones at test time.
4. Condensation. ``n_synthetic`` volumes at ``1 / scale`` of the site's reference shape are optimised
   (Adam) so that, under the global model and ``models - 1`` randomly perturbed copies, the synthetic and
   real class-wise means match (:func:`matching_loss`) for every marker and class they share, at three levels
   of the classification branch — pooled bottleneck features, the MLP's hidden features and that marker's
   logits — and, for segmentation, the per-class means of the last decoder features over voxels of each
   segmentation class. Real targets are computed once per model copy over at least ``real_batch`` real cases,
   whole blocks (:func:`real_targets`; only where at least ``min_group`` cases show the class). Synthetic
   volumes are upsampled trilinearly on use.
   Initialisation (:func:`init_synthetic`): ``"noise"`` (standard normal) or ``"class_stats"`` (a synthetic
   lesion painted into the site's mean anatomy: :func:`site_template`, the mean of all its cases' images on the
   low-resolution grid, as an atlas is a mean of brains, made on the site's full-resolution grid and kept only
   where at least ``min_group`` patients' brains cover a voxel, whatever scale is asked; per tumour class and
   contrast, the mean and standard deviation of real voxels painted into the synthetic mask, plus noise; the
   statistics are averaged over the
   site's cases that share the volume's label vector, so that a volume labelled IDH-mutant grade II starts with
   the intensities of the site's IDH-mutant grade II tumours) — neither copies a patient's voxels. The
   statistics are those of a fixed group of at least ``min_group`` cases (the site operator's
   ``SitePolicy.min_group``, default 3; :func:`summary_groups`): the site's masked cases split into disjoint
   groups sharing labels, matched on fewer markers, weakest image cue first, where too few cases share a label
   vector; so one patient's summary never stands alone, and no two released
   averages differ by one patient. A tissue class fewer than ``min_group`` of the group's cases show is
   painted standard normal.
   ``"real_unsafe"`` starts from down-sampled real cases: for teaching only; the privacy audit flags it.
5. Synthetic masks are an ellipsoidal lesion (enhancing rim, core, oedema), for ``class_stats`` inside the
   template's brain (the cells at least half covered by voxels most of the site's patients' brains cover), centred
   near the mean lesion centroid of the same group of cases and sized from their mean region volumes (e.g. no
   enhancing rim for grade II when the site's grade II tumours have none;
   none either when fewer than ``min_group`` of the group's cases show one): class statistics, not a patient's
   mask. A site without masks (or with fewer masked cases than ``min_group``)
   sends empty masks.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from gliofed.federated.payload import Payload
from gliofed.federated.strategies.distill import DistillSettings, upsample_synthetic
from gliofed.vocab import MARKER_CLASSES, MARKERS

__all__ = ["soft_labels", "joint_labels", "group_labels", "real_blocks", "real_subset", "summary_groups",
           "group_for", "real_bn_statistics", "site_template", "init_synthetic", "real_targets", "matching_loss",
           "build_payload", "condense"]

#: the site's fixed order of its cases for :func:`real_blocks` (a constant: nothing a request sends changes it)
_BLOCK_ORDER_SEED = 20_231_118

#: levels of the network whose class-wise means are matched (see :func:`matching_loss`)
_LEVELS = ("bottleneck", "hidden", "logits")


def _real_batches(dataset, indices):
    for i in indices:
        sample = dataset[int(i)]
        yield sample["image"][None], sample["seg"], bool(sample["has_mask"]), sample["labels"]


@torch.no_grad()
def soft_labels(model: torch.nn.Module, dataset, temperature: float,
                min_cases: int = 1) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per marker: (K, K) table, row c = mean tempered softmax over real cases of class c; and counts (K,).

    A class fewer than ``min_cases`` cases show gets an all-zero row and count 0 (the server then skips it):
    a row over one patient would be that patient's prediction."""
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
    for marker in MARKERS:
        few = counts[marker] < max(1, int(min_cases))
        sums[marker][few], counts[marker][few] = 0.0, 0
    tables = {m: (sums[m] / np.maximum(counts[m], 1)[:, None]).astype(np.float32) for m in MARKERS}
    return tables, counts


def joint_labels(labels: np.ndarray, n: int, rng: np.random.Generator, cover: bool = False) -> np.ndarray:
    """``n`` label vectors drawn from a site's real ones, so that synthetic labels follow its joint distribution.

    Each returned row is one real case's whole label vector, unknown markers included (-1), drawn uniformly
    without replacement (in further passes over all cases once every case is used). With ``cover=True`` the
    draw first takes, for every (marker, class) the site has seen, rarest first, one case of that class if none
    drawn so far has it: every class appears when ``n`` allows, at the price of over-representing rare classes
    (which, pooled on the server, confounds a marker with the sites where its rare class was drawn; off by
    default).

    Args:
        labels: (N, 4) real label vectors in :data:`MARKERS` order, -1 unknown.
        n: number of vectors to draw.
        rng: random generator.
        cover: draw every seen class first.

    Returns:
        (n, 4) int64 label vectors.
    """
    labels = np.asarray(labels, np.int64)
    chosen: list[int] = []
    if cover:
        pairs = [(j, c, int((labels[:, j] == c).sum())) for j, marker in enumerate(MARKERS)
                 for c in range(len(MARKER_CLASSES[marker])) if (labels[:, j] == c).any()]
        for j, c, _ in sorted(pairs, key=lambda pair: pair[2]):
            if len(chosen) >= n:
                break
            if not any(labels[i, j] == c for i in chosen):
                candidates = np.flatnonzero(labels[:, j] == c)
                unused = np.setdiff1d(candidates, chosen)
                chosen.append(int(rng.choice(unused if len(unused) else candidates)))
    passes = [i for i in rng.permutation(len(labels)) if i not in chosen]  # the rest of the first pass
    while len(chosen) + len(passes) < n:  # then further passes over every case
        passes += list(rng.permutation(len(labels)))
    chosen += [int(i) for i in passes[: n - len(chosen)]]
    return labels[np.array(chosen, np.int64)]


def real_blocks(n_cases: int, min_cases: int = 1) -> list[np.ndarray]:
    """The site's cases ``0 .. n_cases - 1`` split into fixed, disjoint blocks of at least ``min_cases`` (sizes
    differ by at most one), in an order fixed by the site alone: every average over real cases is over whole
    blocks, so that no two such averages, whatever seeds and sizes a server requests, differ by fewer than
    ``min_cases`` patients. One block of all cases when there are fewer than ``2 * min_cases``."""
    order = np.random.default_rng(_BLOCK_ORDER_SEED).permutation(int(n_cases))
    n_blocks = max(1, int(n_cases) // max(1, int(min_cases)))
    return [np.sort(block) for block in np.array_split(order, n_blocks)]


def real_subset(n_cases: int, real_batch: int, min_cases: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of the real cases one condensation averages over: whole :func:`real_blocks`, drawn in the
    order ``rng`` (the request's seed) gives until at least ``min(real_batch, n_cases)`` cases are in."""
    blocks = real_blocks(n_cases, min_cases)
    want, chosen, total = min(int(real_batch), int(n_cases)), [], 0
    for b in rng.permutation(len(blocks)):
        if total >= want:
            break
        chosen.append(blocks[int(b)])
        total += len(blocks[int(b)])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def group_labels(labels: np.ndarray, min_cases: int = 1) -> np.ndarray:
    """(N, 4) the label vector each real case may be sent as: per marker, its own value where at least
    ``min_cases`` cases of its :func:`summary_groups` group (over all ``labels``) have that value, else -1
    (unknown). No value is made up (a case is never sent with a label it does not have), and no value fewer than
    ``min_cases`` cases of a fixed group share is sent; so a rare combination goes out with its rare markers
    unknown, indistinguishable from an unrecorded one. With ``min_cases=1`` every case keeps its own vector;
    with fewer cases than ``min_cases`` every vector is unknown."""
    labels = np.asarray(labels, np.int64)
    out = np.full_like(labels, -1)
    least = max(1, int(min_cases))
    for group in summary_groups([{"labels": row, "index": i} for i, row in enumerate(labels)], min_cases):
        members = np.array([case["index"] for case in group])
        for j in range(labels.shape[1]):
            column = labels[members, j]
            shared = (column >= 0) & (np.array([(column == v).sum() for v in column]) >= least)
            out[members[shared], j] = column[shared]
    return out


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
    for image, _, _, _ in _real_batches(dataset, indices):
        twin(image)
    stats = {}
    for name, layer in layers.items():
        stats[f"{name}.running_mean"] = layer.running_mean.detach().float().numpy().copy()
        stats[f"{name}.running_var"] = layer.running_var.detach().float().numpy().copy()
    return stats


def _reference_shape(dataset, scale: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    depth = int(np.median(dataset.index["depth"]))
    shape = (depth, int(dataset.index["height"].iloc[0]), int(dataset.index["width"].iloc[0]))
    low = tuple(max(2, int(np.ceil(s / scale))) for s in shape)
    return shape, low


def _case_statistics(dataset, indices) -> list[dict]:
    """Per real case with a mask: its label vector, tissue-class volume fractions (4,) and per-class, per-contrast
    voxel mean and standard deviation (4, C, 2; NaN for a class the case lacks). Summaries only, never voxels."""
    cases = []
    for image, seg, has_mask, labels in _real_batches(dataset, indices):
        if not has_mask:
            continue
        flat_seg, flat_img = seg.reshape(-1), image[0].reshape(image.shape[1], -1)
        stats = torch.full((4, image.shape[1], 2), float("nan"))
        for k in range(4):
            chosen = flat_seg == k
            if int(chosen.sum()) > 1:
                stats[k, :, 0], stats[k, :, 1] = flat_img[:, chosen].mean(1), flat_img[:, chosen].std(1).clamp_min(1e-3)
        lesion = torch.nonzero(seg.reshape(seg.shape[-3:]) > 0).float()
        # the lesion's centroid in [-1, 1] grid coordinates (D, H, W), NaN without one: where tumours sit
        centre = (lesion.mean(0) / torch.tensor([max(s - 1, 1) for s in seg.shape[-3:]]) * 2 - 1).numpy() \
            if len(lesion) else np.full(3, np.nan)
        cases.append({"labels": np.asarray(labels, np.int64),
                      "fractions": np.bincount(flat_seg.numpy(), minlength=4)[:4] / flat_seg.numel(),
                      "stats": stats, "centre": centre})
    return cases


@torch.no_grad()
def site_template(dataset, indices, reference: tuple[int, int, int], low: tuple[int, int, int],
                  min_cases: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The anatomy the site's cases share, on the low-resolution grid ``low``: (C, d, h, w) the mean of their
    images and (d, h, w) bool the brain a synthetic lesion may take; None for fewer than ``min_cases`` cases.

    A population template, as an atlas is: an average over all of ``indices`` (the condensation passes every case
    of the site, whatever the request). A mean over all cases is not enough by itself: preprocessing leaves the
    background at 0 and the case count is public, so where fewer than ``min_cases`` patients have brain (the rim
    that one patient's head alone reaches) the mean is those patients' voxels over a known count. So the template
    is made once on the site's own full-resolution grid ``reference`` (each case resampled to it), where every
    voxel that fewer than ``min_cases`` patients' brains (a nonzero voxel) cover is set to 0, and only then
    area-resampled to ``low``. Whatever grid a server asks for (its ``scale``), what it gets is an average of that
    one full-resolution population image: templates at two scales cannot be differenced into a rim voxel. (The
    kept region's edge is where the ``min_cases``-th patient's head ends: a k-anonymous bound, not one patient's
    outline.)

    The brain returned is where most of the site's patients have brain (on the full grid; at ``low``, the cells
    it covers at least half of): lesions go where the typical head is, not into a rim a minority reaches."""
    need = max(1, int(min_cases))
    reference = tuple(int(s) for s in reference)
    total, covered, n = None, None, 0
    for image, _, _, _ in _real_batches(dataset, indices):
        image = image.float()
        inside = (image != 0).any(1, keepdim=True).float()
        if tuple(image.shape[-3:]) != reference:
            image = F.interpolate(image, size=reference, mode="trilinear", align_corners=False)
            inside = F.interpolate(inside, size=reference, mode="trilinear", align_corners=False)
        total = image[0] if total is None else total + image[0]
        covered = (inside[0, 0] >= 0.5).long() if covered is None else covered + (inside[0, 0] >= 0.5).long()
        n += 1
    if n < need:
        return None
    population = covered >= need
    typical = population & (2 * covered >= n)
    brain = F.interpolate(typical[None, None].float(), size=tuple(low), mode="area")[0, 0] >= 0.5
    return F.interpolate((total / n * population)[None], size=tuple(low), mode="area")[0], brain


#: markers left out of the grouping key, weakest image cue first, while fewer than ``min_cases`` cases share a key
RELAX_ORDER: tuple[str, ...] = ("mgmt", "codeletion", "grade", "idh")
#: markers by image cue, strongest first: how a synthetic volume's label vector picks its group
_CUE_ORDER: tuple[str, ...] = tuple(reversed(RELAX_ORDER))


def summary_groups(cases: list[dict], min_cases: int = 1) -> list[list[dict]]:
    """The site's masked cases split into disjoint groups of at least ``min_cases`` that share labels, the only
    sets whose pooled summaries a synthetic volume may start from.

    Cases with the same whole label vector (an unknown marker, -1, is a value of its own) form a group when there
    are at least ``min_cases`` of them; the rest are grouped again with MGMT left out of the key, then 1p/19q,
    grade and IDH (:data:`RELAX_ORDER`); any last few join the group their labels agree with most. The groups
    depend only on the cases given (the condensation passes all of the site's masked cases), never on a server's
    seed or ``real_batch``, and are disjoint: no two released averages can be subtracted to single a patient
    out. Empty when the site has fewer than ``min_cases`` masked cases.
    """
    min_cases = max(1, int(min_cases))
    if len(cases) < min_cases:
        return []
    groups: list[list[dict]] = []
    left, kept = list(cases), list(MARKERS)
    for dropped in (None, *RELAX_ORDER):
        if dropped is not None:
            kept.remove(dropped)
        columns = [MARKERS.index(m) for m in kept]
        buckets: dict[tuple, list[dict]] = {}
        for case in left:
            buckets.setdefault(tuple(int(v) for v in case["labels"][columns]), []).append(case)
        left = []
        for members in buckets.values():
            if len(members) >= min_cases:
                groups.append(members)
            else:
                left += members
    for case in left:  # fewer than min_cases left over: each joins the group it agrees with most
        group_for(groups, case["labels"]).append(case)
    return groups


def group_for(groups: list[list[dict]], labels: np.ndarray) -> list[dict]:
    """The group whose cases agree most with ``labels``: the largest share agreeing on IDH, then grade, 1p/19q,
    MGMT (an unknown marker in ``labels`` agrees with anything), then the larger group; ``[]`` without groups."""
    labels = np.asarray(labels, np.int64)

    def score(group: list[dict]) -> tuple:
        shares = []
        for marker in _CUE_ORDER:
            j = MARKERS.index(marker)
            shares.append(1.0 if labels[j] < 0 else float(np.mean([int(c["labels"][j]) == labels[j] for c in group])))
        return (*shares, len(group))

    return max(groups, key=score) if groups else []


def _class_fractions(cases: list[dict], labels: np.ndarray, min_cases: int = 1) -> np.ndarray:
    """(n, 4) tissue-class fractions per synthetic volume: the mean over the group of real cases its labels pick
    (:func:`summary_groups`; e.g. no enhancing rim for a grade II label when that group's tumours have none); no
    lesion where the site has fewer than ``min_cases`` masked cases (the volume then counts as unmasked), and no
    lesion class that fewer than ``min_cases`` of the group's cases show (its share goes to background)."""
    groups = summary_groups(cases, min_cases)
    rows = []
    for vector in labels:
        group = group_for(groups, vector)
        if not group:
            rows.append(np.array([1.0, 0, 0, 0]))
            continue
        stacked = np.array([c["fractions"] for c in group], float)
        row = stacked.mean(0)
        row[1:][(stacked[:, 1:] > 0).sum(0) < max(1, int(min_cases))] = 0.0
        row[0] = 1.0 - row[1:].sum()
        rows.append(row)
    return np.asarray(rows)


def _lesion_centres(cases: list[dict], labels: np.ndarray, min_cases: int = 1) -> np.ndarray:
    """(n, 3) the mean lesion centroid (grid coordinates in [-1, 1]) of the group of real cases each synthetic
    volume's labels pick (:func:`summary_groups`); NaN where no group of at least ``min_cases`` cases has one."""
    groups = summary_groups(cases, min_cases)
    rows = []
    for vector in labels:
        centres = np.array([c["centre"] for c in group_for(groups, vector) if "centre" in c], float).reshape(-1, 3)
        centres = centres[np.isfinite(centres).all(1)]
        rows.append(centres.mean(0) if len(centres) >= max(1, int(min_cases)) else np.full(3, np.nan))
    return np.asarray(rows, float).reshape(-1, 3)


def _synthetic_masks(low: tuple[int, int, int], fractions: np.ndarray, n: int, rng: np.random.Generator,
                     centres: np.ndarray | None = None, brain: np.ndarray | None = None) -> np.ndarray:
    """Ellipsoidal lesions: oedema shell, core, enhancing rim; ``fractions`` (4,) for all volumes or (n, 4) one row
    per volume (class statistics, never a patient's mask).

    ``centres`` (n, 3): where each lesion is centred (grid coordinates in [-1, 1]; a NaN row, or none: drawn in
    the middle of the grid), with a small random shift; ``brain`` (d, h, w) bool: the voxels a lesion may take
    (default all), so that a lesion lies inside the template's brain."""
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in low], indexing="ij")
    masks = np.zeros((n, *low), np.uint8)
    fractions = np.asarray(fractions, float)
    if fractions.shape not in ((4,), (n, 4)):
        raise ValueError(f"lesion fractions must have shape (4,) or ({n}, 4), not {fractions.shape}.")
    rows = np.broadcast_to(fractions, (n, 4))
    allowed = np.ones(low, bool) if brain is None or not np.asarray(brain).any() else np.asarray(brain, bool)
    for i in range(n):
        lesion = float(rows[i, 1:].sum())
        if lesion <= 0:
            continue
        known = centres is not None and np.isfinite(centres[i]).all()
        centre = (np.clip(centres[i] + rng.uniform(-0.15, 0.15, 3), -0.6, 0.6) if known
                  else rng.uniform(-0.3, 0.3, 3))
        r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre)))
        r = np.where(allowed, r, np.inf)  # outside the brain last
        order = np.argsort(r, axis=None)
        flat = masks[i].reshape(-1)
        total = int(round(lesion * flat.size))
        # innermost voxels necrosis/core (1), then enhancing rim (3), then oedema (2)
        counts = (rows[i, 1:] / lesion * total).round().astype(int)
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
            p.requires_grad_(False)
    return twin.eval()


def init_synthetic(dataset, init: str, masks: torch.Tensor, low: tuple[int, int, int], rng: np.random.Generator,
                   generator: torch.Generator, labels: np.ndarray | None = None,
                   cases: list[dict] | None = None, min_cases: int = 1,
                   template: torch.Tensor | None = None) -> torch.Tensor:
    """Initial low-resolution synthetic images (n, C, d, h, w) float32.

    Args:
        dataset: the site's real cases (read only for ``class_stats`` statistics and ``real_unsafe``).
        init: ``"noise"``, ``"class_stats"`` or ``"real_unsafe"`` (see the module docstring).
        masks: (n, d, h, w) synthetic segmentation masks the ``class_stats`` initialisation paints.
        low: the low-resolution grid (d, h, w).
        rng, generator: NumPy / torch random generators.
        labels: (n, 4) the synthetic volumes' label vectors; ``class_stats`` paints each volume with the mean
            statistics of the group of real cases its labels pick (:func:`summary_groups`, :func:`group_for`), so a
            volume labelled IDH-mutant starts with the intensities of the site's IDH-mutant tumours. Without labels
            every volume gets the average of all ``cases``.
        cases: :func:`_case_statistics` of the real cases to draw statistics from (default: every masked case of
            ``dataset``).
        min_cases: fewest cases any statistic may summarise (the site's ``SitePolicy.min_group``): groups have at
            least this many cases, a tissue class fewer of the group's cases show is painted standard normal, and
            a site with fewer masked cases than this paints standard normal throughout (with ``template``: the
            template plus a little noise).
        template: (C, d, h, w) the site's mean anatomy (:func:`site_template`); ``class_stats`` paints the lesion
            onto it (background voxels: the template plus a little noise) instead of onto a uniform background of
            the non-tumour statistics, so that the server sees tumours inside brains.
    """
    n, channels = int(masks.shape[0]), int(dataset[0]["image"].shape[0])
    all_indices = np.arange(len(dataset))
    if init == "real_unsafe":
        picks = rng.choice(all_indices, size=n, replace=len(all_indices) < n)
        return torch.cat([F.interpolate(dataset[int(i)]["image"][None], size=low, mode="area") for i in picks]).float()
    if init == "class_stats":
        if cases is None:
            cases = _case_statistics(dataset, all_indices)
        prior = torch.zeros(4, channels, 2)
        prior[:, :, 1] = 1.0  # a class fewer than min_cases cases of the group show: standard normal, as "noise"
        groups = summary_groups(cases, min_cases) if labels is not None else [cases] * (len(cases) >= min_cases)
        out = []
        for i in range(n):
            group = group_for(groups, labels[i]) if labels is not None else (groups[0] if groups else [])
            stats = _mean_stats(group, channels, min_cases)
            stats = torch.where(torch.isnan(stats), prior, stats)
            mean = stats[masks[i].long(), :, 0].permute(3, 0, 1, 2)
            std = stats[masks[i].long(), :, 1].permute(3, 0, 1, 2)
            if template is not None:  # non-tumour voxels: the site's shared anatomy, not one uniform value
                background = (masks[i] == 0)[None]
                mean = torch.where(background, template.float(), mean)
                std = torch.where(background, torch.full_like(std, 0.2), std)
            out.append(mean + 0.5 * std * torch.randn(mean.shape, generator=generator))
        return torch.stack(out).float()
    return torch.randn((n, channels, *low), generator=generator)


def _mean_stats(cases: list[dict], channels: int, min_cases: int = 1) -> torch.Tensor:
    """(4, C, 2) mean over ``cases`` of their per-class statistics; NaN for a class fewer than ``min_cases`` of
    them show (so that no class's statistics are those of fewer than ``min_cases`` patients)."""
    stats = torch.full((4, channels, 2), float("nan"))
    if cases:
        stacked = torch.stack([c["stats"] for c in cases])
        present = ~torch.isnan(stacked)
        summed = torch.where(present, stacked, torch.zeros(())).sum(0)
        count = present.sum(0)
        stats = torch.where(count >= max(1, min_cases), summed / count.clamp_min(1), stats)
    return stats


def _levels(net: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
    """Features of ``images`` at every matched level: bottleneck, hidden, per-marker logits, decoder."""
    out = net(images, return_features=True)
    hidden = net.mlp(out["bottleneck"])  # the classification branch's hidden features (eval: no dropout)
    return {"bottleneck": out["bottleneck"], "hidden": hidden, "logits": {m: out[m].float() for m in MARKERS},
            "decoder": out["decoder"]}


def _class_sums(levels: dict, labels: torch.Tensor) -> dict[tuple[str, int, int], tuple[torch.Tensor, int]]:
    """{(level, marker index, class): (sum of that level's features over cases of the class, count)}."""
    sums = {}
    for j, marker in enumerate(MARKERS):
        for c in range(len(MARKER_CLASSES[marker])):
            chosen = labels[:, j] == c
            count = int(chosen.sum())
            if count:
                sums[("bottleneck", j, c)] = (levels["bottleneck"][chosen].sum(0), count)
                sums[("hidden", j, c)] = (levels["hidden"][chosen].sum(0), count)
                sums[("logits", j, c)] = (levels["logits"][marker][chosen].sum(0), count)
    return sums


def _voxel_class_sums(decoder: torch.Tensor, seg: torch.Tensor) -> dict[int, tuple[torch.Tensor, int]]:
    """(N, F, D, H, W) decoder features, (N, 1, D, H, W) classes -> {class: (feature sum over its voxels, count)}."""
    flat = decoder.permute(1, 0, 2, 3, 4).reshape(decoder.shape[1], -1)
    classes = seg.reshape(-1)
    return {int(k): (flat[:, classes == k].sum(1), int((classes == k).sum())) for k in torch.unique(classes).tolist()}


@torch.no_grad()
def real_targets(net: torch.nn.Module, dataset, indices, min_cases: int = 1) -> dict:
    """Class-wise means of the real cases ``indices`` under ``net`` (eval mode): ``{"class": {(level, marker
    index, class): mean}, "voxel": {segmentation class: mean decoder feature}}``.

    A voxel target is the mean feature over all of that class's voxels in the masked cases (pooled, like the
    synthetic side of :func:`matching_loss`; cases without a mask add nothing). A target that fewer than
    ``min_cases`` cases back (for a voxel target: masked cases showing the class) is left out: it would be one
    patient's features."""
    class_sums: dict = {}
    voxel_sums: dict = {}
    for image, seg, has_mask, labels in _real_batches(dataset, indices):
        levels = _levels(net, image)
        for key, (total, count) in _class_sums(levels, labels[None]).items():
            old = class_sums.get(key, (0.0, 0))
            class_sums[key] = (old[0] + total, old[1] + count)
        if has_mask:
            for key, (total, count) in _voxel_class_sums(levels["decoder"], seg[None]).items():
                if count:
                    old = voxel_sums.get(key, (0.0, 0, 0))
                    voxel_sums[key] = (old[0] + total, old[1] + count, old[2] + 1)
    least = max(1, int(min_cases))
    return {"class": {k: s / n for k, (s, n) in class_sums.items() if n >= least},
            "voxel": {k: s / n for k, (s, n, cases) in voxel_sums.items() if cases >= least}}


def matching_loss(net: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
                  shape, targets: dict) -> torch.Tensor:
    """Distribution-matching loss of the synthetic set under ``net`` against real ``targets``
    (:func:`real_targets`).

    Sum of squared distances between synthetic and real class means, for every (level, marker, class)
    present in both (levels: pooled bottleneck, MLP hidden, that marker's logits), plus, for every
    segmentation class present in both, the squared distance of the mean last-decoder feature over that
    class's voxels.

    Args:
        net: model in eval mode (its parameters need no gradient).
        images: (n, C, d, h, w) low-resolution synthetic images (requires grad).
        masks: (n, 1, D, H, W) synthetic masks at full resolution (int64).
        labels: (n, 4) synthetic label vectors.
        shape: full-resolution (D, H, W).
        targets: real class means under the same ``net``.

    Returns:
        scalar loss (zero, still connected to ``images``, when nothing is shared).
    """
    full = F.interpolate(images.float(), size=tuple(shape), mode="trilinear", align_corners=False)
    levels = _levels(net, full)
    loss = images.sum() * 0.0
    for key, (total, count) in _class_sums(levels, labels).items():
        if key in targets["class"]:
            loss = loss + ((total / count - targets["class"][key]) ** 2).sum()
    if bool((masks > 0).any()):
        for k, (total, count) in _voxel_class_sums(levels["decoder"], masks).items():
            if k in targets["voxel"] and count:
                loss = loss + ((total / count - targets["voxel"][k]) ** 2).sum()
    return loss


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


def condense(model: torch.nn.Module, dataset, settings: DistillSettings, seed: int, site: str,
             min_group: int = 3) -> Payload:
    """Soft labels + BatchNorm statistics + condensed synthetic set of one site's real cases under the global
    ``model``.

    ``min_group``: fewest real cases any released summary may pool, and the size of the blocks the real cases
    are averaged in (see the module docstring) — the site operator's ``SitePolicy.min_group``, never the
    server's.

    Returns:
        ``distilled_set`` payload (:func:`build_payload`); meta ``site``, ``n_cases``, ``shape``
        (full-resolution D, H, W), ``scale``, ``init``, ``temperature``.
    """
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    model = model.eval()
    tables, counts = soft_labels(model, dataset, settings.temperature, min_group)
    shape, low = _reference_shape(dataset, settings.scale)
    all_indices = np.arange(len(dataset))
    # whole fixed blocks of >= min_group cases: the server's seed picks blocks, never single cases
    real = real_subset(len(dataset), settings.real_batch, min_group, rng)
    bn_stats = real_bn_statistics(model, dataset, real)
    # label vectors of the cases whose class means are the targets (as their groups' shared vectors)
    labels = joint_labels(group_labels(dataset.labels, min_group)[real], settings.n_synthetic, rng)
    # each volume's lesion and intensities follow the group of real cases its labels pick (summaries of at least
    # min_group patients, never voxels), over all masked cases of the site: the server's seed and real_batch
    # cannot choose the cases whose summaries are released
    cases = _case_statistics(dataset, all_indices)
    fractions = _class_fractions(cases, labels, min_group)
    shared = site_template(dataset, all_indices, shape, low, min_group) if settings.init == "class_stats" else None
    template, brain = shared if shared is not None else (None, None)
    masks = torch.from_numpy(_synthetic_masks(low, fractions, settings.n_synthetic, rng,
                                              centres=_lesion_centres(cases, labels, min_group),
                                              brain=None if brain is None else brain.numpy()))
    images = init_synthetic(dataset, settings.init, masks, low, rng, generator, labels=labels, cases=cases,
                            min_cases=min_group, template=template).clone().requires_grad_(True)
    syn_labels = torch.from_numpy(labels)
    full_masks = upsample_synthetic(images.detach(), masks, shape)[1]

    if settings.steps > 0:
        # theta_r and perturbed copies; real targets once per copy (over up to real_batch cases)
        nets = [_perturbed(model, settings.perturb if k else 0.0, generator) for k in range(max(1, settings.models))]
        targets = [real_targets(net, dataset, real, min_group) for net in nets]
        optimizer = torch.optim.Adam([images], lr=settings.lr)
        for step in range(settings.steps):
            k = step % len(nets)
            loss = matching_loss(nets[k], images, full_masks, syn_labels, shape, targets[k])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    meta = {"site": site, "n_cases": len(dataset), "shape": list(shape), "scale": settings.scale,
            "init": settings.init, "temperature": settings.temperature}
    return build_payload(images, masks, labels, tables, counts, bn_stats, meta)
