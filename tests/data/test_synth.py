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
