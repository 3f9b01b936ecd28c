"""BraTS: any ``<case>/<case>_<modality>.nii.gz`` tree (2017-2021 naming, FeTS), any
``<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` tree (BraTS 2023+ naming), and BraTS 2021 with the RSNA MGMT labels and
the TCIA mapping file."""

from __future__ import annotations

import re
from pathlib import Path

from gliofed.data.conventions import FILE_SUFFIXES
from gliofed.data.sources.common import (
    CuratedCase,
    check_files,
    encode,
    find_column,
    read_table,
)

__all__ = ["curate_brats", "curate_brats2021", "RSNA_PROBLEM_CASES", "institution_of"]

_SEPARATOR = {"brats": "_", "brats2023": "-"}
#: BraTS 2023+ case IDs start with their task: BraTS-GLI-00000-000, BraTS-MEN-..., BraTS-PED-...
_RELEASE = re.compile(r"^(BraTS-[A-Za-z]+)-\d")
#: BraTS 2017-2020 subject IDs name the contributing institution: Brats18_2013_..., Brats18_CBICA_...,
#: Brats18_TCIA02_..., BraTS19_TMC_... (``Brats17_TCIA_...`` in 2017, before the TCIA collections were numbered)
_INSTITUTION = re.compile(r"^brats(?:17|18|19|20)_(2013|CBICA|TMC|TCIA\d*)_", re.IGNORECASE)
#: RSNA-MICCAI MGMT cases reported as problematic by the challenge organisers: their MGMT label is not used
RSNA_PROBLEM_CASES = ("00109", "00123", "00709")
#: patient IDs of the collections BraTS 2021 overlaps with (found anywhere in a mapping-file row)
ALIAS_PATTERNS = (re.compile(r"TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}"), re.compile(r"UPENN-GBM-\d{5}"),
                  re.compile(r"UCSF-PDGM-\d{3,4}"))


def institution_of(subject_id: str) -> str | None:
    """The contributing institution that a BraTS 2017-2020 subject ID names, or None.

    >>> institution_of("Brats18_TCIA02_135_1"), institution_of("BraTS19_CBICA_AAB_1")
    ('TCIA02', 'CBICA')
    >>> institution_of("Brats18_2013_2_1")
    '2013'

    >>> institution_of("BraTS2021_00000") is None
    True
    """
    match = _INSTITUTION.match(subject_id)
    return match.group(1).upper() if match else None


def _case_folders(root: Path) -> dict[Path, str]:
    """Folders ``X`` holding at least one ``X_<contrast>.nii.gz`` or ``X-<contrast>.nii.gz`` (any depth) -> their
    naming (``brats`` or ``brats2023``), sorted by path."""
    found: dict[Path, str] = {}
    for path in root.rglob("*.nii*"):
        folder, name = path.parent, path.name.lower()
        for naming, suffixes in FILE_SUFFIXES.items():
            stem = f"{folder.name.lower()}{_SEPARATOR[naming]}"
            if any(name in (f"{stem}{s}.nii.gz", f"{stem}{s}.nii") for s in suffixes.values()):
                found.setdefault(folder, naming)
    return dict(sorted(found.items()))


def curate_brats(root: str | Path, dataset: str | None = "brats", site: str | None = None) -> list[CuratedCase]:
    """Every case folder of a BraTS-style tree, in either naming; other files in a case folder (predictions, extra
    masks) are ignored.

    Args:
        root: the download folder.
        dataset: the manifest's dataset name; None: ``brats`` for the 2017-2021 naming, the ID's prefix for the
            2023+ naming (``BraTS-GLI-00000-000`` -> ``brats-gli``).
        site: every case's site; None: the institution a BraTS 2017-2020 ID names (:func:`institution_of`), else the
            dataset name.

    Returns:
        the cases, each with ``label_convention`` set from its file names (``brats`` or ``brats2023``; confirmed
        from the masks by :func:`~gliofed.data.sources.common.settle_label_convention`).
    """
    cases = []
    for folder, naming in _case_folders(Path(root)).items():
        name = dataset
        if name is None:
            release = _RELEASE.match(folder.name)
            name = release.group(1).lower() if release and naming == "brats2023" else "brats"
        case = CuratedCase(folder.name, name, site or institution_of(folder.name) or name, source_id=folder.name,
                           label_convention=naming)
        for key, suffix in FILE_SUFFIXES[naming].items():
            for ext in (".nii.gz", ".nii"):
                candidate = folder / f"{folder.name}{_SEPARATOR[naming]}{suffix}{ext}"
                if candidate.is_file():
                    case.paths[key] = str(candidate)
                    break
        check_files(case)
        cases.append(case)
    return cases


def normalise_brats21_id(value: object) -> str | None:
    """``109``, ``00109``, ``BraTS2021_00109`` -> ``BraTS2021_00109`` (RSNA reads IDs as integers)."""
    match = re.search(r"(\d+)(?:\.0)?$", str(value).strip())
    return f"BraTS2021_{int(match.group(1)):05d}" if match else None


def curate_brats2021(root: str | Path, labels: list[str] | None = None, site: str | None = None) -> list[CuratedCase]:
    """BraTS 2021 Task 1 (release or TCIA layout). ``labels``: the RSNA ``train_labels.csv`` (``BraTS21ID``,
    ``MGMT_value``) and/or ``BraTS2021_MappingToTCIA.xlsx`` (collection and source patient IDs), recognised by
    their columns."""
    cases = curate_brats(root, "brats2021", site)
    by_id = {c.subject_id: c for c in cases}
    for path in labels or []:
        table = read_table(path)
        mgmt_column = find_column(table, "MGMT_value", required=False)
        if mgmt_column is not None:
            id_column = find_column(table, "BraTS21ID", "BraTS21 ID", path=path)
            for _, row in table.iterrows():
                case = by_id.get(normalise_brats21_id(row[id_column]) or "")
                if case is None:
                    continue
                if case.subject_id.split("_")[-1] in RSNA_PROBLEM_CASES:
                    case.notes.append("RSNA MGMT case known to be problematic: MGMT label not used")
                    continue
                case.labels["mgmt"] = encode("mgmt", row[mgmt_column], case)
            continue
        id_column = find_column(table, "BraTS2021 ID", "BraTS2021", path=path)
        collection = find_column(table, "Data Collection", path=path, required=False)
        for _, row in table.iterrows():
            case = by_id.get(normalise_brats21_id(row[id_column]) or "")
            if case is None:
                continue
            text = " ".join(str(v) for v in row.to_numpy())
            for pattern in ALIAS_PATTERNS:
                case.aliases.update(_canonical_alias(m) for m in pattern.findall(text))
            if collection and str(row[collection]).strip():
                case.notes.append(f"collection {str(row[collection]).strip()}")
    return cases


def _canonical_alias(patient: str) -> str:
    """UCSF-PDGM IDs come with 3 or 4 digits: compare them as 4."""
    match = re.fullmatch(r"UCSF-PDGM-(\d+)", patient)
    return f"UCSF-PDGM-{int(match.group(1)):04d}" if match else patient
