import filecmp
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from gliofed.data.manifest import read_manifest
from gliofed.data.synth import SITES, make_cohort, synthesize_subject
from gliofed.errors import ConfigError

SITE = {s.name: s for s in SITES}


def test_layout_and_manifest(tiny_cohort):
    manifest = read_manifest(tiny_cohort / "manifest.csv")
    assert len(manifest) == 20 and manifest["site"].nunique() == 5
    row = manifest.iloc[0]
    for key in ("t1", "t1ce", "t2", "flair", "seg"):
        assert row[key].endswith(f"{row['site']}/{row['subject_id']}/{row['subject_id']}_{key}.nii.gz")
    seg = np.asarray(nib.load(row["seg"]).dataobj)
    assert set(np.unique(seg)) <= {0, 1, 2, 4} and seg.dtype == np.uint8
    assert nib.load(row["t1"]).get_data_dtype() == np.int16
    assert set(manifest["split"]) == {"train", "test"}


def test_site_without_masks_and_missing_labels(tiny_cohort):
    manifest = read_manifest(tiny_cohort / "manifest.csv")
    rembrandt = manifest[manifest["site"] == "rembrandt"]
    assert (rembrandt["seg"] == "").all()
    assert (rembrandt["idh"] == -1).all() and (rembrandt["mgmt"] == -1).all()
    tcga_gbm = manifest[manifest["site"] == "tcga_gbm"]
    assert (tcga_gbm["grade"] == -1).all() and (tcga_gbm["mgmt"] == -1).all()


def test_same_seed_same_files_other_seed_differs(tmp_path):
    kwargs = dict(preset="tiny", sites=("tcga_lgg",), cases_per_site=2, progress=False, verbose=False)
    make_cohort(tmp_path / "a", seed=3, **kwargs)
    make_cohort(tmp_path / "b", seed=3, workers=2, **kwargs)
    make_cohort(tmp_path / "c", seed=4, **kwargs)
    name = "tcga_lgg/tcga_lgg_0001/tcga_lgg_0001_flair.nii.gz"
    a, b, c = (np.asarray(nib.load(tmp_path / d / name).dataobj) for d in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert filecmp.cmp(tmp_path / "a" / "manifest.csv", tmp_path / "b" / "manifest.csv", shallow=False)
    record = json.loads((tmp_path / "a" / "cohort.json").read_text())
    assert record["preset"] == "tiny" and record["seed"] == 3 and record["subjects_per_site"] == {"tcga_lgg": 2}


def test_a_failed_cohort_run_leaves_no_stale_cohort_file(tmp_path, monkeypatch):
    import gliofed.data.synth as synth

    folder = tmp_path / "cohort"
    folder.mkdir()
    (folder / "cohort.json").write_text('{"preset": "paper"}')

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(synth, "process_map", broken)
    with pytest.raises(OSError, match="disk full"):
        make_cohort(folder, preset="tiny", sites=("tcga_lgg",), cases_per_site=2, progress=False, verbose=False)
    assert not (folder / "cohort.json").exists()  # train will not follow the old cohort's preset


def test_codeletion_only_in_idh_mutant_and_lgg_site_is_lower_grade():
    rows = [synthesize_subject(SITE["tcga_lgg"], (24, 28, 8), 0.5, (9, i))["truth"] for i in range(60)]
    truth = pd.DataFrame(rows)
    assert truth["codeletion"].sum() > 0
    assert (truth.loc[truth["codeletion"] == 1, "idh"] == 1).all()
    assert (truth["grade"] < 2).all()


def _subject(site, seed, **overrides):
    from dataclasses import replace

    return synthesize_subject(replace(SITE[site], **overrides), (64, 72, 24), 0.2, seed)


def test_grade_iv_has_ring_enhancement_around_necrosis_grade_ii_none():
    gbm = _subject("brats21", (1, 1), grade_mix=(0, 0, 1), idh_mutant=(0, 0, 0))
    lgg = _subject("tcga_lgg", (1, 2), grade_mix=(1, 0, 0))
    assert (gbm["seg"] == 4).sum() > 0 and (gbm["seg"] == 1).sum() > 0
    necrosis = gbm["seg"] == 1
    # the enhancing rim encloses the necrosis: dilating the necrosis mostly lands in enhancing tumour
    shell = ndimage.binary_dilation(necrosis) & ~necrosis
    assert (gbm["seg"][shell] == 4).mean() > 0.5
    assert (lgg["seg"] == 4).sum() == 0


def test_t1ce_enhancement_is_brighter_than_t1_in_enhancing_voxels():
    gbm = _subject("brats21", (2, 1), grade_mix=(0, 0, 1))
    enhancing = gbm["seg"] == 4
    t1, t1ce = gbm["images"][0].astype(float), gbm["images"][1].astype(float)
    white = t1ce[t1 > np.percentile(t1[t1 > 0], 80)].mean() / t1[t1 > np.percentile(t1[t1 > 0], 80)].mean()
    assert (t1ce[enhancing] / np.maximum(t1[enhancing], 1)).mean() > 1.5 * white


def test_t2_flair_mismatch_in_idh_mutant_intact_tumours():
    def flair_t2_ratio(**profile):
        ratios = []
        for i in range(6):
            s = _subject("tcga_lgg", (3, i), grade_mix=(1, 0, 0), **profile)
            core = s["seg"] == 1
            t2, flair = s["images"][2].astype(float), s["images"][3].astype(float)
            wm = (s["images"][0] > np.percentile(s["images"][0], 95))
            ratios.append((flair[core].mean() / flair[wm].mean()) / (t2[core].mean() / t2[wm].mean()))
        return np.median(ratios)

    mismatch = flair_t2_ratio(idh_mutant=(1, 1, 0), codeletion_given_idh=0.0)
    wildtype = flair_t2_ratio(idh_mutant=(0, 0, 0))
    assert mismatch < 0.8 * wildtype


def test_paper_preset_uses_the_seed_site_sizes():
    assert sum(s.n_cases for s in SITES) == 1552


def test_bad_arguments_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        make_cohort(tmp_path, preset="huge")
    with pytest.raises(ConfigError, match="unknown site"):
        make_cohort(tmp_path, preset="tiny", sites=("mars",))
    with pytest.raises(ConfigError, match="difficulty 2"):
        make_cohort(tmp_path, preset="tiny", difficulty=2)


# ----------------------------------------------------------------------------------------------------
# The "morphology" cohort: markers in shape and texture only, prevalence shared by the sites
# ----------------------------------------------------------------------------------------------------

_CLASS_CODES = (0, 1, 2, 4)  # BraTS values: background brain, core, oedema, enhancing


def _class_summaries(cues: str, n: int = 100, shape=(32, 36, 10)) -> pd.DataFrame:
    """Per subject: true markers and, per lesion class and contrast, the voxel mean and spread after z-scoring the
    brain (as preprocessing does)."""
    rows = []
    for i in range(n):
        subject = synthesize_subject(SITES[i % len(SITES)], shape, 0.5, (41, i), cues)
        image, seg = subject["images"].astype(float), subject["seg"]
        brain = image.sum(0) > 0
        z = (image - image[:, brain].mean(1)[:, None, None, None]) / image[:, brain].std(1)[:, None, None, None]
        row = dict(subject["truth"])
        for k in _CLASS_CODES:
            chosen = (seg == k) & brain
            for c in range(4):
                row[f"mean_{k}_{c}"] = z[c][chosen].mean() if chosen.sum() > 1 else np.nan
                row[f"sd_{k}_{c}"] = z[c][chosen].std() if chosen.sum() > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _smallest_p(table: pd.DataFrame) -> tuple[float, int]:
    """Smallest Welch p-value over markers (grade: IV against II/III) and summary columns; number of tests."""
    from scipy import stats

    features = [c for c in table if c.startswith(("mean_", "sd_"))]
    groups = {"idh": table["idh"] == 1, "codeletion": table["codeletion"] == 1, "mgmt": table["mgmt"] == 1,
              "grade": table["grade"] == 2}
    p_values = []
    for chosen in groups.values():
        for feature in features:
            a, b = table.loc[chosen, feature].dropna(), table.loc[~chosen, feature].dropna()
            if len(a) > 2 and len(b) > 2:
                p_values.append(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return float(np.min(p_values)), len(p_values)


def test_morphology_cues_keep_every_lesion_class_intensity_mean_and_spread_equal_between_marker_classes():
    """The harder cohort's markers do not move any tissue class's mean or spread beyond noise (Bonferroni at a
    family-wise 1 % over every marker, class, contrast and statistic: these 128 correlated tests on noisy volumes
    must not fail by chance), whereas the default cohort's do, by far."""
    morphology_p, tests = _smallest_p(_class_summaries("morphology"))
    intensity_p, _ = _smallest_p(_class_summaries("intensity"))
    assert morphology_p > 0.01 / tests
    assert intensity_p < 1e-6


def test_morphology_prevalence_does_not_depend_on_the_site():
    """Every site draws its markers from the shared mix (a chi-square test of independence finds nothing), whereas
    the default cohort's sites differ in grade mix by design."""
    from scipy import stats

    def truths(cues):
        return pd.DataFrame([{"site": site.name, **synthesize_subject(site, (16, 18, 6), 0.5, (5, s, i), cues)["truth"]}
                             for s, site in enumerate(SITES) for i in range(30)])

    shared, default = truths("morphology"), truths("intensity")
    for marker in ("grade", "idh", "codeletion", "mgmt"):
        assert stats.chi2_contingency(pd.crosstab(shared["site"], shared[marker])).pvalue > 0.01
    assert stats.chi2_contingency(pd.crosstab(default["site"], default["grade"])).pvalue < 1e-6


def _morphology_regions(seed: int, **pheno):
    from gliofed.data.synth import _anatomy, _tumour_regions_morphology

    maps, spacing = _anatomy((64, 72, 24))
    base = {"radius_mm": 20.0, "oedema_mm": 8.0, "enhancing_share": 0.3, "elongation": 1.0}
    return _tumour_regions_morphology(maps, spacing, {**base, **pheno}, np.random.default_rng(seed)), spacing


def _long_axis(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    points = np.argwhere(mask) * spacing
    _, vectors = np.linalg.eigh(np.cov((points - points.mean(0)).T))
    return vectors[:, -1]


def test_morphology_1p19q_elongates_the_lesion_along_one_sagittal_diagonal_or_its_mirror_image_at_the_same_volume():
    (plus, spacing), (minus, _) = _morphology_regions(3, elongation=1.0), _morphology_regions(3, elongation=-1.0)
    for regions, sign in ((plus, 1), (minus, -1)):
        axis = _long_axis(regions["core"] | regions["enhancing"], spacing)
        assert sign * axis[1] * axis[2] > 0.35  # along y = z, or along y = -z (up-down mirror images)
        assert abs(axis[0]) < 0.3  # not left-right, which training augmentation flips
    for name in ("core", "oedema", "enhancing"):
        assert plus[name].sum() == pytest.approx(minus[name].sum(), rel=0.08) and plus[name].sum() > 0
    lesion = plus["core"] | plus["enhancing"]
    assert 0.2 <= plus["enhancing"].sum() / lesion.sum() <= 0.35 + 1e-9
    assert ndimage.label(plus["enhancing"])[1] == 1  # the enhancing part: one compact nodule


def test_morphology_textures_differ_in_sagittal_orientation_not_in_power_left_after_an_in_plane_resize():
    from gliofed.data.synth import _streaks

    spacing = np.array([6.0, 4.0, 4.0])  # (x, y, z): the streaks lie in the y-z plane

    def diagonal_correlation(field, sign, lag=3):  # 12 mm along y and 12 * sign mm along z
        a = field[:, :-lag, :-lag] if sign > 0 else field[:, :-lag, lag:]
        b = field[:, lag:, lag:] if sign > 0 else field[:, lag:, :-lag]
        return np.corrcoef(a.ravel(), b.ravel())[0, 1]

    one = _streaks((8, 64, 64), spacing, 1.0, np.random.default_rng(0))
    other = _streaks((8, 64, 64), spacing, -1.0, np.random.default_rng(0))
    assert diagonal_correlation(one, 1) > diagonal_correlation(one, -1) + 0.3
    assert diagonal_correlation(other, -1) > diagonal_correlation(other, 1) + 0.3
    # the same power, also after the in-plane (x-y) down-sampling preprocessing does: mean variance over realisations
    fields = {sign: [_streaks((8, 48, 48), spacing, sign, np.random.default_rng(s)) for s in range(60)]
              for sign in (1.0, -1.0)}

    def block_mean_xy(field, k=4):  # 2 voxels along x and 4 along y averaged, depth (z) kept
        x, y, z = field.shape
        return field.reshape(x // 2, 2, y // k, k, z).mean((1, 3))

    for resize in (lambda f: f, block_mean_xy):
        power = {sign: np.mean([resize(f).var() for f in fields[sign]]) for sign in fields}
        assert power[1.0] == pytest.approx(power[-1.0], rel=0.06)


def test_morphology_anatomy_is_mirrored_up_down_at_random_whatever_the_markers():
    """The brain is not up-down symmetric; the cues are up-down mirror choices. Each subject's anatomy is mirrored
    at random (about half of them), so neither choice of a cue meets other anatomy on average."""
    from gliofed.data.synth import _anatomy

    template = _anatomy((16, 18, 12))[0].sum(0) > 0.5
    profile = template.sum((0, 1))  # brain voxels per axial slice: not symmetric (the brain widens upwards)
    assert not np.allclose(profile, profile[::-1], rtol=0.05)
    mirrored = []
    for i in range(40):
        image = synthesize_subject(SITES[0], (16, 18, 12), 0.5, (9, i), "morphology")["images"][0] > 0
        per_slice = image.sum((0, 1))
        mirrored.append(np.corrcoef(per_slice, profile[::-1])[0, 1] > np.corrcoef(per_slice, profile)[0, 1])
    assert 0.2 < np.mean(mirrored) < 0.8


def test_morphology_cohort_is_recorded_and_a_test_cohort_can_carry_every_mask(tmp_path):
    make_cohort(tmp_path, preset="tiny", seed=1, sites=("rembrandt",), cases_per_site=2, cues="morphology",
                all_masks=True, progress=False, verbose=False)
    record = json.loads((tmp_path / "cohort.json").read_text())
    assert record["cues"] == "morphology" and record["all_masks"] is True
    assert (read_manifest(tmp_path / "manifest.csv")["seg"] != "").all()  # REMBRANDT distributes none otherwise
    with pytest.raises(ConfigError, match="cues 'colour'"):
        make_cohort(tmp_path / "x", preset="tiny", cues="colour")


def test_preprocessing_commutes_with_an_up_down_mirror_so_the_hard_cohorts_cues_leave_class_statistics_alone(tmp_path):
    """The hard cohort's cues are up-down mirror choices. Its claim: preprocessing (orientation, foreground crop,
    in-plane resize, normalisation) maps a subject mirrored up-down to the mirrored preprocessed volume, so every
    per-class mean, spread and fraction is the same for both choices (the lesion centre's height only changes sign).
    Checked on a written case: the case against its own mirror image, through the cache's real pipeline."""
    from gliofed.data.transforms import preprocess_pipeline

    make_cohort(tmp_path / "c", preset="tiny", seed=3, sites=("brats21",), cases_per_site=1, cues="morphology",
                progress=False, verbose=False)
    row = read_manifest(tmp_path / "c" / "manifest.csv").iloc[0]
    keys = ("t1", "t1ce", "t2", "flair", "seg")
    mirrored = {}
    for key in keys:
        image = nib.load(tmp_path / "c" / row[key])
        path = tmp_path / f"mirrored_{key}.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(np.asarray(image.dataobj)[:, :, ::-1]), image.affine,
                                 image.header), path)
        mirrored[key] = str(path)
    pipeline = preprocess_pipeline(24)
    plain = pipeline({"subject_id": "a", **{k: str(tmp_path / "c" / row[k]) for k in keys}})
    flipped = pipeline({"subject_id": "b", **mirrored})
    # cache layout (C, D, H, W): depth is axis 1
    assert np.allclose(np.asarray(flipped["image"]), np.asarray(plain["image"]).copy()[:, ::-1], atol=1e-5)
    assert np.array_equal(np.asarray(flipped["seg"]), np.asarray(plain["seg"]).copy()[:, ::-1])
    assert len(np.unique(np.asarray(plain["seg"]))) == 4  # every class present: the check is not vacuous
