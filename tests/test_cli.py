import subprocess
import sys

import numpy as np
import nibabel as nib

from gliofed.cli import main


def test_check_clean_manifest_exits_zero_with_summary(small_manifest, capsys):
    assert main(["check", str(small_manifest)]) == 0
    assert "2 subjects, no problems" in capsys.readouterr().out


def test_check_prints_one_line_per_problem_and_exits_one(small_manifest, capsys):
    (small_manifest.parent / "s1" / "s1_t2.nii.gz").unlink()
    nib.save(nib.Nifti1Image(np.zeros((7, 8, 9), np.int16), np.eye(4)), small_manifest.parent / "s2" / "s2_t1.nii.gz")
    assert main(["check", str(small_manifest)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "s1: s1_t2.nii.gz: file not found" in out
    assert "s2: s2_t1.nii.gz: empty modality (every voxel is 0)" in out


def test_user_error_prints_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "gliofed.cli", "preprocess", str(tmp_path / "missing.csv"),
                             "--cache", str(tmp_path / "c")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"gliofed: error: {tmp_path / 'missing.csv'}: manifest file not found."
    assert "Traceback" not in result.stderr


def test_synth_then_preprocess_from_the_command_line(tmp_path, capsys):
    assert main(["synth", "--preset", "tiny", "--out", str(tmp_path / "c"), "--sites", "tcga_lgg",
                 "--cases-per-site", "2", "--seed", "1"]) == 0
    assert main(["preprocess", str(tmp_path / "c" / "manifest.csv"), "--cache", str(tmp_path / "cache"),
                 "--size", "16"]) == 0
    out = capsys.readouterr().out
    assert "2 subjects written" in out and "2 preprocessed, 0 up to date, 0 skipped" in out
