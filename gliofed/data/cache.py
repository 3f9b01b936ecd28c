"""`gliofed preprocess`: the preprocessed case cache (fp16 image + uint8 seg per case, memory-mapped).

Layout::

    CACHE/index.csv              one row per cached case: labels, site, split, shape, fingerprint
    CACHE/cases/<subject>.image.npy   float16 (4, D, H, W), z-scored
    CACHE/cases/<subject>.seg.npy     uint8 (D, H, W), classes 0..3 (only for cases with a mask)
    CACHE/report.csv             the last run: every case with its status and reason

A case is recomputed only when its fingerprint (input files' size and mtime, preprocessing settings
and version) changed; the index always mirrors the current manifest's labels and splits.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from gliofed.data.check import read_error
from gliofed.data.manifest import MARKERS, MODALITIES, read_manifest
from gliofed.errors import CacheError, GliofedError, ManifestError

__all__ = ["PREPROCESS_VERSION", "PreprocessReport", "preprocess", "read_index", "load_case"]

#: bump when the pipeline changes so that every cache entry is invalidated
PREPROCESS_VERSION = 1
_INDEX_COLUMNS = ["subject_id", "dataset", "site", "split", *MARKERS, "age", "sex", "has_mask",
                  "depth", "height", "width", "fingerprint"]


@dataclass
class PreprocessReport:
    """What one :func:`preprocess` run did: every case's status (``done``, ``cached``, ``skipped``) and reason."""

    cache_dir: Path
    cases: pd.DataFrame

    @property
    def skipped(self) -> pd.DataFrame:
        return self.cases[self.cases["status"] == "skipped"]

    def __str__(self) -> str:
        counts = self.cases["status"].value_counts()
        head = (f"{self.cache_dir}: {counts.get('done', 0)} preprocessed, {counts.get('cached', 0)} up to date, "
                f"{counts.get('skipped', 0)} skipped.")
        lines = [head] + [f"  skipped {r.subject_id}: {r.reason}" for r in self.skipped.itertuples()]
        lines += [f"  note {r.subject_id}: {r.reason}" for r in self.cases.itertuples()
                  if r.status != "skipped" and r.reason]
        return "\n".join(lines)


def _fingerprint(row: pd.Series, size: int) -> str:
    stats = []
    for key in (*MODALITIES, "seg"):
        path = row[key]
        if path:
            try:
                st = os.stat(path)
                stats.append([key, st.st_size, st.st_mtime_ns])
            except OSError:
                stats.append([key, "missing"])
    payload = {"version": PREPROCESS_VERSION, "size": size, "files": stats}
    if str(row.get("seg_regions", "") or ""):
        payload["seg_regions"] = str(row["seg_regions"])
    payload = json.dumps(payload, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def _case_paths(cache_dir: Path, subject: str) -> tuple[Path, Path]:
    folder = cache_dir / "cases"
    return folder / f"{subject}.image.npy", folder / f"{subject}.seg.npy"


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _preprocess_one(task: tuple[dict, int, str]) -> tuple[str, str, tuple[int, int, int] | None]:
    """Run the pipeline on one case; return (status, reason, shape)."""
    from gliofed.data.transforms import preprocess_pipeline

    row, size, cache_dir = task
    subject = row["subject_id"]
    with_seg = _uses_mask(row)
    for key in (*MODALITIES, "seg"):
        if row[key] and not Path(row[key]).is_file():
            return "skipped", f"{key} file {Path(row[key]).name} not found", None
    try:
        out = preprocess_pipeline(size, with_seg)({"subject_id": subject, **{k: row[k] for k in MODALITIES},
                                                   **({"seg": row["seg"]} if with_seg else {})})
    except Exception as error:  # MONAI wraps transform errors: report the root cause
        cause = error
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, GliofedError):
            return "skipped", str(cause).removeprefix(f"subject {subject}: ").rstrip("."), None
        chain, link = [], error
        while link is not None:
            chain.append(str(link))
            link = link.__cause__
        text = " ".join(chain)
        unreadable = next((row[k] for k in (*MODALITIES, "seg") if row[k] and str(row[k]) in text), None)
        if unreadable is not None:
            return "skipped", f"{Path(unreadable).name}: {read_error(unreadable, cause)}", None
        return "skipped", f"could not be processed ({type(cause).__name__}: {str(cause)[:200]})", None
    image_path, seg_path = _case_paths(Path(cache_dir), subject)
    image = np.asarray(out["image"], dtype=np.float16)
    _atomic_save(image_path, image)
    if with_seg:
        _atomic_save(seg_path, np.asarray(out["seg"][0], dtype=np.uint8))
    elif seg_path.exists():
        seg_path.unlink()
    note = "" if with_seg or not row["seg"] else WT_ONLY_NOTE
    return "done", note, tuple(image.shape[1:])


#: why a whole-tumour-only mask (manifest ``seg_regions = WT``) does not become a training mask
WT_ONLY_NOTE = "whole-tumour-only mask not used (training and Dice need the BraTS classes)"


def _uses_mask(row) -> bool:
    return bool(row["seg"]) and str(row.get("seg_regions", "") or "").upper() != "WT"


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def preprocess(manifest_path: str | Path, cache_dir: str | Path, size: int = 128, workers: int = 1,
               progress: bool = True) -> PreprocessReport:
    """Preprocess every case of a manifest into the cache (see module docstring).

    Args:
        manifest_path: the manifest CSV.
        cache_dir: the cache folder (created).
        size: in-plane size (default 128, the seed's).
        workers: parallel processes (default 1).
        progress: show a progress bar.

    Returns:
        :class:`PreprocessReport` listing every case, including skipped ones with their reason;
        also written to ``cache_dir/report.csv``.
    """
    cache_dir = Path(cache_dir)
    (cache_dir / "cases").mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(manifest_path)
    duplicated = manifest["subject_id"][manifest["subject_id"].duplicated()].unique()
    if len(duplicated):
        raise ManifestError(f"{manifest_path}: subject ID {duplicated[0]} appears more than once; "
                            "run `gliofed check` to list every problem.")
    old = read_index(cache_dir, missing_ok=True)
    old_fp = dict(zip(old["subject_id"], old["fingerprint"])) if len(old) else {}
    old_shape = {r.subject_id: (r.depth, r.height, r.width) for r in old.itertuples()} if len(old) else {}

    fingerprints, todo, results = {}, [], {}
    for _, row in manifest.iterrows():
        subject = row["subject_id"]
        fingerprints[subject] = _fingerprint(row, size)
        image_path, _ = _case_paths(cache_dir, subject)
        if old_fp.get(subject) == fingerprints[subject] and image_path.exists():
            results[subject] = ("cached", "" if _uses_mask(row) or not row["seg"] else WT_ONLY_NOTE, old_shape[subject])
        else:
            todo.append((row.to_dict(), size, str(cache_dir)))
    bar = dict(total=len(todo), desc="preprocess", unit="case", disable=not progress or not todo)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init) as pool:
            outcomes = list(tqdm(pool.map(_preprocess_one, todo), **bar))
    else:
        outcomes = [_preprocess_one(task) for task in tqdm(todo, **bar)]
    for task, outcome in zip(todo, outcomes):
        results[task[0]["subject_id"]] = outcome

    index_rows, report_rows = [], []
    for _, row in manifest.iterrows():
        subject = row["subject_id"]
        status, reason, shape = results[subject]
        report_rows.append({"subject_id": subject, "site": row["site"], "status": status, "reason": reason})
        if status == "skipped":
            for path in _case_paths(cache_dir, subject):
                path.unlink(missing_ok=True)
            continue
        index_rows.append({**{c: row[c] for c in ("subject_id", "dataset", "site", "split", *MARKERS, "age", "sex")},
                           "has_mask": _uses_mask(row), "depth": shape[0], "height": shape[1],
                           "width": shape[2], "fingerprint": fingerprints[subject]})
    pd.DataFrame(index_rows, columns=_INDEX_COLUMNS).to_csv(cache_dir / "index.csv", index=False)
    report = PreprocessReport(cache_dir, pd.DataFrame(report_rows))
    report.cases.to_csv(cache_dir / "report.csv", index=False)
    return report


def read_index(cache_dir: str | Path, missing_ok: bool = False) -> pd.DataFrame:
    """The cache index (one row per cached case); raises :class:`CacheError` if absent unless ``missing_ok``."""
    path = Path(cache_dir) / "index.csv"
    if not path.is_file():
        if missing_ok:
            return pd.DataFrame(columns=_INDEX_COLUMNS)
        raise CacheError(f"{cache_dir}: no preprocessed cache here (index.csv missing); run `gliofed preprocess` first.")
    index = pd.read_csv(path, dtype={"subject_id": str, "site": str, "split": str, "sex": str},
                        keep_default_na=False, na_values={"age": [""]})
    return index


def load_case(cache_dir: str | Path, subject: str, has_mask: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Memory-map one cached case: (image float16 (4, D, H, W), seg uint8 (D, H, W) or None)."""
    image_path, seg_path = _case_paths(Path(cache_dir), subject)
    if not image_path.is_file():
        raise CacheError(f"{image_path}: cached image of subject {subject} is missing; rerun `gliofed preprocess`.")
    image = np.load(image_path, mmap_mode="r")
    seg = np.load(seg_path, mmap_mode="r") if has_mask and seg_path.is_file() else None
    return image, seg
