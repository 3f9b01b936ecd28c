"""Files that never half-exist, the one JSON encoder and the one CSV writer gliofed writes with, and the one
folder lock.

Every file is written to a temporary file in the same folder, flushed to disk, then renamed: ``os.replace`` is
atomic on POSIX and Windows when source and target are on the same file system, so a reader sees either the old
file or the new one, never a truncated one; a killed writer leaves only a ``.<name>.<pid>.tmp`` file behind
(:data:`TMP_SUFFIX`), which the next writer may remove. A full disk (or quota) while writing is one
:class:`~gliofed.errors.WriteError` sentence, and the earlier file stays as it was; files that belong together
(weights and their settings) are written by :func:`atomic_write_group`: all or none.

Every JSON file is strict JSON (:func:`to_json`: no bare ``NaN``); every CSV file has its text cells neutralised
against spreadsheet formulas (:func:`csv_safe`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from gliofed.errors import GliofedError, WriteError

__all__ = ["TMP_SUFFIX", "atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_group",
           "temp_path", "json_default", "to_json", "csv_safe", "write_csv", "folder_lock", "FORMULA_PREFIXES"]

#: errors of a file system that has no room left (disk full, quota exceeded, file too large)
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

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


def _no_room(error: BaseException | None) -> OSError | None:
    """The error in ``error``'s chain that says the file system has no room left, or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _NO_ROOM:
            return error
        error = error.__cause__ or error.__context__
    return None


def atomic_write_group(files: Sequence[tuple[str | Path, Callable[[Path], Any]]],
                       keep_suffix: bool = False) -> list[Path]:
    """Write several files that belong together (e.g. weights and their settings) all or none: every temporary file
    is written and flushed first, and only then are they renamed over their targets. On any failure while writing,
    every temporary file is removed and each target keeps its earlier contents.

    Args:
        files: ``(path, write)`` pairs; ``write(tmp)`` writes the complete file at the path it is given (e.g.
            ``lambda tmp: nib.save(image, tmp)``). Each target's folder must exist.
        keep_suffix: see :func:`temp_path`.

    Returns:
        the targets as Paths.

    Raises:
        WriteError: the disk (or the user's quota) is full: one sentence naming the file; nothing was replaced.
    """
    pairs = [(Path(path), temp_path(path, keep_suffix), write) for path, write in files]
    current = pairs[0][0] if pairs else None
    try:
        for path, tmp, write in pairs:
            current = path
            write(tmp)
            with open(tmp, "rb+") as stream:
                os.fsync(stream.fileno())
        for path, tmp, _ in pairs:
            current = path
            os.replace(tmp, path)
    except Exception as error:
        cause = _no_room(error)
        if cause is not None:
            kept = "the earlier file is unchanged" if len(pairs) == 1 else "the earlier files are unchanged"
            raise WriteError(f"{current}: could not be written because the disk is full ({cause.strerror or cause}); "
                             f"{kept}.") from error
        raise
    finally:
        for _, tmp, _ in pairs:
            tmp.unlink(missing_ok=True)
    return [path for path, _, _ in pairs]


def atomic_write(path: str | Path, write: Callable[[Path], Any], keep_suffix: bool = False) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` writes a temporary sibling, which is flushed to disk and renamed over
    ``path``. On any failure the temporary file is removed and ``path`` keeps its earlier contents.

    Args:
        path: the target file; its folder must exist.
        write: writes the complete file at the path it is given (e.g. ``lambda tmp: nib.save(image, tmp)``).
        keep_suffix: see :func:`temp_path`.

    Returns:
        ``path`` as a Path.

    Raises:
        WriteError: the disk is full (see :func:`atomic_write_group`).
    """
    return atomic_write_group([(path, write)], keep_suffix)[0]


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


def _finite_tree(value: Any, nan: str, where: str = "") -> Any:
    """``value`` with every NaN / Inf number replaced by None (``nan="null"``) or refused (``nan="error"``)."""
    import numpy as np

    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        if nan == "error":
            raise ValueError(f"{where or 'a value'} is {value}, which strict JSON cannot hold")
        return None
    if isinstance(value, dict):
        return {k: _finite_tree(v, nan, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_tree(v, nan, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def to_json(value: Any, nan: str = "null", **kwargs) -> str:
    """Strict JSON (RFC 8259) of ``value``: ``json.dumps(value, default=json_default, allow_nan=False, **kwargs)``.

    Args:
        value: dicts, lists, numbers, strings, NumPy scalars and arrays, paths.
        nan: what a NaN or infinite number becomes: ``"null"`` (default: an unknown value, e.g. an AUC without both
            classes) or ``"error"`` (raise ValueError naming where it sits, for values that must be finite).
        kwargs: further ``json.dumps`` options (``indent``, ``sort_keys`` ...).

    Returns:
        the JSON text; never contains a bare ``NaN`` or ``Infinity``.
    """
    if nan not in ("null", "error"):
        raise ValueError(f"nan must be 'null' or 'error', not {nan!r}")
    return json.dumps(_finite_tree(value, nan), default=json_default, allow_nan=False, **kwargs)


# CSV ------------------------------------------------------------------------------------------------------------
#: a text cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_safe(frame):
    """A copy of a pandas DataFrame whose text cells cannot run as spreadsheet formulas: a string cell starting with
    ``= + - @`` (or a tab or carriage return) that is not a number gets a leading ``'`` (OWASP's advice). Numbers,
    and strings that are numbers such as ``-1``, stay as they are; so do names gliofed accepts (subject IDs and
    sites start with a letter or digit). The index and the column names are treated like cells.

    Args:
        frame: the table to write.

    Returns:
        the neutralised copy.
    """
    def cell(value):
        if isinstance(value, str) and value.startswith(FORMULA_PREFIXES) and not _is_number(value):
            return "'" + value
        return value

    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or str(out[column].dtype) in ("string", "str"):
            out[column] = out[column].map(cell)
    out.columns = [cell(c) for c in out.columns]
    if out.index.dtype == object:
        out.index = out.index.map(cell)
    return out


def write_csv(path: str | Path, frame, index: bool = False, **kwargs) -> Path:
    """Write a pandas DataFrame as CSV the one way gliofed writes every CSV: cells neutralised (:func:`csv_safe`),
    atomically (:func:`atomic_write`).

    Args:
        path: the target file; its folder must exist.
        frame: the table.
        index: also write the index (default False).
        kwargs: further ``DataFrame.to_csv`` options.

    Returns:
        ``path`` as a Path.
    """
    safe = csv_safe(frame)
    return atomic_write(path, lambda tmp: safe.to_csv(tmp, index=index, **kwargs))


# the folder lock ------------------------------------------------------------------------------------------------
#: lock files this process holds, and how many times (a re-entrant lock is taken again by its own process)
_HELD: dict[str, int] = {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: str | Path, who: str, what: str, error: type[GliofedError] = GliofedError,
                name: str = ".lock", reentrant: bool = False) -> Iterator[Path]:
    """Hold ``folder/<name>`` (PID, host and who) while a command writes ``folder``: the cache's and the run folder's
    lock.

    A lock of a live process is refused with ``error``; a lock left by a dead process on this host (a killed
    command) is taken over. (Two writers taking over the same stale lock at the same instant could both proceed;
    the lock guards against a second run, not against that race.) The lock file is created complete, by a hard link
    of a written temporary file, so a reader never sees a half-written lock.

    Args:
        folder: the folder (created).
        who: the command that writes it (``"preprocess"``, ``"gliofed train"``), recorded in the lock so that
            another writer's refusal names the holder.
        what: the folder's kind, for the message (``"cache"``, ``"run folder"``).
        error: the exception raised when another live process holds the lock.
        name: the lock file's name (default ``.lock``).
        reentrant: when this process already holds the lock, take it again (released by the outermost holder);
            otherwise that is refused like any other holder.

    Yields:
        the lock file's path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / name
    key = str(lock.resolve())
    if reentrant and _HELD.get(key):
        _HELD[key] += 1
        try:
            yield lock
        finally:
            _HELD[key] -= 1
        return
    host = socket.gethostname()
    tmp = atomic_write_text(folder / f"{name}.{os.getpid()}{TMP_SUFFIX}",
                            json.dumps({"pid": os.getpid(), "host": host, "who": who}))
    try:
        for _attempt in range(3):
            try:
                os.link(tmp, lock)
                break
            except FileExistsError:
                try:
                    holder = json.loads(lock.read_text())
                    pid, holder_host = int(holder["pid"]), str(holder["host"])
                    holder_who = str(holder.get("who") or who)
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                except (ValueError, KeyError, TypeError, AttributeError):
                    pid, holder_host, holder_who = -1, host, who  # unreadable: not written by a live gliofed
                if holder_host != host or (pid > 0 and _pid_alive(pid)):
                    where = f"PID {pid}" + ("" if holder_host == host else f" on {holder_host}")
                    raise error(f"{folder}: another {holder_who} ({where}) is writing this {what}; wait for it, or "
                                f"delete {lock} if it is no longer running.") from None
                lock.unlink(missing_ok=True)  # stale: its writer is dead
        else:
            raise error(f"{folder}: could not take the {what} lock {lock}; try again.")
    finally:
        tmp.unlink(missing_ok=True)
    _HELD[key] = 1
    try:
        yield lock
    finally:
        _HELD.pop(key, None)
        lock.unlink(missing_ok=True)
