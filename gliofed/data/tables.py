"""Cohort tables in the layout of the seed's Table 1 (patient characteristics) and Table 2 (sites)."""

from __future__ import annotations

import pandas as pd

from gliofed.vocab import MARKER_CLASSES, MARKERS

__all__ = ["patient_characteristics", "site_heterogeneity"]

_POSITIVE = {"idh": "IDH mutant", "codeletion": "1p/19q co-deleted", "mgmt": "MGMT methylated"}


def _count(series: pd.Series, code: int) -> str:
    n = int((series == code).sum())
    return f"{n} ({100 * n / max(len(series), 1):.0f} %)"


def patient_characteristics(manifest: pd.DataFrame, by: str = "split") -> pd.DataFrame:
    """Seed Table 1: age, sex, grade and each marker (with unknown counts), one column per ``by`` group.

    Args:
        manifest: a manifest in memory encoding (:func:`gliofed.data.manifest.read_manifest`).
        by: grouping column (default ``split``), plus an ``all`` column.

    Returns:
        DataFrame indexed by characteristic, values "n (%)" strings.
    """
    groups = [("all", manifest)] + [(str(k), g) for k, g in manifest.groupby(by, sort=True)]
    table = {}
    for name, group in groups:
        column = {"subjects": str(len(group))}
        ages = group["age"].dropna()
        column["age, mean (SD)"] = f"{ages.mean():.1f} ({ages.std():.1f})" if len(ages) else "n/a"
        column["age unknown"] = _count(group["age"].isna(), True)
        for sex in ("M", "F"):
            column[f"sex {sex}"] = _count(group["sex"], sex)
        for code, grade in enumerate(MARKER_CLASSES["grade"]):
            column[f"grade {grade}"] = _count(group["grade"], code)
        column["grade unknown"] = _count(group["grade"], -1)
        for marker in ("idh", "codeletion", "mgmt"):
            column[_POSITIVE[marker]] = _count(group[marker], 1)
            column[f"{marker} negative"] = _count(group[marker], 0)
            column[f"{marker} unknown"] = _count(group[marker], -1)
        column["with tumour mask"] = _count(group["seg"] != "", True)
        table[name] = column
    return pd.DataFrame(table)


def site_heterogeneity(manifest: pd.DataFrame) -> pd.DataFrame:
    """Seed Table 2: per site, cases, grade II/III/IV, marker positives, masks and unknown-label shares."""
    rows = {}
    for site, group in manifest.groupby("site", sort=True):
        row = {"cases": len(group), "masks": int((group["seg"] != "").sum())}
        for code, grade in enumerate(MARKER_CLASSES["grade"]):
            row[f"grade {grade}"] = int((group["grade"] == code).sum())
        for marker in ("idh", "codeletion", "mgmt"):
            row[_POSITIVE[marker]] = int((group[marker] == 1).sum())
        for marker in MARKERS:
            row[f"{marker} unknown %"] = round(100 * float((group[marker] < 0).mean()), 1)
        rows[site] = row
    return pd.DataFrame(rows).T.rename_axis("site")
