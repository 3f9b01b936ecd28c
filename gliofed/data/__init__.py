"""Data: manifest, synthetic cohort, checking, preprocessing cache and Dataset.

Exports are resolved lazily (PEP 562), so that importing one submodule does not load the others. The label vocabulary
(contrasts, markers, regions) is :mod:`gliofed.vocab`, not this package: the server side has no import path to site
data (tested).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CaseDataset": "dataset", "MODALITY_SETS": "dataset", "collate_cases": "dataset",
    "PreprocessReport": "cache", "load_case": "cache", "preprocess": "cache", "read_index": "cache",
    "read_settings": "cache", "read_plan": "cache", "check_plan": "cache", "plan_for_manifest": "plan",
    "case_spacing": "cache", "case_affine": "cache", "INDEX_COLUMNS": "cache",
    "process_map": "parallel", "unsafe_name": "manifest",
    "CheckReport": "check", "Problem": "check", "check_manifest": "check",
    "COLUMNS": "manifest",
    "read_manifest": "manifest", "write_manifest": "manifest",
    "assign_splits": "split",
    "SITES": "synth", "make_cohort": "synth",
    "patient_characteristics": "tables", "site_heterogeneity": "tables",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"gliofed.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'gliofed.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
