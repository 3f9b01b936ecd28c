"""Synthetic multi-site glioma cohort on real MNI152 anatomy — gliofed's embedded default dataset.

Each subject is a real brain (nilearn's MNI152 2009 T1 / GM / WM templates and brain mask, shipped in
the nilearn wheel, randomly warped per subject) carrying a synthetic glioma whose appearance follows
its (hidden, always generated) molecular profile; the manifest reveals each label only where the
subject's site would have it, reproducing the patchy label availability of the seed study
(Ren et al., Front. Radiol. 2025, Tables 1-2).

Anatomy and contrasts
    CSF = brain mask - GM - WM. Four contrasts are mixed from tissue probabilities:
    T1 (WM > GM > CSF), T2 (CSF brightest), FLAIR (T2-like with CSF suppressed) and T1ce
    (T1 plus contrast uptake in enhancing tumour).

Tumour phenotypes (literature-grounded; strength scaled by ``difficulty``)
    * grade IV: ring enhancement around central necrosis, large oedema (WHO CNS5 glioblastoma).
    * grade III: patchy enhancement, moderate oedema. grade II: no enhancement, little oedema.
    * IDH-mutant: mostly lower grade, frontal preference, homogeneous texture, younger patients.
    * IDH-mutant, 1p/19q intact: T2-FLAIR mismatch sign — homogeneously bright on T2, relatively
      dark FLAIR core with a bright rim (Patel et al., Clin Cancer Res 2017; Jain et al. 2020).
    * 1p/19q co-deleted (only ever IDH-mutant): calcification-like hypointense foci, cortical
      involvement, ill-defined margins (oligodendroglioma features).
    * MGMT methylation: only a weak cue (slightly less oedema, slightly more homogeneous core), so
      it stays the hardest marker, as in real data.
    A fraction of "atypical" subjects (growing with ``difficulty``) carry the phenotype of another
    profile, so no marker is perfectly predictable.

Cue families (``cues``)
    * ``"intensity"`` (default, the cohort above): markers shift tissue intensities (e.g. the T2-FLAIR
      mismatch, calcification, enhancement strength) and lesion sizes, and each site has its own marker
      prevalence. Per-case summaries (per-class intensity means and spreads, class fractions, tumour centre)
      predict the markers well, and so does the site alone.
    * ``"morphology"`` (the harder cohort): every lesion class (core, oedema, enhancing) keeps one intensity
      table and one relative texture amplitude whatever the markers, and lesion volumes, the enhancing share of
      the core and the tumour's place (deep white matter) are drawn alike for every profile. Each marker is a
      choice between two **up-down mirror images** (z -> -z) of one structure, all in the sagittal (y-z) plane:
      IDH turns the streaks of the oedema's texture along one sagittal diagonal or the other; grade IV against
      II/III those of the core, grade III against II those of the enhancing nodule; 1p/19q elongates the whole
      lesion along one diagonal or the other. MGMT has **no image cue** (it is scored, as a marker that an image
      cannot tell, though it correlates with IDH in :data:`SHARED_MIX`). Each subject's anatomy is itself mirrored
      up-down at random, whatever its markers. Why up-down: preprocessing resizes in-plane only (the cache keeps
      depth), slice by slice, so mirroring a subject up-down mirrors its preprocessed volume and leaves every
      per-class mean, spread and fraction as it was, and the mirror maps one cue to the other; the left-right axis
      is flipped at random by training augmentation (a left-right cue would be erased), and a front-back cue meets
      the in-plane resize, which shifts the nearest-neighbour mask against the area-averaged image by a fraction
      of a voxel in a fixed direction (such a cue gave a summary-statistics probe an IDH AUC of 0.74-0.87,
      ``benchmarks/RESULTS.md``). So per-class means and spreads cannot tell the classes apart; a network that sees
      orientation can. All sites draw markers from one shared mix (:data:`SHARED_MIX`), so prevalence does not
      depend on the site; label availability, masks and scanners stay per site.

Sites (:data:`SITES`) follow the five institutions of the seed's Table 2: case counts, grade mix,
marker prevalence, which labels are recorded, whether masks exist (REMBRANDT has none), and a scanner
profile each (intensity gain/offset per contrast, bias field, Rician noise, slice thickness, storage
orientation).

Files: ``DIR/<site>/<subject>/<subject>_{t1,t1ce,t2,flair,seg}.nii.gz`` (int16 images, uint8 seg with
BraTS values 0/1/2/4, skull-stripped, zero background) and ``DIR/manifest.csv``.

>>> manifest = make_cohort("cohort", preset="tiny", seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from gliofed.data.manifest import write_manifest
from gliofed.data.parallel import process_map
from gliofed.data.split import assign_splits
from gliofed.data.tables import site_heterogeneity
from gliofed.errors import ConfigError
from gliofed.fileio import atomic_write, atomic_write_text, to_json, write_csv
from gliofed.presets import COHORT_FILE, CohortPreset, get_preset
from gliofed.vocab import MARKERS, MODALITIES

__all__ = [
    "CUES",
    "SHARED_MIX",
    "ScannerProfile",
    "SiteProfile",
    "SITES",
    "make_cohort",
    "synthesize_subject",
]

# ----------------------------------------------------------------------------------------------------
# Knobs
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScannerProfile:
    """How one site's scanners render a subject.

    Attributes:
        gain: intensity scale per contrast (t1, t1ce, t2, flair); stored values are tissue intensity x gain.
        offset: additive offset inside the brain, per contrast.
        bias: peak multiplicative bias-field amplitude (0.2 = up to about +-20 %).
        noise: Rician noise sigma relative to white-matter T1 intensity (before ``difficulty`` scaling).
        slice_thickness_mm: axial slice thickness at the ``paper`` preset (presets scale it).
        orientation: storage axis codes; ``"LAS"`` stores x flipped, as many DICOM converters do.
    """

    gain: tuple[float, float, float, float] = (1000.0, 1000.0, 1000.0, 1000.0)
    offset: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    bias: float = 0.15
    noise: float = 0.03
    slice_thickness_mm: float = 1.0
    orientation: str = "RAS"


@dataclass(frozen=True)
class SiteProfile:
    """Case mix, label availability and scanner of one synthetic site.

    Attributes:
        name: site identifier (also the folder name and subject-ID prefix).
        mirrors: the seed-study dataset whose role this site plays.
        n_cases: subjects at the ``paper`` preset (the seed's Table 2 counts).
        grade_mix: probability of WHO grade II, III, IV.
        idh_mutant: probability of IDH mutation given grade II, III, IV.
        codeletion_given_idh: probability of 1p/19q co-deletion given IDH-mutant (never in wildtype).
        mgmt_methylated: probability of MGMT methylation in IDH-wildtype tumours (IDH-mutant: 0.85).
        known: fraction of subjects whose label is recorded, per marker (and ``age``).
        has_masks: whether segmentations are distributed.
        scanner: :class:`ScannerProfile`.
    """

    name: str
    mirrors: str
    n_cases: int
    grade_mix: tuple[float, float, float]
    idh_mutant: tuple[float, float, float]
    codeletion_given_idh: float
    mgmt_methylated: float
    known: dict[str, float]
    has_masks: bool = True
    scanner: ScannerProfile = field(default_factory=ScannerProfile)


#: The five sites of the seed study (Table 2), biology made consistent (co-deletion only if IDH-mutant).
SITES: tuple[SiteProfile, ...] = (
    SiteProfile(
        "brats21", "BraTS 2021", 384, (0.0, 0.02, 0.98), (0.0, 0.35, 0.04), 0.3, 0.5,
        {"idh": 0.6, "codeletion": 0.5, "mgmt": 0.85, "grade": 0.87, "age": 0.9},
        scanner=ScannerProfile((900, 950, 1100, 800), (0, 0, 0, 0), 0.10, 0.025, 1.0, "RAS"),
    ),
    SiteProfile(
        "upenn", "UPENN-GBM", 671, (0.0, 0.0, 1.0), (0.0, 0.0, 0.03), 0.0, 0.45,
        {"idh": 0.7, "codeletion": 0.0, "mgmt": 0.45, "grade": 0.2, "age": 1.0},
        scanner=ScannerProfile((1200, 1300, 900, 1000), (50, 50, 0, 30), 0.20, 0.03, 1.0, "LAS"),
    ),
    SiteProfile(
        "tcga_gbm", "TCGA-GBM", 262, (0.0, 0.0, 1.0), (0.0, 0.0, 0.05), 0.0, 0.45,
        {"idh": 0.9, "codeletion": 0.0, "mgmt": 0.0, "grade": 0.0, "age": 0.95},
        scanner=ScannerProfile((700, 800, 1400, 1200), (0, 0, 0, 0), 0.25, 0.045, 1.5, "RAS"),
    ),
    SiteProfile(
        "tcga_lgg", "TCGA-LGG", 108, (0.44, 0.56, 0.0), (0.85, 0.7, 0.0), 0.4, 0.5,
        {"idh": 1.0, "codeletion": 1.0, "mgmt": 0.0, "grade": 1.0, "age": 0.95},
        scanner=ScannerProfile((1000, 1000, 1000, 1000), (100, 100, 50, 50), 0.15, 0.035, 2.0, "LAS"),
    ),
    SiteProfile(
        "rembrandt", "REMBRANDT", 127, (0.46, 0.28, 0.26), (0.75, 0.6, 0.05), 0.35, 0.5,
        {"idh": 0.0, "codeletion": 0.0, "mgmt": 0.0, "grade": 0.7, "age": 0.6},
        has_masks=False,
        scanner=ScannerProfile((600, 650, 800, 700), (20, 20, 20, 20), 0.30, 0.05, 5.0, "RAS"),
    ),
)


#: cue families :func:`make_cohort` accepts (see the module docstring)
CUES = ("intensity", "morphology")

#: the marker mix every site draws from in the ``"morphology"`` cohort (prevalence decoupled from the site):
#: grades balanced, IDH mutation more common in lower grades, co-deletion only in IDH-mutant grade II/III
SHARED_MIX = SiteProfile("shared", "all sites (morphology cohort)", 0, (1 / 3, 1 / 3, 1 / 3), (0.65, 0.5, 0.25), 0.5,
                         0.45, {})

#: brain bounding box of the MNI152 1 mm template (voxels), with a margin; computed once
_MARGIN_VOX = 4

# Tissue intensities (arbitrary units, T1 white matter = 1) per contrast: t1, t1ce, t2, flair.
_HEALTHY = {
    "wm": (1.00, 1.00, 0.45, 0.55),
    "gm": (0.70, 0.72, 0.65, 0.70),
    "csf": (0.30, 0.30, 1.00, 0.12),
}
_LESION = {
    "oedema": (0.62, 0.62, 0.90, 0.95),
    "core": (0.50, 0.55, 0.88, 0.85),       # non-enhancing tumour core (label 1)
    "necrosis": (0.35, 0.35, 1.00, 0.50),   # label 1
    "enhancing": (0.55, 1.55, 0.75, 0.85),  # label 4
    "calcification": (0.30, 0.30, 0.20, 0.25),
}


# ----------------------------------------------------------------------------------------------------
# Anatomy
# ----------------------------------------------------------------------------------------------------


def _brain_mask() -> np.ndarray:
    from nilearn import datasets

    return np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0


@lru_cache(maxsize=1)
def _brain_box() -> tuple[np.ndarray, np.ndarray]:
    """Brain bounding box in the 1 mm MNI152 template (voxels = mm), with a margin: (lo, hi)."""
    mask = _brain_mask()
    lo = np.maximum(np.argwhere(mask).min(0) - _MARGIN_VOX, 0)
    hi = np.minimum(np.argwhere(mask).max(0) + _MARGIN_VOX + 1, mask.shape)
    return lo, hi


@lru_cache(maxsize=4)
def _anatomy(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Tissue probability maps (wm, gm, csf) of the MNI152 brain resampled to ``shape``; spacing (mm)."""
    from nilearn import datasets

    mask = _brain_mask()
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    gm /= max(float(gm.max()), 1e-6)
    wm /= max(float(wm.max()), 1e-6)
    lo, hi = _brain_box()
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    maps = []
    for tissue in (wm, gm, mask.astype(np.float32)):
        maps.append(ndimage.zoom(tissue[crop], np.array(shape) / (hi - lo), order=1, grid_mode=True,
                                 mode="grid-constant"))
    wm_r, gm_r, mask_r = (np.clip(m, 0, 1) for m in maps)
    total = wm_r + gm_r
    scale = np.where(total > 1, 1 / np.maximum(total, 1e-6), 1.0)
    wm_r, gm_r = wm_r * scale * mask_r, gm_r * scale * mask_r
    csf = np.clip(mask_r - wm_r - gm_r, 0, 1)
    spacing = (hi - lo) / np.array(shape)
    return np.stack([wm_r, gm_r, csf]).astype(np.float32), spacing.astype(np.float64)


def _random_warp(maps: np.ndarray, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-subject anatomy: a random rotation (+-8 deg axial, +-4 deg otherwise), scaling and shift."""
    angles = np.deg2rad(rng.uniform([-4, -4, -8], [4, 4, 8]))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rot = (np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
           @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
           @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]))
    transform = rot @ np.diag(rng.uniform(0.92, 1.08, 3))
    # output voxel -> mm -> inverse transform -> input voxel
    matrix = np.diag(1 / spacing) @ np.linalg.inv(transform) @ np.diag(spacing)
    centre = (np.array(maps.shape[1:]) - 1) / 2
    shift_vox = rng.uniform(-3, 3, 3) / spacing
    offset = centre - matrix @ centre + shift_vox
    return np.stack([ndimage.affine_transform(m, matrix, offset, order=1, mode="constant") for m in maps])


def _smooth_noise(shape: tuple[int, ...], spacing: np.ndarray, correlation_mm: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Zero-mean unit-variance Gaussian random field with roughly the given correlation length (mm).

    White noise on a grid about a third of the correlation length, Gaussian-blurred there and linearly
    upsampled: smooth, isotropic in mm, and cheap at full resolution.
    """
    factor = np.maximum(1, np.floor(correlation_mm / (3 * spacing))).astype(int)
    coarse = [max(2, int(math.ceil(n / f))) for n, f in zip(shape, factor)]
    noise = ndimage.gaussian_filter(rng.standard_normal(coarse), correlation_mm / (2 * spacing * factor),
                                    mode="wrap")
    field_ = ndimage.zoom(noise, np.array(shape) / np.array(coarse), order=1, grid_mode=True, mode="nearest")
    field_ = field_[: shape[0], : shape[1], : shape[2]]
    return ((field_ - field_.mean()) / (field_.std() + 1e-6)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Subjects
# ----------------------------------------------------------------------------------------------------


def _draw_profile(site: SiteProfile, rng: np.random.Generator) -> dict[str, int]:
    grade = int(rng.choice(3, p=np.array(site.grade_mix) / sum(site.grade_mix)))
    idh = int(rng.random() < site.idh_mutant[grade])
    codeletion = int(idh == 1 and grade < 2 and rng.random() < site.codeletion_given_idh)
    mgmt = int(rng.random() < (0.85 if idh else site.mgmt_methylated))
    return {"idh": idh, "codeletion": codeletion, "mgmt": mgmt, "grade": grade}


def _phenotype(truth: dict[str, int], difficulty: float, rng: np.random.Generator) -> dict[str, float]:
    """Image cues of a subject; atypical subjects borrow another profile's cues."""
    shown = dict(truth)
    if rng.random() < 0.05 + 0.3 * difficulty:  # atypical presentation
        shown["grade"] = int(np.clip(shown["grade"] + rng.choice([-1, 1]), 0, 2))
    if rng.random() < 0.03 + 0.2 * difficulty:
        shown["idh"] = 1 - shown["idh"]
        shown["codeletion"] = 0
    strength = float(np.clip(rng.normal(1.5 - difficulty, 0.15 + 0.2 * difficulty), 0.1, 2.0))
    grade, idh, codel = shown["grade"], shown["idh"], shown["codeletion"]
    mgmt_cue = (0.12 * (1.2 - difficulty)) if truth["mgmt"] else 0.0
    return {
        "radius_mm": float(rng.uniform(*[(12, 20), (15, 24), (16, 27)][grade])),
        "oedema_mm": float(rng.uniform(*[(1, 6), (5, 14), (10, 26)][grade]) * (1 - mgmt_cue)
                           * (0.6 if idh else 1.0)),
        "ring": float(grade == 2) * strength,
        "patchy": float(grade == 1) * strength,
        "mismatch": float(idh and not codel) * strength,
        "calcification": float(bool(codel)) * strength,
        "margin_mm": 2.5 * strength if codel else 0.8,
        "cortical": float(bool(codel)),
        "frontal": float(bool(idh)),
        "texture": (0.05 if idh else 0.12) * (1 - mgmt_cue * 2),
    }


def _place_tumour(maps: np.ndarray, spacing: np.ndarray, pheno: dict[str, float],
                  rng: np.random.Generator) -> np.ndarray:
    """Tumour centre (voxel) respecting depth (cortical or deep) and lobe preferences."""
    brain = maps.sum(0) > 0.5
    depth = ndimage.distance_transform_edt(brain, sampling=spacing)
    radius = pheno["radius_mm"]
    if pheno["cortical"]:
        allowed = (depth > 0.5 * radius) & (depth < 1.0 * radius) & (maps[1] > 0.3)
    else:
        allowed = (depth > radius + 4) & (maps[0] > 0.4)
    if not allowed.any():
        allowed = depth >= np.percentile(depth[brain], 90)
    candidates = np.argwhere(allowed)
    weights = np.ones(len(candidates))
    if pheno["frontal"]:  # anterior third (RAS: +y anterior)
        weights += 3.0 * (candidates[:, 1] > 0.6 * maps.shape[2])
    return candidates[rng.choice(len(candidates), p=weights / weights.sum())]


def _tumour_regions(maps: np.ndarray, spacing: np.ndarray, pheno: dict[str, float],
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    shape = maps.shape[1:]
    centre = _place_tumour(maps, spacing, pheno, rng)
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing)], indexing="ij")
    axes = rng.uniform(0.75, 1.25, 3)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    rotated = [sum(q[i, j] * grids[j] for j in range(3)) / axes[i] for i in range(3)]
    r = np.sqrt(sum(g**2 for g in rotated)).astype(np.float32) / pheno["radius_mm"]
    brain = maps.sum(0) > 0.5
    tissue = (maps[0] + maps[1]) > 0.35
    core = (r + 0.22 * _smooth_noise(shape, spacing, 12, rng) < 1.0) & brain
    if core.sum() < 8:  # guarantee a visible lesion at the coarsest presets
        core = (r < 1.0) & brain
    ratio = 1.0 + pheno["oedema_mm"] / pheno["radius_mm"]
    oedema = (r + 0.3 * _smooth_noise(shape, spacing, 15, rng) < ratio) & brain & tissue & ~core
    inside = ndimage.distance_transform_edt(core, sampling=spacing)
    regions = {"oedema": oedema, "core": core.copy(), "necrosis": np.zeros_like(core),
               "enhancing": np.zeros_like(core), "calcification": np.zeros_like(core)}
    if pheno["ring"] > 0:
        rim_mm = rng.uniform(2.5, 5.0) * np.clip(1 + 0.35 * _smooth_noise(shape, spacing, 10, rng), 0.6, None)
        rim_mm = np.maximum(rim_mm, 1.01 * spacing.max())  # at least one voxel thick, also across thick slices
        regions["enhancing"] = core & (inside <= rim_mm)
        regions["necrosis"] = core & ~regions["enhancing"]
        regions["core"][:] = False
    elif pheno["patchy"] > 0:
        blotches = _smooth_noise(shape, spacing, 6, rng)
        threshold = np.quantile(blotches[core], 0.8) if core.any() else np.inf
        regions["enhancing"] = core & (blotches > threshold)
        regions["core"] &= ~regions["enhancing"]
    if pheno["calcification"] > 0 and core.any():
        seeds = np.zeros(shape, np.float32)
        inner = np.argwhere(core)
        for idx in inner[rng.choice(len(inner), size=min(len(inner), int(rng.integers(4, 10))), replace=False)]:
            seeds[tuple(idx)] = 1.0
        blurred = ndimage.gaussian_filter(seeds, 1.2 / spacing)
        regions["calcification"] = (blurred > 0.25 * blurred.max()) & core
    return regions


def _render(maps: np.ndarray, regions: dict[str, np.ndarray], pheno: dict[str, float], spacing: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
    """Noise-free tissue intensities (4, x, y, z) of one subject."""
    shape = maps.shape[1:]
    jitter = lambda values: np.array(values) * rng.normal(1.0, 0.04, 4)  # noqa: E731
    image = sum(maps[i][None] * jitter(_HEALTHY[t])[:, None, None, None]
                for i, t in enumerate(("wm", "gm", "csf")))
    texture = 1 + pheno["texture"] * _smooth_noise(shape, spacing, 5, rng)
    sigma = pheno["margin_mm"] / spacing
    weights = {name: ndimage.gaussian_filter(mask.astype(np.float32), sigma) for name, mask in regions.items()}
    total = np.clip(sum(weights.values()), 0, 1)
    lesion = np.zeros_like(image)
    for name, weight in weights.items():
        values = np.array(_LESION[name], dtype=np.float32)
        if name == "enhancing":
            values[1] = 0.55 + (values[1] - 0.55) * min(1.0, max(pheno["ring"], pheno["patchy"]))
        lesion += weight[None] * values[:, None, None, None]
    if pheno["mismatch"] > 0:  # T2 homogeneously bright, FLAIR core dark with a bright rim
        core = regions["core"]
        inside = ndimage.distance_transform_edt(core, sampling=spacing)
        dark = ndimage.gaussian_filter((core & (inside > 2.5)).astype(np.float32), 0.8 / spacing)
        m = min(1.0, pheno["mismatch"])
        lesion[2] += m * 0.1 * weights["core"]
        lesion[3] -= m * 0.45 * dark
        texture = 1 + (texture - 1) * (1 - 0.7 * m)
    image = image * (1 - total[None]) + lesion * texture[None]
    return np.clip(image, 0, None).astype(np.float32)


def _scanner(image: np.ndarray, brain: np.ndarray, scanner: ScannerProfile, difficulty: float,
             rng: np.random.Generator) -> np.ndarray:
    shape = image.shape[1:]
    coords = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    poly = sum(rng.normal(0, 1) * c for c in coords) + sum(rng.normal(0, 0.5) * c * c for c in coords)
    bias = np.exp(scanner.bias * poly / (np.abs(poly).max() + 1e-6))
    sigma = scanner.noise * (0.5 + difficulty)
    out = np.empty(image.shape, np.int16)
    for c in range(4):
        noisy = np.sqrt((image[c] * bias + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)
        values = (noisy * scanner.gain[c] * rng.normal(1, 0.03) + scanner.offset[c]) * brain
        out[c] = np.clip(np.round(values), 0, np.iinfo(np.int16).max).astype(np.int16)
    return out


def _segmentation(regions: dict[str, np.ndarray]) -> np.ndarray:
    seg = np.zeros(regions["core"].shape, np.uint8)
    seg[regions["oedema"]] = 2
    seg[regions["core"] | regions["necrosis"] | regions["calcification"]] = 1
    seg[regions["enhancing"]] = 4
    return seg


# ----------------------------------------------------------------------------------------------------
# The "morphology" cohort: the same intensities for every marker, cues in shape and texture only
# ----------------------------------------------------------------------------------------------------

#: one intensity table per lesion class (t1, t1ce, t2, flair), whatever the markers
_MORPHOLOGY_LESION = {
    "oedema": (0.62, 0.62, 0.90, 0.95),
    "core": (0.45, 0.47, 0.94, 0.72),       # label 1
    "enhancing": (0.55, 1.50, 0.75, 0.85),  # label 4
}
#: relative texture amplitude inside every lesion class (the class's spread is this x its mean, in every subject)
_MORPHOLOGY_TEXTURE = 0.7
#: texture correlation lengths (mm): along the streaks (a sagittal diagonal), across them in the sagittal plane, and
#: left-right
_STREAK_MM = (48.0, 12.0, 12.0)
#: lesion axes relative to its radius: along the long sagittal diagonal, across it, left-right (volume kept: product 1)
_ELONGATION = (1.4, 1 / 1.4, 1.0)


def _phenotype_morphology(truth: dict[str, int], difficulty: float, rng: np.random.Generator) -> dict[str, float]:
    """Cues of a subject in the ``"morphology"`` cohort. Every cue is a choice between two up-down mirror images
    (z -> -z): a streak or elongation along one sagittal diagonal (y = z, sign +1) or the other (y = -z, sign -1).
    MGMT has none. Sizes are drawn alike for every profile."""
    shown = dict(truth)
    if rng.random() < 0.05 + 0.3 * difficulty:  # atypical presentation, as in the default cohort
        shown["grade"] = int(np.clip(shown["grade"] + rng.choice([-1, 1]), 0, 2))
    if rng.random() < 0.03 + 0.2 * difficulty:
        shown["idh"] = 1 - shown["idh"]
        shown["codeletion"] = 0
    sign = lambda flag: 1.0 if flag else -1.0  # noqa: E731
    return {
        "radius_mm": float(rng.uniform(16, 24)),
        "oedema_mm": float(rng.uniform(5, 14)),
        "enhancing_share": float(rng.uniform(0.2, 0.35)),
        "oedema_streaks": sign(shown["idh"]),                 # IDH: the oedema's texture diagonal
        "core_streaks": sign(shown["grade"] == 2),             # grade IV against II/III: the core's texture diagonal
        # grade III against II: the enhancing part's texture diagonal (grade IV: either, at random)
        "enhancing_streaks": sign(shown["grade"] == 1) if shown["grade"] < 2 else float(rng.choice([-1.0, 1.0])),
        "elongation": sign(shown["codeletion"]),              # 1p/19q: the whole lesion's long diagonal
    }


def _smallest(score: np.ndarray, allowed: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` voxels of ``allowed`` with the smallest ``score`` (a region of a fixed volume)."""
    out = np.zeros(score.shape, bool)
    candidates = np.flatnonzero(allowed)
    if count <= 0 or not len(candidates):
        return out
    chosen = candidates[np.argsort(score.reshape(-1)[candidates], kind="stable")[: min(count, len(candidates))]]
    out.reshape(-1)[chosen] = True
    return out


def _tumour_regions_morphology(maps: np.ndarray, spacing: np.ndarray, pheno: dict[str, float],
                               rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Core, oedema and enhancing regions: an ellipsoidal lesion elongated along a sagittal diagonal
    (``pheno["elongation"]``: +1 along y = z, -1 along y = -z); volumes that do not depend on the markers
    (boundaries moved at a fixed volume); the enhancing part one compact nodule in the core."""
    shape = maps.shape[1:]
    brain = maps.sum(0) > 0.5
    depth = ndimage.distance_transform_edt(brain, sampling=spacing)
    reach = pheno["radius_mm"] * _ELONGATION[0]
    allowed = (depth > reach + 4) & (maps[0] > 0.4)  # deep white matter, for every profile
    if not allowed.any():
        allowed = depth >= np.percentile(depth[brain], 90)
    candidates = np.argwhere(allowed)
    centre = candidates[rng.integers(len(candidates))]
    grids = np.stack(np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing)],
                                 indexing="ij"))
    jitter = np.deg2rad(rng.uniform(-8, 8))
    angle = np.pi / 4 * pheno["elongation"] + jitter
    long_axis = np.array([0.0, np.cos(angle), np.sin(angle)])
    across = np.array([0.0, -np.sin(angle), np.cos(angle)])
    up = np.array([1.0, 0.0, 0.0])  # the third axis: left-right
    scales = np.array(_ELONGATION) * rng.uniform(0.92, 1.08, 3) * pheno["radius_mm"]
    coords = [np.tensordot(axis, grids, axes=1) / scale for axis, scale in zip((long_axis, across, up), scales)]
    r = np.sqrt(sum(c**2 for c in coords)).astype(np.float32)
    tissue = (maps[0] + maps[1]) > 0.35
    n_core = max(8, int(((r < 1.0) & brain).sum()))
    core = _smallest(r + 0.08 * _smooth_noise(shape, spacing, 10, rng), brain, n_core)
    ratio = 1.0 + pheno["oedema_mm"] / pheno["radius_mm"]
    room = brain & tissue & ~core
    oedema = _smallest(r + 0.2 * _smooth_noise(shape, spacing, 8, rng), room,
                       int(((r < ratio) & (r >= 1.0) & brain & tissue).sum()))  # the plain shell's volume
    inner = np.argwhere(core)
    seed = inner[rng.integers(len(inner))]
    offsets = np.meshgrid(*[(np.arange(n) - c) * sp for n, c, sp in zip(shape, seed, spacing)], indexing="ij")
    nodule = _smallest(np.sqrt(sum(g**2 for g in offsets)), core, int(round(pheno["enhancing_share"] * core.sum())))
    return {"oedema": oedema, "core": core & ~nodule, "enhancing": nodule}


def _streaks(shape: tuple[int, ...], spacing: np.ndarray, diagonal: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean Gaussian texture stretched along the sagittal diagonal y = z (``diagonal`` > 0) or y = -z: white
    noise filtered (in Fourier space) by an anisotropic Gaussian, long along that diagonal, short across it and
    left-right. The two textures are up-down mirror images (z -> -z): an in-plane resize sees the same power in
    both (a preprocessing resize cannot tell them apart by their spread)."""
    long_mm, short_mm, side_mm = _STREAK_MM
    direction = np.array([0.0, 1.0, 1.0 if diagonal > 0 else -1.0]) / math.sqrt(2)
    across = np.array([0.0, 1.0, -1.0 if diagonal > 0 else 1.0]) / math.sqrt(2)
    covariance = (long_mm**2 * np.outer(direction, direction) + short_mm**2 * np.outer(across, across)
                  + side_mm**2 * np.outer([1.0, 0.0, 0.0], [1.0, 0.0, 0.0]))
    freqs = np.meshgrid(*[np.fft.fftfreq(n, d=d) for n, d in zip(shape, spacing)], indexing="ij")  # cycles / mm
    quadratic = sum(covariance[i, j] * freqs[i] * freqs[j] for i in range(3) for j in range(3))
    response = np.exp(-2 * math.pi**2 * quadratic)
    field = np.fft.ifftn(np.fft.fftn(rng.standard_normal(shape)) * response).real
    return field.astype(np.float32)


def _render_morphology(maps: np.ndarray, regions: dict[str, np.ndarray], pheno: dict[str, float],
                       spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noise-free intensities: every lesion class gets its one table value times ``1 + a * texture``, its texture
    streaked along the diagonal its cue picks and standardised inside that class (so each class's mean and spread are
    the same in every subject, whatever its markers); sharp class boundaries (no marker-dependent blur)."""
    jitter = lambda values: np.array(values) * rng.normal(1.0, 0.04, 4)  # noqa: E731
    image = sum(maps[i][None] * jitter(_HEALTHY[t])[:, None, None, None]
                for i, t in enumerate(("wm", "gm", "csf")))
    for name, mask in regions.items():
        texture = _streaks(maps.shape[1:], spacing, pheno[f"{name}_streaks"], rng)
        if not mask.any():
            continue
        inside = texture[mask]
        spread = float(inside.std())
        standard = (inside - inside.mean()) / spread if spread > 0 else np.zeros_like(inside)
        values = np.array(_MORPHOLOGY_LESION[name], np.float32)
        image[:, mask] = values[:, None] * (1 + _MORPHOLOGY_TEXTURE * standard)[None]
    return np.clip(image, 0, None).astype(np.float32)


def synthesize_subject(site: SiteProfile, shape: tuple[int, int, int], difficulty: float,
                       seed: int | tuple[int, ...], cues: str = "intensity") -> dict:
    """Generate one subject in memory (RAS voxel order).

    Args:
        site: the subject's :class:`SiteProfile`.
        shape: volume shape (x, y, z).
        difficulty: 0 (strong cues, little noise) .. 1 (weak cues, noisy, many atypical subjects).
        seed: anything :func:`numpy.random.default_rng` takes.
        cues: ``"intensity"`` (default) or ``"morphology"`` (see the module docstring: the markers are drawn from
            :data:`SHARED_MIX` whatever the site, and show in shape and texture only).

    Returns:
        dict with ``images`` int16 (4, x, y, z) in contrast order t1, t1ce, t2, flair; ``seg`` uint8
        (x, y, z) with BraTS values; ``spacing`` (mm); ``truth`` marker codes; ``age``; ``sex``.
    """
    if cues not in CUES:
        raise ConfigError(f"cues {cues!r} is not one of {', '.join(CUES)}.")
    rng = np.random.default_rng(seed)
    template, spacing = _anatomy(tuple(shape))
    maps = _random_warp(template, spacing, rng)
    if cues == "morphology":
        # the anatomy mirrored up-down at random, whatever the markers: the brain is not up-down symmetric, and the
        # cues are up-down mirror choices (so neither choice meets other anatomy on average)
        if rng.random() < 0.5:
            maps = np.ascontiguousarray(maps[:, :, :, ::-1])
        truth = _draw_profile(SHARED_MIX, rng)
        pheno = _phenotype_morphology(truth, difficulty, rng)
        regions = _tumour_regions_morphology(maps, spacing, pheno, rng)
        image = _render_morphology(maps, regions, pheno, spacing, rng)
        empty = np.zeros_like(regions["core"])
        regions = {**regions, "necrosis": empty, "calcification": empty}
    else:
        truth = _draw_profile(site, rng)
        pheno = _phenotype(truth, difficulty, rng)
        regions = _tumour_regions(maps, spacing, pheno, rng)
        image = _render(maps, regions, pheno, spacing, rng)
    brain = (maps.sum(0) > 0.5) | regions["core"]
    mean_age = (40, 46, 62)[truth["grade"]] - 6 * truth["idh"]
    return {
        "images": _scanner(image, brain, site.scanner, difficulty, rng),
        "seg": _segmentation(regions) * brain.astype(np.uint8),
        "spacing": spacing,
        "truth": truth,
        "age": float(np.clip(round(rng.normal(mean_age, 11)), 18, 90)),
        "sex": "M" if rng.random() < (0.6 if truth["grade"] == 2 else 0.55) else "F",
    }


# ----------------------------------------------------------------------------------------------------
# Cohort
# ----------------------------------------------------------------------------------------------------


def _storage_affine(spacing: np.ndarray, shape: tuple[int, int, int], orientation: str) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2 * spacing  # centred on the origin, like MNI space
    if orientation == "LAS":
        affine[0, 0] = -spacing[0]
        affine[0, 3] = -affine[0, 3]
    elif orientation != "RAS":
        raise ConfigError(f"scanner orientation {orientation!r} is not RAS or LAS.")
    return affine


def _site_shape(site: SiteProfile, preset: CohortPreset) -> tuple[int, int, int]:
    lo, hi = _brain_box()
    extent_z = float(hi[2] - lo[2])  # brain height in mm (1 mm template)
    slices = int(round(extent_z / (site.scanner.slice_thickness_mm * preset.thickness_factor)))
    return (*preset.inplane, max(preset.min_slices, slices))


def _write_subject(task: tuple) -> dict:
    site, shape, difficulty, seed, out_dir, subject_id, cues, all_masks = task
    subject = synthesize_subject(site, shape, difficulty, seed, cues)
    affine = _storage_affine(subject["spacing"], shape, site.scanner.orientation)
    flip = site.scanner.orientation == "LAS"
    folder = Path(out_dir) / site.name / subject_id
    folder.mkdir(parents=True, exist_ok=True)
    row = {"subject_id": subject_id, "dataset": "synthetic", "site": site.name}
    volumes = dict(zip(MODALITIES, subject["images"]))
    if site.has_masks or all_masks:
        volumes["seg"] = subject["seg"]
    for key in (*MODALITIES, "seg"):
        if key not in volumes:
            row[key] = ""
            continue
        data = volumes[key][::-1] if flip else volumes[key]
        image = nib.Nifti1Image(np.ascontiguousarray(data), affine)
        image.header.set_xyzt_units("mm")
        path = folder / f"{subject_id}_{key}.nii.gz"
        atomic_write(path, lambda tmp, image=image: nib.save(image, tmp), keep_suffix=True)
        row[key] = str(path)
    rng = np.random.default_rng((*seed, 7))  # label availability, independent of the image draw
    for marker in MARKERS:
        row[marker] = subject["truth"][marker] if rng.random() < site.known[marker] else -1
        row[f"true_{marker}"] = subject["truth"][marker]
    row["age"] = subject["age"] if rng.random() < site.known.get("age", 1.0) else float("nan")
    row["sex"] = subject["sex"]
    return row


def make_cohort(out_dir: str | Path, preset: str = "workshop", seed: int = 0, difficulty: float = 0.5,
                sites: tuple[str, ...] | None = None, cases_per_site: int | None = None, workers: int = 1,
                test_size: float = 0.3, progress: bool = True, verbose: bool = True,
                cues: str = "intensity", all_masks: bool = False) -> pd.DataFrame:
    """Generate the synthetic multi-site cohort and its manifest.

    Args:
        out_dir: destination; receives ``<site>/<subject>/...nii.gz``, ``manifest.csv`` and
            ``truth.csv`` (every subject's hidden true labels, for teaching; never read by training) and
            ``cohort.json`` (the preset, seed, difficulty, cues and subjects per site it was made with; written
            last).
        preset: ``tiny``, ``workshop`` or ``paper`` (:mod:`gliofed.presets`; default ``workshop``).
        seed: reproduces the cohort exactly (default 0).
        difficulty: 0..1, strength of the image cues and noise (default 0.5).
        sites: subset of :data:`SITES` names (default: all five).
        cases_per_site: override the preset's subjects per site.
        workers: processes (default 1); the result does not depend on it.
        test_size: fraction of each site's subjects put in the ``test`` split (default 0.3).
        progress: show a progress bar. verbose: print the summary.
        cues: ``"intensity"`` (default) or ``"morphology"``: the harder cohort, whose markers keep every lesion
            class's intensity mean and spread and show in shape and texture only, at a prevalence shared by all
            sites (see the module docstring).
        all_masks: write every subject's mask, also at sites that distribute none (REMBRANDT): for a test
            cohort scored on every case (default False).

    Returns:
        the manifest (memory encoding), also written to ``out_dir/manifest.csv``.
    """
    if not 0.0 <= difficulty <= 1.0:
        raise ConfigError(f"difficulty {difficulty} is outside 0..1.")
    if cues not in CUES:
        raise ConfigError(f"cues {cues!r} is not one of {', '.join(CUES)}.")
    chosen = [s for s in SITES if sites is None or s.name in sites]
    unknown = set(sites or ()) - {s.name for s in SITES}
    if unknown:
        raise ConfigError(f"unknown site(s) {', '.join(sorted(unknown))}; choose from "
                          f"{', '.join(s.name for s in SITES)}.")
    config = get_preset(preset).cohort
    if cases_per_site is not None:
        config = replace(config, cases_per_site=cases_per_site)
    out_dir = Path(out_dir)
    # a cohort.json left by an earlier cohort in this folder must not outlive it if this run stops half-way
    (out_dir / COHORT_FILE).unlink(missing_ok=True)
    tasks = []
    for site_index, site in enumerate(SITES):
        if site not in chosen:
            continue
        n = config.cases_per_site or site.n_cases
        shape = _site_shape(site, config)
        for i in range(n):
            tasks.append((site, shape, difficulty, (seed, site_index, i), str(out_dir), f"{site.name}_{i + 1:04d}",
                          cues, all_masks))
    start = time.perf_counter()
    rows = process_map(_write_subject, tasks, workers, desc=f"synth {preset}", unit="subject", progress=progress,
                       chunksize=2)
    table = pd.DataFrame(rows)
    truth = table[["subject_id", "site"] + [f"true_{m}" for m in MARKERS]]
    manifest = table.drop(columns=[f"true_{m}" for m in MARKERS])
    manifest["split"] = assign_splits(manifest, test_size=test_size, seed=seed)
    write_manifest(manifest, out_dir / "manifest.csv")
    write_csv(out_dir / "truth.csv", truth)
    # the recipe this cohort was made for: `gliofed train` follows it when --preset is not given
    record = {"preset": preset, "seed": seed, "difficulty": difficulty, "cues": cues, "all_masks": all_masks,
              "subjects_per_site": {str(k): int(v) for k, v in manifest.groupby("site").size().items()}}
    atomic_write_text(out_dir / COHORT_FILE, to_json(record, indent=1) + "\n")  # last: the cohort is complete
    if verbose:
        print(f"{len(manifest)} subjects written to {out_dir} in {time.perf_counter() - start:.1f} s "
              f"(preset {preset}, seed {seed}, difficulty {difficulty}, cues {cues}).")
        print(site_heterogeneity(manifest).to_string())
    return manifest
