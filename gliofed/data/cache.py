"""`gliofed preprocess`: the preprocessed case cache (fp16 image + uint8 seg per case, memory-mapped).

Layout::

    CACHE/index.csv              one row per cached case: labels, site, split, shape, geometry, file sizes and
                                 SHA-256 checksums, fingerprint (see :data:`INDEX_COLUMNS`)
    CACHE/settings.json          the cache's preprocessing record (:class:`~gliofed.preprocessing.Preprocessing`):
                                 ``{"size": .., "preprocess_version": .., "preprocessing": {...}}``
    CACHE/cases/<subject>.image.npy   float16 (4, D, H, W), z-scored
    CACHE/cases/<subject>.seg.npy     uint8 (D, H, W), classes 0..3 (only for cases with a mask)
    CACHE/report.csv             the last run: every case with its status and reason
    CACHE/.lock                  while a ``preprocess`` writes: its PID and host

A case is recomputed only when its fingerprint (input files' size and mtime, preprocessing settings
and version) changed or its cached files no longer match the size and checksum in the index (a damaged or
truncated file is re-made); the index always mirrors the current manifest's labels and splits.

Every file is written to a temporary file and renamed (:mod:`gliofed.fileio`), so a killed ``preprocess``
leaves the previous, consistent cache plus temporary files that the next run removes. One cache holds one
preprocessing record: a run with another record (size, version, ...) into a non-empty cache is refused, and every
reader of the cache takes its record from :func:`read_plan`.

Geometry: ``spacing_d``, ``spacing_h``, ``spacing_w`` are the cache grid's voxel sizes in mm along (D, H, W);
``affine`` is the 4 x 4 matrix (JSON, row-major nested lists) mapping a cached voxel index (d, h, w, 1) to
world coordinates in mm (RAS+, as nibabel), computed by MONAI through orientation, crop and resize.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gliofed.data.check import max_voxels, nifti_size_problem, read_error
from gliofed.data.manifest import check_safe_names, read_manifest, unsafe_name
from gliofed.data.parallel import process_map
from gliofed.errors import CacheDamagedError, CacheError, CacheLockedError, ConfigError, GliofedError, ManifestError
from gliofed.fileio import TMP_SUFFIX, atomic_write_bytes, atomic_write_text, folder_lock, to_json, write_csv
from gliofed.preprocessing import PREPROCESS_VERSION, Preprocessing, plan_of
from gliofed.vocab import MARKERS, MODALITIES

__all__ = ["PREPROCESS_VERSION", "INDEX_COLUMNS", "PreprocessReport", "preprocess", "read_index", "read_settings",
           "read_plan", "check_plan", "load_case", "case_spacing", "case_affine", "cache_lock", "write_case_files",
           "write_index", "verify_case", "verify_cases", "remember_checksums", "cache_fingerprint"]

#: the columns of ``index.csv``
INDEX_COLUMNS = ["subject_id", "dataset", "site", "split", *MARKERS, "age", "sex", "has_mask",
                 "depth", "height", "width", "spacing_d", "spacing_h", "spacing_w", "affine",
                 "image_bytes", "image_sha256", "seg_bytes", "seg_sha256", "fingerprint"]
_INDEX_COLUMNS = INDEX_COLUMNS  # old private name
_SETTINGS = "settings.json"
_LOCK = ".lock"


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
    if str(row.get("label_convention", "") or "brats") != "brats":  # the default keeps older caches valid
        payload["label_convention"] = str(row["label_convention"])
    payload = json.dumps(payload, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def _case_paths(cache_dir: Path, subject: str) -> tuple[Path, Path]:
    """The image and seg files of ``subject``; refuses a subject ID that would leave the cache folder."""
    reason = unsafe_name(str(subject))
    if reason is not None:
        raise CacheError(f"{cache_dir}: subject ID {str(subject)!r} is not a safe file name ({reason}).")
    folder = cache_dir / "cases"
    return folder / f"{subject}.image.npy", folder / f"{subject}.seg.npy"


# ---------------------------------------------------------------------------------------------- files
def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _save_npy(path: Path, array: np.ndarray) -> tuple[int, str]:
    """Write ``array`` atomically as ``.npy``; return (bytes, SHA-256 hex) of the file written."""
    data = _npy_bytes(array)
    atomic_write_bytes(path, data)
    return len(data), hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


#: (path, size, mtime_ns) -> SHA-256 of files already hashed by this process: a case is hashed once per process and
#: file version, not once per epoch; a rewritten file has a new mtime (and usually size). DataLoader workers receive
#: their parent's entries (:func:`remember_checksums`), so a run hashes each case once, not once per worker.
_VERIFIED: dict[tuple[str, int, int], str] = {}


def _file_problem(path: Path, expected_bytes: int, expected_sha: str) -> str | None:
    """Why ``path`` does not match its index record, or None when it does."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{path.name} is missing"
    if st.st_size != expected_bytes:
        return f"size mismatch in {path}: {st.st_size:,} bytes instead of {expected_bytes:,}"
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = _sha256_file(path)
    if _VERIFIED[key] != expected_sha:
        return f"checksum mismatch in {path}"
    return None


def _checksum_key(path: Path) -> tuple[str, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return str(path), st.st_size, st.st_mtime_ns


def remember_checksums(entries: Mapping[tuple[str, int, int], str]) -> None:
    """Adopt checksums another process of this run computed (``{(path, size, mtime_ns): sha256}``, as
    :func:`verify_cases` returns them): a file whose size or modification time changed since is hashed again."""
    _VERIFIED.update(entries)


def verify_cases(cache_dir: str | Path, records: Sequence[Mapping], workers: int = 4) -> dict:
    """:func:`verify_case` for every record, hashing in ``workers`` threads (hashlib releases the GIL).

    Returns:
        the checksums of the files checked, ``{(path, size, mtime_ns): sha256}``, for :func:`remember_checksums`.

    Raises:
        CacheDamagedError: the first damaged case, named as :func:`load_case` names it.
    """
    from concurrent.futures import ThreadPoolExecutor

    cache_dir = Path(cache_dir)
    records = list(records)
    with ThreadPoolExecutor(max(1, int(workers))) as pool:
        problems = list(pool.map(lambda record: verify_case(cache_dir, record), records))
    for record, problem in zip(records, problems):
        if problem is not None:
            raise CacheDamagedError(f"cache case {record['subject_id']} is damaged ({problem}); "
                                    "run `gliofed preprocess` again.")
    entries = {}
    for record in records:
        for path in _case_paths(cache_dir, str(record["subject_id"])):
            key = _checksum_key(path)
            if key is not None and key in _VERIFIED:
                entries[key] = _VERIFIED[key]
    return entries


def _record_int(record: Mapping, key: str) -> int | None:
    value = record.get(key, "")
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return None
    return int(float(value))


def verify_case(cache_dir: str | Path, record: Mapping) -> str | None:
    """Check a cached case's files against its index record (size, then SHA-256).

    Args:
        cache_dir: the cache folder.
        record: the case's index row (``subject_id``, ``has_mask``, ``image_bytes``, ``image_sha256``,
            ``seg_bytes``, ``seg_sha256``).

    Returns:
        None when the files match; otherwise a phrase naming the file and the problem.
    """
    subject = str(record["subject_id"])
    image_path, seg_path = _case_paths(Path(cache_dir), subject)
    image_bytes = _record_int(record, "image_bytes")
    if image_bytes is None or not str(record.get("image_sha256", "")):
        return f"no size or checksum recorded for {image_path.name} (cache written by an older gliofed)"
    problem = _file_problem(image_path, image_bytes, str(record["image_sha256"]))
    if problem is None and _truthy(record.get("has_mask", False)):
        seg_bytes = _record_int(record, "seg_bytes")
        if seg_bytes is None or not str(record.get("seg_sha256", "")):
            return f"no size or checksum recorded for {seg_path.name} (cache written by an older gliofed)"
        problem = _file_problem(seg_path, seg_bytes, str(record["seg_sha256"]))
    return problem


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return bool(value)


def write_case_files(cache_dir: str | Path, subject: str, image: np.ndarray, seg: np.ndarray | None) -> dict:
    """Write one case's arrays into ``cache_dir/cases`` atomically (image as float16, seg as uint8).

    Used by :func:`preprocess`, and by tests and benchmarks that build a cache from arrays.

    Args:
        cache_dir: the cache folder (``cases/`` is created).
        subject: a safe subject ID.
        image: (4, D, H, W) image. seg: (D, H, W) classes 0..3, or None (an existing seg file is removed).

    Returns:
        the index fields ``image_bytes``, ``image_sha256``, ``seg_bytes``, ``seg_sha256`` (blank without seg).
    """
    image_path, seg_path = _case_paths(Path(cache_dir), subject)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    image_bytes, image_sha = _save_npy(image_path, np.asarray(image, dtype=np.float16))
    record = {"image_bytes": image_bytes, "image_sha256": image_sha, "seg_bytes": "", "seg_sha256": ""}
    if seg is not None:
        record["seg_bytes"], record["seg_sha256"] = _save_npy(seg_path, np.asarray(seg, dtype=np.uint8))
    else:
        seg_path.unlink(missing_ok=True)
    return record


def write_index(cache_dir: str | Path, rows: Sequence[Mapping], size: int | Preprocessing | None = None) -> Path:
    """Write ``index.csv`` atomically from case rows (and ``settings.json`` when ``size`` is given).

    Rows written by :func:`write_case_files` carry their sizes and checksums; for a row without them (a
    hand-made cache in tests or benchmarks) they are computed from the files. Missing geometry defaults to
    1 mm isotropic with an identity affine.

    Args:
        cache_dir: the cache folder.
        rows: one mapping per case with at least the label columns, ``has_mask`` and the shape.
        size: the preprocessing record (or in-plane size) the cases were preprocessed with; recorded in
            ``settings.json``.

    Returns:
        the path of ``index.csv``.
    """
    cache_dir = Path(cache_dir)
    full = []
    for row in rows:
        row = dict(row)
        image_path, seg_path = _case_paths(cache_dir, str(row["subject_id"]))
        if not str(row.get("image_sha256", "")):
            row["image_bytes"], row["image_sha256"] = image_path.stat().st_size, _sha256_file(image_path)
        if _truthy(row.get("has_mask", False)) and not str(row.get("seg_sha256", "")):
            row["seg_bytes"], row["seg_sha256"] = seg_path.stat().st_size, _sha256_file(seg_path)
        for key in ("spacing_d", "spacing_h", "spacing_w"):
            row.setdefault(key, 1.0)
        row.setdefault("affine", json.dumps(np.eye(4).tolist()))
        row.setdefault("fingerprint", "")
        full.append(row)
    frame = pd.DataFrame(full, columns=INDEX_COLUMNS)
    if size is not None:
        _write_settings(cache_dir, size)
    return write_csv(cache_dir / "index.csv", frame)


# ------------------------------------------------------------------------------------- settings, lock
def _as_plan(size: int | Preprocessing) -> Preprocessing:
    return size if isinstance(size, Preprocessing) else Preprocessing(size=int(size))


def _write_settings(cache_dir: Path, size: int | Preprocessing) -> None:
    plan = _as_plan(size)
    atomic_write_text(cache_dir / _SETTINGS, to_json({"size": plan.size, "preprocess_version": plan.version,
                                                      "preprocessing": plan.to_dict()}) + "\n")


def read_settings(cache_dir: str | Path) -> dict | None:
    """The cache's preprocessing settings ``{"size": int, "preprocess_version": int}``, or None if unrecorded."""
    path = Path(cache_dir) / _SETTINGS
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text())
        return {"size": int(settings["size"]), "preprocess_version": int(settings["preprocess_version"])}
    except (ValueError, KeyError, TypeError) as error:
        raise CacheError(f"{path}: unreadable cache settings ({type(error).__name__}); "
                         "delete the cache folder and run `gliofed preprocess` again.") from error


def read_plan(cache_dir: str | Path) -> Preprocessing:
    """The :class:`~gliofed.preprocessing.Preprocessing` record the cache was made with: what every reader of the
    cache (training, the checkpoint, ``evaluate``, a Flower SuperNode) takes as its preprocessing.

    Raises:
        CacheError: no cache there, or a cache whose record is missing or unreadable (one sentence naming it).
    """
    cache_dir = Path(cache_dir)
    settings = read_settings(cache_dir)
    if settings is None:
        raise CacheError(f"{cache_dir}: no preprocessing record (settings.json) in this cache; run "
                         "`gliofed preprocess` into it again.")
    record = json.loads((cache_dir / _SETTINGS).read_text()).get("preprocessing")
    try:  # a cache of an earlier gliofed recorded only its size and version: the record those imply
        return (plan_of(record, str(cache_dir / _SETTINGS)) if record is not None else
                Preprocessing(size=settings["size"], version=settings["preprocess_version"]))
    except ConfigError as error:
        raise CacheError(f"{error} Delete the cache folder and run `gliofed preprocess` again.") from None


def check_plan(cache_dir: str | Path, plan: Preprocessing, reader: str) -> Preprocessing:
    """The cache's record, after checking that it serves ``plan`` (what ``reader`` expects: a model, a federation):
    the same grid and steps, and every contrast ``plan`` names.

    Raises:
        CacheError: no record, or one that differs (one sentence naming the cache, the setting and ``reader``).
    """
    own = read_plan(cache_dir)
    try:
        own.check_serves(plan, f"cache {cache_dir}", reader)
    except ConfigError as error:
        raise CacheError(str(error)) from None
    return own


def _holds_cases(cache_dir: Path) -> bool:
    if len(read_index(cache_dir, missing_ok=True)):
        return True
    folder = cache_dir / "cases"
    return folder.is_dir() and any(folder.glob("*.npy"))


def _refuse_mixed_settings(cache_dir: Path, plan: Preprocessing) -> None:
    """One cache, one record: refuse another size, version or setting into a cache that holds cases."""
    settings = read_settings(cache_dir)
    if not _holds_cases(cache_dir):
        return
    if settings is None:
        if (cache_dir / "index.csv").is_file():
            return  # a cache of an older gliofed: every fingerprint changed, so every case is re-made
        raise CacheError(f"{cache_dir}: holds cached cases but no settings.json; delete the folder or choose "
                         "another cache folder.")
    own = read_plan(cache_dir)
    if (own.size, own.version) != (plan.size, plan.version):
        raise CacheError(f"{cache_dir}: cache holds cases preprocessed with size {own.size} (version "
                         f"{own.version}), not size {plan.size} (version {plan.version}); "
                         "use another cache folder or delete this one.")
    difference = own.difference(plan)
    if difference is not None:
        mine, _, theirs = difference.partition(" (the other: ")
        raise CacheError(f"{cache_dir}: cache holds cases preprocessed with {mine}, not {theirs.rstrip(')')}; "
                         "use another cache folder or delete this one.")


@contextlib.contextmanager
def cache_lock(cache_dir: str | Path) -> Iterator[Path]:
    """Hold ``cache_dir/.lock`` (PID and host) while writing the cache (:func:`gliofed.fileio.folder_lock`).

    A lock of a live process, this one included, is refused with :class:`CacheLockedError`; a lock left by a dead
    process on this host (a killed ``preprocess``) is taken over.

    Yields:
        the lock file's path.
    """
    with folder_lock(cache_dir, "preprocess", "cache", CacheLockedError, name=_LOCK) as lock:
        yield lock


def _remove_leftovers(cache_dir: Path) -> int:
    """Remove temporary files of killed writers (only called while holding the lock). Returns their count."""
    leftovers = [p for name in ("index.csv", "report.csv", _SETTINGS) for p in cache_dir.glob(f".{name}.*{TMP_SUFFIX}")]
    cases = cache_dir / "cases"
    if cases.is_dir():
        leftovers += [p for p in cases.iterdir() if (p.name.startswith(".") and p.name.endswith(TMP_SUFFIX))
                      or p.name.endswith(".tmp.npy")]  # ".tmp.npy": the temporary name of gliofed <= 0.1
    for path in leftovers:
        path.unlink(missing_ok=True)
    return len(leftovers)


# ------------------------------------------------------------------------------------------ preprocess
def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _preprocess_one(task: tuple[dict, Preprocessing, str]) -> dict:
    """Run the pipeline on one case and write it; return its status, reason, shape, files and geometry."""
    row, plan, cache_dir = task
    subject = row["subject_id"]
    with_seg = _uses_mask(row)
    for key in (*MODALITIES, "seg"):
        if row[key] and not Path(row[key]).is_file():
            return {"status": "skipped", "reason": f"{key} file {Path(row[key]).name} not found"}
    for key in (*MODALITIES, *(["seg"] if with_seg else [])):  # declared sizes, before any array is made
        try:
            too_large = nifti_size_problem(row[key])
        except Exception:  # unreadable: the pipeline below names the reason
            too_large = None
        if too_large is not None:
            return {"status": "skipped", "reason": f"{Path(row[key]).name}: {too_large}"}
    from gliofed.data.transforms import preprocess_pipeline  # MONAI and torch: only for a case that passed

    try:
        labels = str(row.get("label_convention", "") or plan.label_convention or "brats")
        out = preprocess_pipeline(plan, with_seg, labels)({"subject_id": subject, **{k: row[k] for k in MODALITIES},
                                                   **({"seg": row["seg"]} if with_seg else {})})
    except Exception as error:  # MONAI wraps transform errors: report the root cause
        cause = error
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, GliofedError):
            return {"status": "skipped", "reason": str(cause).removeprefix(f"subject {subject}: ").rstrip(".")}
        chain, link = [], error
        while link is not None:
            chain.append(str(link))
            link = link.__cause__
        text = " ".join(chain)
        unreadable = next((row[k] for k in (*MODALITIES, "seg") if row[k] and str(row[k]) in text), None)
        if unreadable is not None:
            return {"status": "skipped", "reason": f"{Path(unreadable).name}: {read_error(unreadable, cause)}"}
        return {"status": "skipped",
                "reason": f"could not be processed ({type(cause).__name__}: {str(cause)[:200]})"}
    image = np.asarray(out["image"], dtype=np.float16)
    if not np.isfinite(image).all():  # z-scores beyond float16's +/-65504: never cache Inf
        channel = int(np.flatnonzero(~np.isfinite(image).reshape(len(image), -1).all(1))[0])
        return {"status": "skipped", "reason": f"{MODALITIES[channel]}: z-scored values beyond float16's range "
                                               "(an extreme outlier voxel)"}
    files = write_case_files(cache_dir, subject, image, np.asarray(out["seg"][0]) if with_seg else None)
    spacing = [float(v) for v in out["image_spacing"]]
    note = "" if with_seg or not row["seg"] else WT_ONLY_NOTE
    return {"status": "done", "reason": note, "depth": image.shape[1], "height": image.shape[2],
            "width": image.shape[3], "spacing_d": spacing[0], "spacing_h": spacing[1], "spacing_w": spacing[2],
            "affine": json.dumps(np.round(np.asarray(out["image_affine"], dtype=np.float64), 6).tolist()), **files}


#: why a whole-tumour-only mask (manifest ``seg_regions = WT``) does not become a training mask
WT_ONLY_NOTE = "whole-tumour-only mask not used (training and Dice need the BraTS classes)"
_CASE_FIELDS = ("depth", "height", "width", "spacing_d", "spacing_h", "spacing_w", "affine",
                "image_bytes", "image_sha256", "seg_bytes", "seg_sha256")


def _uses_mask(row) -> bool:
    return bool(row["seg"]) and str(row.get("seg_regions", "") or "").upper() != "WT"


def preprocess(manifest_path: str | Path, cache_dir: str | Path, size: int | Preprocessing | None = None,
               workers: int = 1, progress: bool = True) -> PreprocessReport:
    """Preprocess every case of a manifest into the cache (see module docstring).

    Args:
        manifest_path: the manifest CSV.
        cache_dir: the cache folder (created).
        size: the preprocessing record, or its in-plane size; default (None): the record of a cache already there,
            else the one :func:`gliofed.data.plan.plan_for_manifest` makes (a synthetic cohort's preset size, else the
            cases' native in-plane size, at most 128).
        workers: parallel processes (default 1).
        progress: show a progress bar.

    Returns:
        :class:`PreprocessReport` listing every case, including skipped ones with their reason;
        also written to ``cache_dir/report.csv``.

    Raises:
        ManifestError: duplicate or unsafe subject IDs or site names (before any work).
        CacheError: the cache holds cases of another preprocessing record (size, version ...).
        CacheLockedError: another live ``preprocess`` is writing this cache.
    """
    cache_dir = Path(cache_dir)
    max_voxels()  # a bad GLIOFED_MAX_VOXELS is an error now, not one per case
    manifest = read_manifest(manifest_path)
    check_safe_names(manifest, manifest_path)
    duplicated = manifest["subject_id"][manifest["subject_id"].duplicated()].unique()
    if len(duplicated):
        raise ManifestError(f"{manifest_path}: subject ID {duplicated[0]} appears more than once; "
                            "run `gliofed check` to list every problem.")
    with cache_lock(cache_dir):
        _remove_leftovers(cache_dir)
        if size is None and _holds_cases(cache_dir) and read_settings(cache_dir) is not None:
            plan = read_plan(cache_dir)  # brought up to date with the record it was made with
        elif size is None:
            from gliofed.data.plan import plan_for_manifest

            plan = plan_for_manifest(manifest_path)
        else:
            plan = _as_plan(size)
        _refuse_mixed_settings(cache_dir, plan)
        (cache_dir / "cases").mkdir(parents=True, exist_ok=True)
        return _preprocess_locked(manifest, cache_dir, plan, workers, progress)


def _preprocess_locked(manifest: pd.DataFrame, cache_dir: Path, plan: Preprocessing, workers: int,
                       progress: bool) -> PreprocessReport:
    old = read_index(cache_dir, missing_ok=True)
    old_rows = {str(r["subject_id"]): r for r in old.to_dict("records")}
    _write_settings(cache_dir, plan)
    size = plan.size

    fingerprints, todo, results, damaged = {}, [], {}, {}
    for _, row in manifest.iterrows():
        subject = row["subject_id"]
        fingerprints[subject] = _fingerprint(row, size)
        previous = old_rows.get(subject)
        if previous is not None and previous["fingerprint"] == fingerprints[subject]:
            problem = verify_case(cache_dir, previous)
            if problem is None:
                results[subject] = {"status": "cached", "reason": "" if _uses_mask(row) or not row["seg"]
                                    else WT_ONLY_NOTE, **{k: previous[k] for k in _CASE_FIELDS}}
                continue
            damaged[subject] = f"damaged cached case re-made ({problem})"
        todo.append((row.to_dict(), plan, str(cache_dir)))
    outcomes = process_map(_preprocess_one, todo, workers, desc="preprocess", unit="case", progress=progress,
                           initializer=_worker_init)
    for task, outcome in zip(todo, outcomes):
        subject = task[0]["subject_id"]
        if subject in damaged and outcome["status"] == "done":
            outcome["reason"] = "; ".join(r for r in (damaged[subject], outcome["reason"]) if r)
        results[subject] = outcome

    index_rows, report_rows = [], []
    for _, row in manifest.iterrows():
        subject = row["subject_id"]
        outcome = results[subject]
        report_rows.append({"subject_id": subject, "site": row["site"], "status": outcome["status"],
                            "reason": outcome["reason"]})
        if outcome["status"] == "skipped":
            for path in _case_paths(cache_dir, subject):
                path.unlink(missing_ok=True)
            continue
        index_rows.append({**{c: row[c] for c in ("subject_id", "dataset", "site", "split", *MARKERS, "age", "sex")},
                           "has_mask": _uses_mask(row), **{k: outcome[k] for k in _CASE_FIELDS},
                           "fingerprint": fingerprints[subject]})
    write_index(cache_dir, index_rows)
    report = PreprocessReport(cache_dir, pd.DataFrame(report_rows, columns=["subject_id", "site", "status",
                                                                            "reason"]))
    write_csv(cache_dir / "report.csv", report.cases)
    return report


# ----------------------------------------------------------------------------------------------- read
def read_index(cache_dir: str | Path, missing_ok: bool = False) -> pd.DataFrame:
    """The cache index (one row per cached case, :data:`INDEX_COLUMNS`).

    Raises :class:`CacheError` if absent unless ``missing_ok`` (then an empty frame).
    """
    path = Path(cache_dir) / "index.csv"
    if not path.is_file():
        if missing_ok:
            return pd.DataFrame(columns=INDEX_COLUMNS)
        raise CacheError(f"{cache_dir}: no preprocessed cache here (index.csv missing); "
                         "run `gliofed preprocess` first.")
    try:
        index = pd.read_csv(path, dtype={"subject_id": str, "site": str, "split": str, "sex": str, "affine": str,
                                         "image_sha256": str, "seg_sha256": str, "fingerprint": str},
                            keep_default_na=False, na_values={"age": [""]})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as error:
        raise CacheError(f"{path}: unreadable cache index ({type(error).__name__}); delete the cache folder and run "
                         "`gliofed preprocess` again.") from error
    return index


def cache_fingerprint(cache_dir: str | Path) -> str:
    """What a run trained and tested on, in 16 hex digits: SHA-256 over every cached case's subject, site, split,
    labels and the checksums of its files (content, not paths or times), in subject order. Equal for the same
    cases preprocessed the same way, different when any case, label, split or pixel differs.

    Args:
        cache_dir: the cache folder.

    Raises:
        CacheError: no cache index there.
    """
    index = read_index(cache_dir)
    columns = ["subject_id", "site", "split", *MARKERS, "has_mask", "image_sha256", "seg_sha256"]
    rows = index[columns].astype(str).sort_values("subject_id").to_numpy().tolist()
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def case_spacing(record: Mapping) -> tuple[float, float, float]:
    """Voxel spacing in mm along (D, H, W) of a cached case, from its index row."""
    return float(record["spacing_d"]), float(record["spacing_h"]), float(record["spacing_w"])


def case_affine(record: Mapping) -> np.ndarray:
    """4 x 4 affine of a cached case, (d, h, w, 1) voxel index -> world mm (RAS+), from its index row."""
    return np.asarray(json.loads(record["affine"]), dtype=np.float64)


def load_case(cache_dir: str | Path, subject: str, has_mask: bool = True, record: Mapping | None = None,
              verify: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Memory-map one cached case: (image float16 (4, D, H, W), seg uint8 (D, H, W) or None).

    Args:
        cache_dir: the cache folder.
        subject: the subject ID.
        has_mask: also load the segmentation (when the case has one).
        record: the case's index row (read from ``index.csv`` when None and ``verify``).
        verify: check the files' size and SHA-256 against the index (hashed once per file per process).

    Raises:
        CacheDamagedError: a file is missing, truncated or altered (names the subject and file).
    """
    cache_dir = Path(cache_dir)
    image_path, seg_path = _case_paths(cache_dir, subject)
    if verify:
        if record is None:
            index = read_index(cache_dir)
            rows = index[index["subject_id"] == str(subject)]
            if not len(rows):
                raise CacheError(f"{cache_dir}: subject {subject} is not in the cache index; "
                                 "run `gliofed preprocess` again.")
            record = rows.iloc[0].to_dict()
        record = {**record, "subject_id": str(subject), "has_mask": bool(has_mask) and _truthy(record.get("has_mask",
                                                                                                            True))}
        problem = verify_case(cache_dir, record)
        if problem is not None:
            raise CacheDamagedError(f"cache case {subject} is damaged ({problem}); run `gliofed preprocess` again.")
    if not image_path.is_file():
        raise CacheDamagedError(f"cache case {subject} is damaged ({image_path} is missing); "
                                "run `gliofed preprocess` again.")
    try:
        image = np.load(image_path, mmap_mode="r")
        seg = np.load(seg_path, mmap_mode="r") if has_mask and seg_path.is_file() else None
    except (ValueError, OSError, EOFError) as error:
        raise CacheDamagedError(f"cache case {subject} is damaged (unreadable {image_path.parent}: "
                                f"{type(error).__name__}); run `gliofed preprocess` again.") from error
    return image, seg
