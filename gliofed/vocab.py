"""gliofed's vocabulary: the names every layer agrees on (contrasts, markers, regions, splits, site tasks, payload
kinds). Standard library only, so that the server side, the data pipeline and a Flower app can all import it without
pulling in pandas, torch or a site's data (compare MONAI's ``monai/utils/enums.py``).

>>> MARKERS
('idh', 'codeletion', 'mgmt', 'grade')
>>> REGIONS["TC"]
(1, 3)
"""

from __future__ import annotations

__all__ = ["MODALITIES", "MARKER_CLASSES", "MARKERS", "SEG_CLASSES", "REGIONS", "SPLITS", "TASKS", "PAYLOAD_KINDS",
           "REPLY_KINDS", "DISTILL_INITS"]

#: input contrasts, in the channel order of every tensor (C, D, H, W)
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

#: marker -> human-readable class names, index = code (-1 = unknown, ignored by losses and metrics)
MARKER_CLASSES: dict[str, tuple[str, ...]] = {
    "idh": ("wildtype", "mutant"),
    "codeletion": ("intact", "co-deleted"),
    "mgmt": ("unmethylated", "methylated"),
    "grade": ("II", "III", "IV"),
}
#: the markers, in the column order of every label vector
MARKERS: tuple[str, ...] = tuple(MARKER_CLASSES)

#: segmentation classes in memory, index = class (BraTS label 4, or 3 in BraTS 2023+, becomes 3)
SEG_CLASSES: tuple[str, ...] = ("background", "necrotic / non-enhancing core", "oedema", "enhancing tumour")
#: evaluated regions -> the in-memory classes they join: whole tumour, tumour core, enhancing tumour
REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}

#: a manifest's splits
SPLITS: tuple[str, ...] = ("train", "test", "external")

#: what a server may ask of a site (``describe``: case count and bytes; ``train``: local training; ``distill``:
#: soft labels and a condensed synthetic set; ``evaluate``: the global model's metrics on the site's held-out cases)
TASKS: tuple[str, ...] = ("describe", "train", "distill", "evaluate")

#: every kind of payload that may cross between a site and the server
PAYLOAD_KINDS: tuple[str, ...] = ("model", "weights_update", "distilled_set", "raw_cases", "site_info", "site_metrics",
                                  "nothing")

#: task -> the payload kind a site must answer it with
REPLY_KINDS: dict[str, str] = {"train": "weights_update", "distill": "distilled_set", "describe": "site_info",
                               "evaluate": "site_metrics"}

#: how distillation may start its synthetic volumes (``real_unsafe`` copies patients: teaching only, a site's operator
#: must allow it)
DISTILL_INITS: tuple[str, ...] = ("noise", "class_stats", "real_unsafe")


if __name__ == "__main__":  # `python -m gliofed.vocab`: the vocabulary as JSON
    import json

    print(json.dumps({name: globals()[name] for name in __all__}, indent=1))
