"""Files that never half-exist, and the one JSON encoder gliofed writes with.

Every file is written to a temporary file in the same folder, flushed to disk, then renamed: ``os.replace`` is
atomic on POSIX and Windows when source and target are on the same file system, so a reader sees either the old
file or the new one, never a truncated one; a killed writer leaves only a ``.<name>.<pid>.tmp`` file behind
(:data:`TMP_SUFFIX`), which the next writer may remove.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["TMP_SUFFIX", "atomic_write", "atomic_write_bytes", "atomic_write_text", "temp_path", "json_default",
           "to_json"]

#: suffix of every temporary file written by :func:`atomic_write`
TMP_SUFFIX = ".tmp"


def temp_path(path: str | Path, keep_suffix: bool = False) -> Path:
    """The temporary sibling of ``path`` this process writes before renaming (hidden, named with the PID).

    Args:
        path: the target file.
        keep_suffix: end the temporary name with ``path``'s suffixes too (``.nii.gz``: nibabel picks the format
            and the compression from the name).
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}{''.join(path.suffixes) if keep_suffix else ''}")


def atomic_write(path: str | Path, write: Callable[[Path], Any], keep_suffix: bool = False) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` writes a temporary sibling, which is flushed to disk and renamed over
    ``path``. On any failure the temporary file is removed and ``path`` keeps its earlier contents.

    Args:
        path: the target file; its folder must exist.
        write: writes the complete file at the path it is given (e.g. ``lambda tmp: nib.save(image, tmp)``).
        keep_suffix: see :func:`temp_path`.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    tmp = temp_path(path, keep_suffix)
    try:
        write(tmp)
        with open(tmp, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_bytes(data: bytes) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as stream:
            stream.write(data)

    return write


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`). Returns ``path`` as a Path."""
    return atomic_write(path, _write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text. Returns ``path`` as a Path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_default(value: Any) -> Any:
    """The ``default=`` of every JSON gliofed writes: NumPy scalars and arrays as numbers and lists, paths as strings;
    anything else is an error (never silently a string)."""
    import numpy as np  # NumPy is loaded wherever its values are written; a bare import of this module stays light

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"a value of type {type(value).__name__} is not JSON-serialisable")


def to_json(value: Any, **kwargs) -> str:
    """``json.dumps(value, default=json_default, **kwargs)``."""
    return json.dumps(value, default=json_default, **kwargs)
