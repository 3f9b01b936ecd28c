"""Sites from one dataset: a FeTS-style partitioning CSV (``gliofed curate --partition FILE``).

The FeTS challenges federate BraTS by institution with CSV files of two columns, ``Partition_ID`` and
``Subject_ID`` (any order, any further columns ignored): ``partitioning_1.csv`` is the natural split by originating
institution (17 partitions in FeTS 2021), ``partitioning_2.csv`` further splits the largest institutions at their
median whole-tumour size. Each partition becomes a site named ``partition_<ID>``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gliofed.data.manifest import unsafe_name
from gliofed.data.sources.common import CuratedCase, find_column, read_table
from gliofed.errors import DataError

__all__ = ["Partition", "read_partition", "apply_partition"]


@dataclass(frozen=True)
class Partition:
    """A partitioning file read: subject ID -> site name, in file order."""

    path: Path
    sites: dict[str, str]


def _site_name(value: str, path: Path, row: int) -> str:
    text = value.strip()
    if not text:
        raise DataError(f"{path}: row {row}: blank Partition_ID.")
    name = f"partition_{int(text)}" if re.fullmatch(r"\d+", text) else text
    reason = unsafe_name(name)
    if reason is not None:
        raise DataError(f"{path}: row {row}: Partition_ID {text!r} cannot name a site ({reason}).")
    return name


def read_partition(path: str | Path) -> Partition:
    """Read a partitioning CSV (columns ``Partition_ID`` and ``Subject_ID``, matched case-insensitively).

    Numeric partition IDs become sites ``partition_<N>`` (``01`` -> ``partition_1``); other IDs are used as site names
    when they are safe names.

    Raises:
        DataError: missing file or column, a blank ID, or a subject listed twice.
    """
    path = Path(path)
    table = read_table(path, header_row=0)
    partition = find_column(table, "Partition_ID", "PartitionID", "Partition", path=path)
    subject = find_column(table, "Subject_ID", "SubjectID", "Subject", path=path)
    sites: dict[str, str] = {}
    for number, (pid, sid) in enumerate(zip(table[partition], table[subject]), start=2):
        sid = str(sid).strip()
        if not sid:
            raise DataError(f"{path}: row {number}: blank Subject_ID.")
        site = _site_name(str(pid), path, number)
        if sid in sites and sites[sid] != site:
            raise DataError(f"{path}: row {number}: subject {sid} is listed in two partitions ({sites[sid]} and "
                            f"{site}).")
        sites[sid] = site
    if not sites:
        raise DataError(f"{path}: the partition file lists no subjects.")
    return Partition(path, sites)


def apply_partition(cases: Sequence[CuratedCase], partition: Partition) -> list[str]:
    """Give every case the site its partition names; exclude (with the reason) cases the file does not list.

    A case is found by its subject ID, or by its source ID or an alias when those are listed.

    Returns:
        the subject IDs the file lists that no case has (reported, never guessed).
    """
    found = set()
    for case in cases:
        key = next((k for k in (case.subject_id, case.source_id, *sorted(case.aliases)) if k in partition.sites),
                   None)
        if key is None:
            case.exclude(f"not listed in the partition file {partition.path.name}")
            continue
        case.site = partition.sites[key]
        found.add(key)
    return [sid for sid in partition.sites if sid not in found]
