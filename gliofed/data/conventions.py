"""How each BraTS-style release labels its masks and names its files.

A **label convention** says which value on disk means which tumour class. It belongs to a dataset, not to a case:
every mask of a dataset is read the same way, and ``gliofed predict`` writes its masks back in the convention of the
cases it was given. The manifest records it per row in the optional column ``label_convention`` (blank =
``brats``); ``gliofed curate`` detects it from the file names and confirms it from the mask values.

============ ======================================================================= ==================
convention   labels on disk                                                           used by
============ ======================================================================= ==================
``brats``    0 background, 1 necrotic core (NCR), 2 oedema (ED), 4 enhancing (ET)     BraTS 2017-2021,
                                                                                      FeTS, UPENN, TCGA
``brats2023`` 0, 1 non-enhancing / necrotic core (NETC), 2 oedema (SNFH), 3 ET        BraTS 2023+ (GLI)
``brats2024`` as ``brats2023`` plus 4 resection cavity (RC: not tumour, read as 0)    BraTS 2024 post-
                                                                                      treatment glioma
``msd``      0, 1 oedema, 2 non-enhancing tumour, 3 enhancing tumour                  MSD Task01
============ ======================================================================= ==================

In memory every convention becomes the same classes (:data:`gliofed.vocab.SEG_CLASSES`): 0 background, 1 necrotic /
non-enhancing core, 2 oedema, 3 enhancing.

>>> CONVENTIONS["brats2023"].decode(np.array([0, 1, 2, 3])).tolist()
[0, 1, 2, 3]
>>> CONVENTIONS["msd"].encode(np.array([0, 1, 2, 3])).tolist()
[0, 2, 1, 3]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gliofed.errors import DataError

__all__ = ["LabelConvention", "CONVENTIONS", "DEFAULT_CONVENTION", "convention", "FILE_SUFFIXES",
           "naming_of", "convention_of_files"]


@dataclass(frozen=True)
class LabelConvention:
    """One way of labelling tumour masks on disk.

    Args:
        name: the manifest's ``label_convention`` value.
        description: one line for reports and messages.
        to_class: label on disk -> in-memory class (0 background, 1 core, 2 oedema, 3 enhancing). Labels that are
            not tumour (BraTS 2024's resection cavity) map to 0.
    """

    name: str
    description: str
    to_class: Mapping[int, int]

    @property
    def values(self) -> frozenset[int]:
        """The labels a mask of this convention may hold."""
        return frozenset(self.to_class)

    @property
    def shown(self) -> str:
        """The allowed labels as ``{0, 1, 2, 4}``."""
        return "{" + ", ".join(str(v) for v in sorted(self.values)) + "}"

    def decode(self, labels: np.ndarray, where: str = "mask") -> np.ndarray:
        """Labels on disk -> in-memory classes (uint8, same shape).

        Raises:
            DataError: a value that is not a label of this convention (names ``where``).
        """
        labels = np.asarray(labels)
        values = np.unique(labels)
        bad = [v for v in values.tolist() if v not in self.to_class]
        if bad:
            shown = ", ".join(f"{v:g}" for v in bad[:5])
            raise DataError(f"{where}: segmentation values {shown} are not labels of the {self.name} convention "
                            f"{self.shown}.")
        table = np.zeros(max(self.to_class) + 1, dtype=np.uint8)
        for label, cls in self.to_class.items():
            table[label] = cls
        return table[labels.astype(np.int64)]

    def encode(self, classes: np.ndarray) -> np.ndarray:
        """In-memory classes (0..3) -> labels on disk (uint8). A class that several labels share (background and
        BraTS 2024's resection cavity) is written as the first, i.e. 0."""
        table = np.zeros(4, dtype=np.uint8)
        for label, cls in sorted(self.to_class.items(), reverse=True):
            table[cls] = label
        return table[np.asarray(classes).astype(np.int64)]


CONVENTIONS: dict[str, LabelConvention] = {
    "brats": LabelConvention("brats", "BraTS 2017-2021: 1 necrotic core, 2 oedema, 4 enhancing tumour",
                             {0: 0, 1: 1, 2: 2, 4: 3}),
    "brats2023": LabelConvention("brats2023", "BraTS 2023+: 1 non-enhancing / necrotic core, 2 oedema (SNFH), "
                                 "3 enhancing tumour", {0: 0, 1: 1, 2: 2, 3: 3}),
    "brats2024": LabelConvention("brats2024", "BraTS 2024 post-treatment: as brats2023, and 4 resection cavity "
                                 "(not tumour, read as background)", {0: 0, 1: 1, 2: 2, 3: 3, 4: 0}),
    "msd": LabelConvention("msd", "MSD Task01: 1 oedema, 2 non-enhancing tumour, 3 enhancing tumour",
                           {0: 0, 1: 2, 2: 1, 3: 3}),
}
#: the convention of a blank ``label_convention`` (every manifest written before the column existed)
DEFAULT_CONVENTION = "brats"


def convention(name: str | None) -> LabelConvention:
    """The convention called ``name`` (blank or None: :data:`DEFAULT_CONVENTION`).

    Raises:
        DataError: an unknown name.
    """
    key = (str(name).strip().lower() if name is not None else "") or DEFAULT_CONVENTION
    if key not in CONVENTIONS:
        raise DataError(f"label convention {name!r} is not one of {', '.join(CONVENTIONS)}.")
    return CONVENTIONS[key]


#: file-name suffix of each contrast (and the mask) in the two BraTS namings: ``<case>_<suffix>.nii.gz`` up to 2021,
#: ``<case>-<suffix>.nii.gz`` from 2023 (t1n native T1, t1c post-contrast T1, t2w T2, t2f T2-FLAIR)
FILE_SUFFIXES: dict[str, dict[str, str]] = {
    "brats": {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"},
    "brats2023": {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"},
}
_SEPARATOR = {"brats": "_", "brats2023": "-"}


def naming_of(path: str | Path) -> str | None:
    """``"brats2023"`` for a BraTS 2023+ file name (``...-t1n.nii.gz``), ``"brats"`` for the older naming
    (``..._t1ce.nii.gz``), None for anything else.

    >>> naming_of("BraTS-GLI-00000-000-t2f.nii.gz"), naming_of("Brats18_CBICA_AAB_1_flair.nii"), naming_of("x.nii")
    ('brats2023', 'brats', None)
    """
    name = Path(path).name.lower()
    for suffix in (".nii.gz", ".nii"):
        name = name.removesuffix(suffix)
    for naming in ("brats2023", "brats"):  # the new suffixes first: "-t1c" must not read as "_t1..."
        if any(name.endswith(_SEPARATOR[naming] + s) for s in FILE_SUFFIXES[naming].values() if s != "seg"):
            return naming
    return None


def convention_of_files(paths: Iterable[str | Path]) -> str:
    """The label convention that a case's file names imply: ``brats2023`` when they follow the BraTS 2023+ naming,
    else :data:`DEFAULT_CONVENTION` (used by ``gliofed predict`` for scans given one by one)."""
    namings = {naming_of(p) for p in paths if p}
    return "brats2023" if "brats2023" in namings else DEFAULT_CONVENTION
