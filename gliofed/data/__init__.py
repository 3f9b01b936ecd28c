"""Data: manifest, synthetic cohort, checking, preprocessing cache and Dataset."""

from gliofed.data.cache import PreprocessReport, load_case, preprocess, read_index
from gliofed.data.check import CheckReport, Problem, check_manifest
from gliofed.data.dataset import MODALITY_SETS, CaseDataset, collate_cases
from gliofed.data.manifest import COLUMNS, MARKER_CLASSES, MARKERS, MODALITIES, read_manifest, write_manifest
from gliofed.data.split import assign_splits
from gliofed.data.synth import PRESETS, SITES, make_cohort
from gliofed.data.tables import patient_characteristics, site_heterogeneity

__all__ = [
    "COLUMNS", "MARKERS", "MARKER_CLASSES", "MODALITIES", "MODALITY_SETS", "PRESETS", "SITES",
    "CaseDataset", "CheckReport", "PreprocessReport", "Problem",
    "assign_splits", "check_manifest", "collate_cases", "load_case", "make_cohort", "patient_characteristics",
    "preprocess", "read_index", "read_manifest", "site_heterogeneity", "write_manifest",
]
