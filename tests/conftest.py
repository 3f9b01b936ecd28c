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


@pytest.fixture(scope="session")
def tiny_run(tiny_cache, tmp_path_factory) -> Path:
    """A small model (features 4-8-16-32, t1 + t2) trained for one centralized round on the tiny cache, saved as a run
    folder by :func:`gliofed.experiments.train_and_save`; treat as read-only."""
    from gliofed.experiments import train_and_save
    from gliofed.presets import train_preset

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    config = train_preset("tiny", modalities=("t1", "t2"), model={"features": (4, 8, 16, 32), "hidden": 8},
                          device="cpu")
    train_and_save(run, tiny_cache, "centralized", config, 1, progress=False)
    return run


@pytest.fixture(scope="session")
def tiny_fedavg_run(tiny_cache, tmp_path_factory) -> Path:
    """A FedAvg run folder on the tiny cache: 1 round of a small network, saved by ``train_and_save`` with F1-optimal
    thresholds (model.json, history, test predictions); treat as read-only."""
    from gliofed.experiments import train_and_save
    from gliofed.presets import train_preset

    out = tmp_path_factory.mktemp("tiny_run") / "fedavg"
    config = train_preset("tiny", seed=0, device="cpu", model={"features": (4, 8, 16, 32), "hidden": 8})
    train_and_save(out, tiny_cache, "fedavg", config, 1, progress=False, threshold_method="f1")
    return out


#: the shared loopback federation's SuperNodes and their node configs (both on the CPU): brats21 under the default
#: policy, upenn's operator opted in to the teaching settings (real-patient initialisation allowed, flagged sets sent,
#: any scale, summaries and metrics of a single case: each tiny site holds out one case)
LOOPBACK_NODES = {"brats21": {"device": "cpu"},
                  "upenn": {"device": "cpu", "policy-allow-real-init": True, "policy-refuse-flagged": False,
                            "policy-min-scale": 1, "policy-min-group": 1}}


@pytest.fixture(scope="session")
def loopback(tiny_cache, tmp_path_factory):
    """One Flower federation on 127.0.0.1 for the whole session (a SuperLink and one SuperNode per site of
    :data:`LOOPBACK_NODES`, over the tiny cache): starting one costs about as much as a tiny run, so the Flower tests
    share it. A test that stops a node starts it again (:func:`restart_node`)."""
    pytest.importorskip("flwr")
    from gliofed.federated.flower.launcher import LocalFederation

    os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    with LocalFederation(Path(__file__).resolve().parents[1], tmp_path_factory.mktemp("loopback")) as federation:
        for site, node_config in LOOPBACK_NODES.items():
            federation.add_site(site, cache=tiny_cache, node_config=node_config)
        yield federation
    assert not federation.processes


def restart_node(federation, site: str, cache: Path) -> None:
    """Start ``site``'s SuperNode of the shared federation again (after a test stopped it)."""
    if f"supernode-{site}" not in federation.processes:
        federation.add_site(site, cache=cache, node_config=LOOPBACK_NODES[site])


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


def _is_browser_report(report) -> bool:
    location = getattr(report, "location", None) or ("",)
    path = str(getattr(report, "nodeid", "") or location[0] or "").split("::")[0].replace("\\", "/")
    return path == "tests/viz/test_browser.py" or path.endswith("/tests/viz/test_browser.py")


def browser_summary(stats: dict) -> str | None:
    """The summary line for the real-browser test from pytest's report lists, or None when it was not selected.
    Every phase counts: a failing fixture (JupyterLab did not start), a collection error and a failing teardown
    are failures, not silence."""
    outcome: dict[str, tuple[str, object]] = {}
    for key in ("passed", "failed", "error", "skipped"):
        for report in stats.get(key, []):
            if not _is_browser_report(report):
                continue
            state = "failed" if key in ("failed", "error") or getattr(report, "failed", False) else (
                "skipped" if key == "skipped" else "passed")
            rank = {"passed": 0, "skipped": 1, "failed": 2}
            node = getattr(report, "nodeid", "") or "collection"
            if node not in outcome or rank[state] > rank[outcome[node][0]]:
                outcome[node] = (state, getattr(report, "longrepr", None))
    if not outcome:
        return None
    failed = sum(1 for state, _ in outcome.values() if state == "failed")
    ran = sum(1 for state, _ in outcome.values() if state != "skipped")
    if ran:
        return f"browser test (JupyterLab + Chromium): ran {ran} checks, {failed} failed or errored"
    longrepr = next(iter(outcome.values()))[1]
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return f"browser test (JupyterLab + Chromium): SKIPPED — {reason.removeprefix('Skipped: ')}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line in every run's summary (and so in CI's log) saying whether the real-browser test ran or skipped."""
    line = browser_summary(terminalreporter.stats)
    if line:
        terminalreporter.write_line(line)
