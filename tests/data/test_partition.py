"""Sites from one dataset: FeTS partitioning CSVs (`curate --partition`) and the institution in BraTS 2017-2020
subject IDs; the curation report shows cases per site and per label."""

import pandas as pd
import pytest

from gliofed.cli import main
from gliofed.data.check import check_manifest
from gliofed.data.sources import curate
from gliofed.data.sources.brats import institution_of
from gliofed.errors import DataError
from tests.data import source_fixtures as fx


@pytest.mark.parametrize("subject,institution", [
    ("Brats18_TCIA02_135_1", "TCIA02"), ("Brats18_CBICA_AAB_1", "CBICA"), ("Brats18_2013_2_1", "2013"),
    ("BraTS19_TMC_06290_1", "TMC"), ("Brats17_TCIA_105_1", "TCIA"), ("BraTS20_Training_001", None),
    ("BraTS2021_00000", None), ("BraTS-GLI-00000-000", None),
])
def test_brats_2017_to_2020_ids_name_their_institution(subject, institution):
    assert institution_of(subject) == institution


def test_without_a_partition_file_brats_ids_give_the_sites(tmp_path):
    root = tmp_path / "b18"
    for case in ("Brats18_TCIA02_135_1", "Brats18_TCIA02_300_1", "Brats18_CBICA_AAB_1", "Brats18_2013_2_1"):
        fx.brats_case(root, case)
    result = curate("brats", root, progress=False)
    assert {c.subject_id: c.site for c in result.included} == {
        "Brats18_TCIA02_135_1": "TCIA02", "Brats18_TCIA02_300_1": "TCIA02", "Brats18_CBICA_AAB_1": "CBICA",
        "Brats18_2013_2_1": "2013"}
    manifest, _ = result.write(tmp_path / "b18.csv")
    assert check_manifest(manifest, progress=False).ok  # "2013" is a valid site name


def test_site_flag_still_names_one_site(tmp_path):
    result = curate("brats", fx.make_brats(tmp_path / "b18"), site="upenn", progress=False)
    assert {c.site for c in result.included} == {"upenn"}


def test_partition_file_makes_the_listed_sites_and_lists_the_rest(tmp_path):
    root, partition = fx.make_fets(tmp_path / "fets")
    result = curate("brats", root, partition=partition, progress=False)
    assert {c.subject_id: c.site for c in result.included} == {
        "FeTS21_Training_001": "partition_1", "FeTS21_Training_002": "partition_1",
        "FeTS21_Training_003": "partition_2", "FeTS21_Training_004": "partition_2"}
    report = result.report.set_index("subject_id")
    assert report.loc["FeTS21_Training_005", "reason"] == "not listed in the partition file partitioning_1.csv"
    assert "1 subject(s) listed in partitioning_1.csv were not found" in str(result)
    assert "FeTS21_Training_099" in str(result)


def test_curation_report_shows_cases_per_site_and_label(tmp_path):
    root, partition = fx.make_fets(tmp_path / "fets")
    result = curate("brats", root, partition=partition, progress=False)
    table = result.site_counts()
    assert table.loc["partition_1", "cases"] == 2 and table.loc["partition_2", "mask"] == 2
    assert table.loc["partition_1", "idh"] == 0  # BraTS records no markers: none known
    text = str(result)
    assert "cases per site" in text and "partition_2" in text and "labels of the included cases" in text
    _, report = result.write(tmp_path / "fets.csv")
    assert set(pd.read_csv(report, dtype=str, keep_default_na=False)["site"]) == {"partition_1", "partition_2", "brats"}


def test_cli_curate_with_a_partition_file(tmp_path, capsys):
    root, partition = fx.make_fets(tmp_path / "fets")
    out = tmp_path / "fets.csv"
    assert main(["curate", "--source", "brats", "--root", str(root), "--partition", str(partition),
                 "--out", str(out)]) == 0
    assert set(pd.read_csv(out)["site"]) == {"partition_1", "partition_2"}
    assert "excluded FeTS21_Training_005: not listed in the partition file" in capsys.readouterr().out


def test_partition_file_errors_are_one_sentence_before_the_walk(tmp_path, capsys):
    root, partition = fx.make_fets(tmp_path / "fets")
    table = pd.read_csv(partition, dtype=str)
    pd.concat([table, pd.DataFrame({"Partition_ID": ["3"], "Subject_ID": ["FeTS21_Training_001"]})]).to_csv(
        partition, index=False)
    with pytest.raises(DataError, match=r"row 7: subject FeTS21_Training_001 is listed in two partitions "
                                        r"\(partition_1 and partition_3\)"):
        curate("brats", root, partition=partition, progress=False)
    table.rename(columns={"Partition_ID": "Institution"}).to_csv(partition, index=False)
    with pytest.raises(DataError, match="no column 'Partition_ID'"):
        curate("brats", root, partition=partition, progress=False)
    assert main(["curate", "--source", "brats", "--root", str(root), "--partition", str(tmp_path / "none.csv"),
                 "--out", str(tmp_path / "x.csv")]) == 2
    assert "none.csv: partition file not found." in capsys.readouterr().err
    with pytest.raises(DataError, match="--site and --partition both name the sites"):
        curate("brats", root, site="x", partition=partition, progress=False)
