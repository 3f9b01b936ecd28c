"""Where a model came from: the software that trained it (gliofed, torch and MONAI versions, the code's git commit)
and a fingerprint of the cases it was trained on. Recorded in every ``model.json`` (:mod:`gliofed.runs`) and read
back by the model card (:mod:`gliofed.card`).

Standard library only at import time: a Flower SuperNode imports :mod:`gliofed.runs`.

>>> record = software_provenance()                       # doctest: +SKIP
>>> record["versions"]["gliofed"], record["commit"]      # doctest: +SKIP
('0.1.0', {'sha': '0d2c...', 'dirty': False})
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path

__all__ = ["software_provenance", "git_commit", "file_sha256", "cases_fingerprint", "sources_fingerprint",
           "TRACKED_VERSIONS", "NUMERICAL_PACKAGES"]

#: the distributions whose versions a model records (they decide what the weights mean)
TRACKED_VERSIONS = ("torch", "monai", "numpy")
#: the distributions whose versions decide a benchmark run's numbers (:func:`sources_fingerprint`)
NUMERICAL_PACKAGES = ("torch", "monai", "numpy", "scipy", "scikit-learn", "pandas", "nibabel")

_PACKAGE = Path(__file__).resolve().parent


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit(package: str | Path = _PACKAGE) -> dict | None:
    """The commit of the checkout that ``package`` (default: gliofed's own source) is tracked in: ``{"sha": ...,
    "dirty": bool}`` (dirty: the package's files differ from that commit), or None outside a checkout, without
    git, or when the package merely sits in an unrelated repository (an installed copy under a checkout's ignored
    ``.venv``). Never raises."""
    package = Path(package).resolve()
    top = _git(package, "rev-parse", "--show-toplevel")
    if not top:
        return None
    try:
        relative = package.relative_to(Path(top).resolve())
    except ValueError:
        return None
    if _git(Path(top), "ls-files", "--error-unmatch", str(relative / "__init__.py")) is None:
        return None  # not this repository's source: an installed copy inside someone's checkout
    sha = _git(Path(top), "rev-parse", "HEAD")
    if not sha:
        return None
    status = _git(Path(top), "status", "--porcelain", "--untracked-files=no", "--", str(relative))
    return {"sha": sha, "dirty": bool(status)}


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def software_provenance() -> dict:
    """The software a model is being trained with: ``versions`` (gliofed, torch, MONAI, NumPy, Python),
    ``commit`` (:func:`git_commit`, None outside a checkout) and ``platform``."""
    from gliofed import __version__

    versions = {"gliofed": __version__, **{name: _version(name) for name in TRACKED_VERSIONS},
                "python": platform.python_version()}
    return {"versions": versions, "commit": git_commit(), "platform": platform.platform(terse=True)}


def sources_fingerprint(extra: Iterable[str | Path] = (), packages: Iterable[str] = NUMERICAL_PACKAGES) -> str:
    """SHA-256 over gliofed's Python sources and the ``extra`` files (e.g. the benchmark script that asks), each with
    its path relative to the folder holding the package, and the installed versions of ``packages`` ("absent" for
    one that is not installed): a benchmark run made by other code, or in another environment, has another
    fingerprint and is never reused."""
    root = _PACKAGE.parent
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")) + [Path(e).resolve() for e in extra]:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    for package in packages:
        digest.update(f"{package}=={_version(package) or 'absent'}\0".encode())
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (a manifest's fingerprint)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: what identifies a training case in the cache index: who it is, its labels, and its preprocessed files' checksums
FINGERPRINT_COLUMNS = ("subject_id", "site", "split", "idh", "codeletion", "mgmt", "grade", "has_mask",
                       "image_sha256", "seg_sha256")


def cases_fingerprint(rows: Iterable[dict]) -> dict:
    """A fingerprint of the cases a model was trained on (rows of the cache index, :data:`FINGERPRINT_COLUMNS`):
    the SHA-256 of the sorted rows, and the counts a card reports (cases per site, known labels per marker).

    Two trainings on the same cases, labels and preprocessed files give the same ``sha256``; any changed label,
    file or case changes it.
    """
    rows = [{key: ("" if row.get(key) is None else str(row.get(key))) for key in FINGERPRINT_COLUMNS}
            for row in rows]
    rows.sort(key=lambda row: (row["site"], row["subject_id"]))
    sites: dict[str, int] = {}
    for row in rows:
        sites[row["site"]] = sites.get(row["site"], 0) + 1
    known = {marker: sum(1 for row in rows if row[marker] not in ("", "-1", "-1.0", "nan"))
             for marker in ("idh", "codeletion", "mgmt", "grade")}
    masks = sum(1 for row in rows if row["has_mask"].lower() in ("true", "1", "1.0"))
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    return {"sha256": digest, "cases": len(rows), "sites": sites, "with_mask": masks, "known_labels": known}
