"""Dataset adapters (``gliofed curate``): real downloads of the seed study's datasets -> one clean manifest and a
curation report listing every case found, included or excluded with its reason.

>>> result = curate("brats2021", "/data/BraTS2021", labels=["train_labels.csv"])   # doctest: +SKIP
>>> result.write("brats2021.csv")                                                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from gliofed.data.manifest import COLUMNS, absolute_path, relative_path
from gliofed.data.sources.brats import curate_brats, curate_brats2021
from gliofed.data.sources.common import CuratedCase
from gliofed.data.sources.others import curate_egd, curate_rembrandt, curate_ucsf
from gliofed.data.sources.tcga import curate_tcga
from gliofed.data.sources.upenn import curate_upenn
from gliofed.errors import DataError, first_line
from gliofed.fileio import write_csv
from gliofed.vocab import MARKER_CLASSES, MARKERS, MODALITIES

__all__ = ["SOURCES", "EXTRA_COLUMNS", "CurationResult", "curate", "merge_manifests", "CuratedCase"]

#: optional manifest columns written by the adapters: ``seg_regions`` (blank = BraTS classes, ``WT`` =
#: binary whole-tumour mask) and ``aliases`` (the patient's IDs in other datasets, ``;``-separated)
EXTRA_COLUMNS = ("seg_regions", "aliases")


def _brats(root, labels, site):
    if labels:
        raise DataError("--source brats takes no label files; use --source brats2021 for the RSNA / TCIA files.")
    return curate_brats(root, "brats", site)


SOURCES: dict[str, Callable[..., list[CuratedCase]]] = {
    "brats": _brats,
    "brats2021": curate_brats2021,
    "upenn-gbm": curate_upenn,
    "tcga": curate_tcga,
    "rembrandt": curate_rembrandt,
    "ucsf-pdgm": curate_ucsf,
    "egd": curate_egd,
}


@dataclass
class CurationResult:
    """What an adapter found: every case with its status, and the manifest of the included ones."""

    source: str
    cases: list[CuratedCase]

    @property
    def report(self) -> pd.DataFrame:
        """One row per case found: ``subject_id``, ``source_id``, ``dataset``, ``status``, ``reason``, ``notes``."""
        return pd.DataFrame([{"subject_id": c.subject_id, "source_id": c.source_id, "dataset": c.dataset,
                              "status": c.status, "reason": c.reason, "notes": "; ".join(c.notes)}
                             for c in self.cases], columns=["subject_id", "source_id", "dataset", "status", "reason",
                                                            "notes"])

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

    def manifest(self, root: Path) -> pd.DataFrame:
        """Included cases as manifest rows, paths relative to ``root``."""
        rows = []
        for c in self.included:
            row = {"subject_id": c.subject_id, "dataset": c.dataset, "site": c.site,
                   **{k: relative_path(c.paths.get(k, ""), root) for k in (*MODALITIES, "seg")},
                   **{m: "" if c.labels[m] < 0 else str(c.labels[m]) for m in MARKERS},
                   "age": "" if c.age is None else f"{c.age:g}", "sex": c.sex, "split": "",
                   "seg_regions": c.seg_regions if "seg" in c.paths else "",
                   "aliases": ";".join(sorted(c.aliases - {c.subject_id}))}
            rows.append(row)
        return pd.DataFrame(rows, columns=[*COLUMNS, *EXTRA_COLUMNS])

    def write(self, out: str | Path) -> tuple[Path, Path]:
        """Write the manifest to ``out`` and the report next to it (``<out stem>.report.csv``)."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
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
        lines.append("labels of the included cases:")
        lines.append(self.label_counts().to_string())
        return "\n".join(lines)


def curate(source: str, root: str | Path, labels: Sequence[str] | None = None,
           site: str | None = None) -> CurationResult:
    """Find every case of ``source`` under ``root`` and encode its labels (see :data:`SOURCES`)."""
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}.")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found.")
    cases = SOURCES[source](root, list(labels or []), site)
    if not cases:
        raise DataError(f"{root}: no {source} cases found (see data_manifests/{source}.md for the expected layout).")
    return CurationResult(source, cases)


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
