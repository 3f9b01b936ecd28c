"""Files that never half-exist: write to a temporary file in the same folder, flush to disk, then rename.

``os.replace`` is atomic on POSIX and Windows when source and target are on the same file system, so a
reader sees either the old file or the new one, never a truncated one; a killed writer leaves only a
``.<name>.<pid>.tmp`` file behind (:data:`TMP_SUFFIX`), which the next writer may remove.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["TMP_SUFFIX", "atomic_write_bytes", "atomic_write_text", "temp_path"]

#: suffix of every temporary file written by :func:`atomic_write_bytes`
TMP_SUFFIX = ".tmp"


def temp_path(path: str | Path) -> Path:
    """The temporary sibling of ``path`` this process writes before renaming (hidden, named with the PID)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename).

    Args:
        path: the target file; its folder must exist.
        data: the complete contents.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text. Returns ``path`` as a Path."""
    return atomic_write_bytes(path, text.encode("utf-8"))
