"""Shared fixtures: one tiny synthetic cohort and its cache per test session (seconds), and a helper that
writes small NIfTI cases of deliberately unequal odd shapes."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("TQDM_DISABLE", "1")

ODD_SHAPE = (7, 8, 9)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """The ``tiny`` synthetic cohort (5 sites x 4 subjects), generated once; treat as read-only."""
    from gliofed.data.synth import make_cohort

    folder = tmp_path_factory.mktemp("tiny_cohort")
    make_cohort(folder, preset="tiny", seed=0, progress=False, verbose=False)
    return folder


@pytest.fixture(scope="session")
def tiny_cache(tiny_cohort, tmp_path_factory) -> Path:
    """The tiny cohort preprocessed at 32 x 32 in-plane; treat as read-only."""
    from gliofed.data.cache import preprocess

    cache = tmp_path_factory.mktemp("tiny_cache")
    preprocess(tiny_cohort / "manifest.csv", cache, size=32, progress=False)
    return cache


def write_case(folder: Path, subject: str, shape=ODD_SHAPE, seed: int = 0, seg: bool = True,
               affine: np.ndarray | None = None) -> dict[str, str]:
    """Write one small valid case (four contrasts + seg with labels 0/1/2/4); return manifest path fields."""
    rng = np.random.default_rng(seed)
    affine = np.eye(4) if affine is None else affine
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key in ("t1", "t1ce", "t2", "flair"):
        data = (rng.random(shape) * 100 + 1).astype(np.int16)
        nib.save(nib.Nifti1Image(data, affine), folder / f"{subject}_{key}.nii.gz")
        paths[key] = f"{folder.name}/{subject}_{key}.nii.gz"
    if seg:
        labels = np.zeros(shape, np.uint8)
        labels[2:4, 2:5, 3:6] = rng.choice([1, 2, 4], size=(2, 3, 3))
        nib.save(nib.Nifti1Image(labels, affine), folder / f"{subject}_seg.nii.gz")
        paths["seg"] = f"{folder.name}/{subject}_seg.nii.gz"
    else:
        paths["seg"] = ""
    return paths


def write_manifest_rows(path: Path, rows: list[dict]) -> Path:
    """Write a raw manifest CSV (string cells) from partial rows; missing columns are blank."""
    import pandas as pd

    from gliofed.data.manifest import COLUMNS

    pd.DataFrame([{c: r.get(c, "") for c in COLUMNS} for r in rows], columns=list(COLUMNS)).to_csv(path, index=False)
    return path


@pytest.fixture
def small_manifest(tmp_path) -> Path:
    """A valid two-subject manifest of 7 x 8 x 9 volumes."""
    rows = [
        {"subject_id": "s1", "dataset": "fixture", "site": "a", **write_case(tmp_path / "s1", "s1", seed=1),
         "idh": "1", "codeletion": "0", "mgmt": "1", "grade": "0", "age": "44", "sex": "F", "split": "train"},
        {"subject_id": "s2", "dataset": "fixture", "site": "b", **write_case(tmp_path / "s2", "s2", seed=2),
         "idh": "", "codeletion": "", "mgmt": "0", "grade": "2", "age": "", "sex": "M", "split": "test"},
    ]
    return write_manifest_rows(tmp_path / "manifest.csv", rows)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line in every run's summary (and so in CI's log) saying whether the real-browser test ran or skipped."""
    stats = terminalreporter.stats
    ran = [r for key in ("passed", "failed", "error") for r in stats.get(key, [])
           if "tests/viz/test_browser.py" in getattr(r, "nodeid", "") and r.when == "call"]
    skipped = [r for r in stats.get("skipped", []) if "test_browser.py" in str(getattr(r, "location", ("",))[0])
               or "tests/viz/test_browser.py" in getattr(r, "nodeid", "")]
    if ran:
        failed = sum(1 for r in ran if r.outcome != "passed")
        terminalreporter.write_line(f"browser test (JupyterLab + Chromium): ran {len(ran)} checks, {failed} failed")
    elif skipped:
        reason = skipped[0].longrepr[2] if isinstance(skipped[0].longrepr, tuple) else str(skipped[0].longrepr)
        reason = reason.removeprefix("Skipped: ")
        terminalreporter.write_line(f"browser test (JupyterLab + Chromium): SKIPPED — {reason}")
