import pandas as pd
import pytest

from gliofed.data.manifest import COLUMNS, read_manifest, write_manifest
from gliofed.errors import ManifestError


def test_read_resolves_paths_and_encodes_unknown_as_minus_one(small_manifest):
    df = read_manifest(small_manifest)
    assert list(df.columns) == [*COLUMNS, "seg_regions", "label_convention"] and set(df["seg_regions"]) == {""}
    assert set(df["label_convention"]) == {"brats"}  # blank: BraTS 2017-2021 labels
    assert df.loc[0, "t1"] == str((small_manifest.parent / "s1" / "s1_t1.nii.gz").resolve())
    assert df.loc[1, "idh"] == -1 and df.loc[1, "codeletion"] == -1 and df.loc[1, "grade"] == 2
    assert pd.isna(df.loc[1, "age"]) and df.loc[0, "age"] == 44.0


def test_write_then_read_round_trips_with_relative_paths(small_manifest, tmp_path):
    df = read_manifest(small_manifest)
    out = write_manifest(df, tmp_path / "copy.csv")
    raw = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert raw.loc[0, "t1"] == "s1/s1_t1.nii.gz"
    assert raw.loc[1, "idh"] == ""
    again = read_manifest(out)
    pd.testing.assert_frame_equal(again.drop(columns=[]), df, check_like=True)


def test_invalid_label_raises_naming_subject_and_value(small_manifest):
    raw = pd.read_csv(small_manifest, dtype=str, keep_default_na=False)
    raw.loc[1, "grade"] = "4"
    raw.to_csv(small_manifest, index=False)
    with pytest.raises(ManifestError, match=r"subject s2: grade value '4' is not one of 0, 1, 2 or blank"):
        read_manifest(small_manifest)


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "m.csv"
    pd.DataFrame({"subject_id": ["a"]}).to_csv(path, index=False)
    with pytest.raises(ManifestError, match="lacks the column"):
        read_manifest(path)


def test_missing_manifest_file_is_named(tmp_path):
    with pytest.raises(ManifestError, match="nope.csv: manifest file not found"):
        read_manifest(tmp_path / "nope.csv")
