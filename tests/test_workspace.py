"""A notebook's data folder: per user by default, and a synthetic cohort is never reused under another seed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gliofed.errors import ConfigError
from gliofed.workspace import Workspace


def test_the_default_folder_is_per_user_and_per_preset(monkeypatch, tmp_path):
    monkeypatch.delenv("GLIOFED_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "alice"))
    assert Workspace.resolve(None, "tiny").data_dir == tmp_path / "alice" / "gliofed-data" / "tiny"
    monkeypatch.setenv("GLIOFED_DATA", str(tmp_path / "shared"))
    assert Workspace.resolve(None, "workshop").data_dir == tmp_path / "shared" / "workshop"
    assert Workspace.resolve(tmp_path / "mine", "workshop").data_dir == tmp_path / "mine"


@pytest.fixture
def cohort_copy(tiny_cohort, tmp_path) -> Path:
    """A copy of the tiny cohort (seed 0) that a test may edit."""
    return Path(shutil.copytree(tiny_cohort, tmp_path / "data"))


@pytest.mark.parametrize(("preset", "seed", "message"), [("tiny", 1, "seed 0 (asked for 1)"),
                                                         ("workshop", 0, "preset 'tiny' (asked for 'workshop')")])
def test_a_cohort_made_otherwise_is_refused_not_reused(cohort_copy, preset, seed, message):
    with pytest.raises(ConfigError, match="holds a synthetic cohort made with") as error:
        Workspace.resolve(cohort_copy, preset).ensure_cohort(seed=seed)
    assert message in str(error.value)


def test_the_same_cohort_is_reused(cohort_copy, capsys):
    manifest = Workspace.resolve(cohort_copy, "tiny").ensure_cohort(seed=0)
    assert len(manifest) == 20 and "using the existing cohort" in capsys.readouterr().out


def test_your_own_manifest_without_a_cohort_file_is_used_whatever_the_seed(cohort_copy):
    (cohort_copy / "cohort.json").unlink()
    assert len(Workspace.resolve(cohort_copy, "tiny").ensure_cohort(seed=7)) == 20


def test_a_damaged_cohort_file_is_a_one_line_error(cohort_copy):
    (cohort_copy / "cohort.json").write_text("{")
    with pytest.raises(ConfigError, match="cohort.json: not a readable cohort file"):
        Workspace.resolve(cohort_copy, "tiny").ensure_cohort(seed=0)
