"""Dataset adapters (``gliofed curate``): real downloads of the seed study's datasets -> one clean manifest and a
curation report listing every case found, included or excluded with its reason.

>>> result = curate("brats2021", "/data/BraTS2021", labels=["train_labels.csv"])   # doctest: +SKIP
>>> result.write("brats2021.csv")                                                   # doctest: +SKIP
>>> curate("brats", "/data/FeTS2021", partition="partitioning_1.csv")              # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from gliofed.data.conventions import CONVENTIONS, DEFAULT_CONVENTION
from gliofed.data.manifest import COLUMNS, absolute_path, relative_path
from gliofed.data.sources.brats import curate_brats, curate_brats2021
from gliofed.data.sources.common import CuratedCase, settle_label_convention
from gliofed.data.sources.msd import curate_msd
from gliofed.data.sources.others import curate_egd, curate_rembrandt, curate_ucsf
from gliofed.data.sources.partition import apply_partition, read_partition
from gliofed.data.sources.tcga import curate_tcga
from gliofed.data.sources.upenn import curate_upenn
from gliofed.errors import DataError, first_line
from gliofed.fileio import atomic_write, write_csv
from gliofed.vocab import MARKER_CLASSES, MARKERS, MODALITIES

__all__ = ["SOURCES", "EXTRA_COLUMNS", "CurationResult", "curate", "merge_manifests", "CuratedCase"]

#: optional manifest columns written by the adapters: ``seg_regions`` (blank = BraTS classes, ``WT`` =
#: binary whole-tumour mask), ``aliases`` (the patient's IDs in other datasets, ``;``-separated) and
#: ``label_convention`` (how the dataset labels its masks: :mod:`gliofed.data.conventions`)
EXTRA_COLUMNS = ("seg_regions", "aliases", "label_convention")


def _brats(root, labels, site):
    if labels:
        raise DataError("--source brats takes no label files; use --source brats2021 for the RSNA / TCIA files.")
    return curate_brats(root, None, site)


SOURCES: dict[str, Callable[..., list[CuratedCase]]] = {
    "brats": _brats,
    "brats2021": curate_brats2021,
    "upenn-gbm": curate_upenn,
    "tcga": curate_tcga,
    "rembrandt": curate_rembrandt,
    "ucsf-pdgm": curate_ucsf,
    "egd": curate_egd,
    "msd": curate_msd,
}
#: sources whose label convention is read from their file names and confirmed from every mask's values
_SETTLED = ("brats", "brats2021", "msd")


@dataclass
class CurationResult:
    """What an adapter found: every case with its status, and the manifest of the included ones."""

    source: str
    cases: list[CuratedCase]
    notes: list[str] = field(default_factory=list)

    @property
    def report(self) -> pd.DataFrame:
        """One row per case found: ``subject_id``, ``source_id``, ``dataset``, ``site``, ``status``, ``reason``,
        ``notes``, ``seg_labels`` (the labels its mask holds, when read)."""
        columns = ["subject_id", "source_id", "dataset", "site", "status", "reason", "notes", "seg_labels"]
        return pd.DataFrame([{"subject_id": c.subject_id, "source_id": c.source_id, "dataset": c.dataset,
                              "site": c.site, "status": c.status, "reason": c.reason, "notes": "; ".join(c.notes),
                              "seg_labels": " ".join(map(str, c.seg_values))} for c in self.cases], columns=columns)

    @property
    def included(self) -> list[CuratedCase]:
        return [c for c in self.cases if c.status == "included"]

    def label_counts(self) -> pd.DataFrame:
        """Included cases per marker and class, unknown included (rows: marker, columns: class names + unknown)."""
        rows = []
        for marker in MARKERS:
            codes = [c.labels[marker] for c in self.included]
            row = {"marker": marker, **{name: codes.count(k) for k, name in enumerate(MARKER_CLASSES[marker])},
                   "unknown": codes.count(-1)}
            rows.append(row)
        masks = sum("seg" in c.paths for c in self.included)
        rows.append({"marker": "mask", "with": masks, "unknown": len(self.included) - masks})
        return pd.DataFrame(rows).set_index("marker").fillna(0).astype(int)

    def site_counts(self) -> pd.DataFrame:
        """Included cases per site: ``cases``, ``mask`` (with a mask) and, per marker, the cases with a known label
        (rows: sites, sorted)."""
        rows = {}
        for case in self.included:
            row = rows.setdefault(case.site, {"cases": 0, "mask": 0, **{m: 0 for m in MARKERS}})
            row["cases"] += 1
            row["mask"] += "seg" in case.paths
            for marker in MARKERS:
                row[marker] += case.labels[marker] >= 0
        columns = ["cases", "mask", *MARKERS]
        table = pd.DataFrame.from_dict(rows, orient="index", columns=columns).sort_index()
        table.index.name = "site"
        return table.astype(int)

    def mask_label_counts(self) -> dict[int, int]:
        """Mask label -> how many included cases' masks hold it (only labels that were read)."""
        counts: dict[int, int] = {}
        for case in self.included:
            for value in case.seg_values:
                counts[value] = counts.get(value, 0) + 1
        return dict(sorted(counts.items()))

    def manifest(self, root: Path) -> pd.DataFrame:
        """Included cases as manifest rows, paths relative to ``root``."""
        rows = []
        for c in self.included:
            row = {"subject_id": c.subject_id, "dataset": c.dataset, "site": c.site,
                   **{k: relative_path(c.paths.get(k, ""), root) for k in (*MODALITIES, "seg")},
                   **{m: "" if c.labels[m] < 0 else str(c.labels[m]) for m in MARKERS},
                   "age": "" if c.age is None else f"{c.age:g}", "sex": c.sex, "split": "",
                   "seg_regions": c.seg_regions if "seg" in c.paths else "",
                   "aliases": ";".join(sorted(c.aliases - {c.subject_id})),
                   "label_convention": c.label_convention if c.label_convention != DEFAULT_CONVENTION else ""}
            rows.append(row)
        return pd.DataFrame(rows, columns=[*COLUMNS, *EXTRA_COLUMNS])

    def write(self, out: str | Path) -> tuple[Path, Path]:
        """Write the manifest to ``out`` and the report next to it (``<out stem>.report.csv``).

        Cases whose contrasts share one 4-D file (MSD) first get one 3-D NIfTI file per contrast in
        ``<out stem>_volumes/<subject>/<subject>_<contrast>.nii.gz`` (written once; re-made when the 4-D file is
        newer)."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        for case in self.included:
            if case.split_from:
                case.paths.update(_split_channels(case, out.parent / f"{out.stem}_volumes" / case.subject_id))
        write_csv(out, self.manifest(out.resolve().parent))
        report = out.with_name(f"{out.stem}.report.csv")
        write_csv(report, self.report)
        return out, report

    def __str__(self) -> str:
        report = self.report
        lines = [f"{self.source}: {len(report)} case(s) found, {len(self.included)} included, "
                 f"{(report['status'] == 'excluded').sum()} excluded."]
        for r in report[report["status"] == "excluded"].itertuples():
            lines.append(f"  excluded {r.source_id}: {r.reason}")
        noted = report[report["notes"] != ""]
        for r in noted.itertuples():
            lines.append(f"  note {r.source_id}: {r.notes}")
        lines += [f"  note: {note}" for note in self.notes]
        conventions = sorted({c.label_convention or DEFAULT_CONVENTION for c in self.included if "seg" in c.paths})
        for name in conventions:
            seen = self.mask_label_counts()
            found = (": masks hold " + ", ".join(f"{v} ({n} case(s))" for v, n in seen.items() if v)) if seen else ""
            lines.append(f"label convention {name} ({CONVENTIONS[name].description}){found}")
        lines.append("cases per site (markers: cases with a known label):")
        lines.append(self.site_counts().to_string())
        lines.append("labels of the included cases:")
        lines.append(self.label_counts().to_string())
        return "\n".join(lines)


def _split_channels(case: CuratedCase, folder: Path) -> dict[str, str]:
    """Write each contrast of ``case.split_from`` (4-D) as a 3-D NIfTI file in ``folder``; return their paths."""
    import nibabel as nib
    import numpy as np

    source = Path(case.split_from)
    paths = {m: folder / f"{case.subject_id}_{m}.nii.gz" for m in case.channels}
    if all(p.is_file() and p.stat().st_mtime >= source.stat().st_mtime for p in paths.values()):
        return {m: str(p) for m, p in paths.items()}
    folder.mkdir(parents=True, exist_ok=True)
    image = nib.load(str(source))
    for contrast, index in case.channels.items():
        volume = np.asanyarray(image.dataobj[..., index])
        header = image.header.copy()
        header.set_data_shape(volume.shape)
        single = nib.Nifti1Image(volume, image.affine, header)
        atomic_write(paths[contrast], lambda tmp, single=single: nib.save(single, tmp), keep_suffix=True)
    return {m: str(p) for m, p in paths.items()}


def curate(source: str, root: str | Path, labels: Sequence[str] | None = None, site: str | None = None,
           partition: str | Path | None = None, label_convention: str | None = None,
           progress: bool = True) -> CurationResult:
    """Find every case of ``source`` under ``root`` and encode its labels (see :data:`SOURCES`).

    Args:
        source: one of :data:`SOURCES`.
        root: the dataset's download folder.
        labels: label files the source reads (see its card in ``data_manifests/``).
        site: one site name for every case (default: a FeTS partition, else the institution a BraTS 2017-2020 ID
            names, else the dataset name).
        partition: a FeTS-style partitioning CSV (``Partition_ID``, ``Subject_ID``): each partition becomes a site
            ``partition_<ID>``; cases it does not list are excluded with the reason.
        label_convention: force how the masks are read (``brats``, ``brats2023``, ``brats2024``, ``msd``); default:
            detected from the file names and confirmed from the masks' values (BraTS sources and MSD).
        progress: show a progress bar while the masks are read.
    """
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}.")
    if site is not None and partition is not None:
        raise DataError("--site and --partition both name the sites; give one of them.")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found.")
    table = read_partition(partition) if partition is not None else None  # a bad file is refused before the walk
    cases = SOURCES[source](root, list(labels or []), site)
    if not cases:
        raise DataError(f"{root}: no {source} cases found (see data_manifests/{source}.md for the expected layout).")
    result = CurationResult(source, cases)
    if source in _SETTLED or label_convention is not None:
        settle_label_convention(cases, label_convention, progress=progress)
    if table is not None:
        missing = apply_partition(cases, table)
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            result.notes.append(f"{len(missing)} subject(s) listed in {table.path.name} were not found under "
                                f"{root}: {shown}")
    return result


def merge_manifests(paths: Sequence[str | Path], out: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Merge curated manifests into one; remove cross-dataset duplicates of the same patient.

    A BraTS 2021 case whose aliases (from the TCIA mapping file, or a UCSF-PDGM ``BraTS21 ID``) name a patient
    present in another manifest is dropped in favour of the source dataset, which carries the molecular
    labels. Same subject ID twice is also a duplicate (the first file wins).

    Returns:
        (merged manifest written to ``out`` with paths relative to it, duplicates table also written to
        ``<out stem>.duplicates.csv``).
    """
    out = Path(out)
    frames = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: manifest file not found.")
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError:
            raise DataError(f"{path}: the manifest is empty (no header, no rows).") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as error:
            raise DataError(f"{path}: not a readable CSV file ({first_line(error)}).") from None
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise DataError(f"{path}: not a manifest (lacks {', '.join(missing)}).")
        base = path.resolve().parent
        for column in (*MODALITIES, "seg"):
            frame[column] = [absolute_path(p, base) for p in frame[column]]
        for column in EXTRA_COLUMNS:
            if column not in frame:
                frame[column] = ""
        frames.append(frame.assign(source_file=path.name))
    merged = pd.concat(frames, ignore_index=True)
    if merged.empty:
        raise DataError(f"{', '.join(str(p) for p in paths)}: no subjects to merge (every manifest has only a "
                        "header).")
    owner: dict[str, str] = {}  # any ID of a patient in a source dataset -> that row's subject ID
    for row in merged[merged["dataset"] != "brats2021"].itertuples(index=False):
        for identifier in {row.subject_id, *(a for a in row.aliases.split(";") if a)}:
            owner.setdefault(identifier, row.subject_id)
    duplicates, keep = [], []
    seen: set[str] = set()
    for row in merged.itertuples(index=False):
        identifiers = sorted({row.subject_id, *(a for a in row.aliases.split(";") if a)})
        twin = next((owner[i] for i in identifiers if i in owner), None) if row.dataset == "brats2021" else None
        if row.subject_id in seen:
            duplicates.append({"subject_id": row.subject_id, "dataset": row.dataset, "file": row.source_file,
                               "duplicate_of": row.subject_id, "reason": "same subject ID in an earlier manifest"})
            keep.append(False)
        elif twin is not None:
            duplicates.append({"subject_id": row.subject_id, "dataset": row.dataset, "file": row.source_file,
                               "duplicate_of": twin,
                               "reason": f"same patient as {twin} (kept from its source dataset)"})
            keep.append(False)
        else:
            seen.add(row.subject_id)
            keep.append(True)
    result = merged[keep].drop(columns="source_file").reset_index(drop=True)
    root = out.resolve().parent
    for column in (*MODALITIES, "seg"):
        result[column] = [relative_path(p, root) for p in result[column]]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out, result[[*COLUMNS, *EXTRA_COLUMNS]])
    table = pd.DataFrame(duplicates, columns=["subject_id", "dataset", "file", "duplicate_of", "reason"])
    write_csv(out.with_name(f"{out.stem}.duplicates.csv"), table)
    return result, table
