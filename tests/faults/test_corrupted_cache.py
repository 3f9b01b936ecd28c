"""A damaged cached case reaches training: the simulation stops naming the case (it never drops the site and ends
with exit 0). The cache-level faults (checksums, truncation, re-making by ``preprocess``, lock, mixed settings, a
killed preprocess) are ``tests/data/test_cache_integrity.py``."""

import shutil

import pandas as pd
import pytest

from gliofed.errors import CacheDamagedError
from gliofed.experiments import run_experiment
from tests.federated.helpers import small_config


def _damaged_copy(cache, tmp_path, split="train"):
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    index = pd.read_csv(copy / "index.csv", dtype=str)
    subject = index[(index["site"] == "brats21") & (index["split"] == split)]["subject_id"].iloc[0]
    path = copy / "cases" / f"{subject}.image.npy"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a writer killed half-way (pre-atomic)
    return copy, subject


def test_a_truncated_training_case_stops_the_simulation_naming_it(tiny_cache, tmp_path):
    cache, subject = _damaged_copy(tiny_cache, tmp_path)
    with pytest.raises(CacheDamagedError, match=subject):
        run_experiment(cache, "fedavg", small_config(), rounds=1, progress=False)
