"""Small prediction / reference pairs for the BraTS scores: a found tumour, a missed lesion, a spurious lesion,
nothing predicted, a spurious region on an empty reference, a region absent from both, prediction and reference
apart, lesions merged by the prediction, speckle, and an anisotropic grid. NumPy only: the same module feeds
``benchmarks/brats_evaluation_reference.py``, which runs the official package in its own environment.

Arrays are in-memory classes (0 background, 1 core, 2 oedema, 3 enhancing) on deliberately odd shapes.
"""

from __future__ import annotations

import numpy as np

SHAPE = (23, 20, 17)


def tumour(shape, centre, radius: float, spacing=(1.0, 1.0, 1.0), et: bool = True) -> np.ndarray:
    """A ball of oedema (class 2) around an enhancing shell (3) around a necrotic centre (1); without ``et`` the
    shell is core (1)."""
    grid = np.indices(shape).astype(float)
    distance = np.sqrt(sum(((grid[i] - centre[i]) * spacing[i]) ** 2 for i in range(3)))
    classes = np.zeros(shape, np.uint8)
    classes[distance <= radius] = 2
    classes[distance <= 0.6 * radius] = 3 if et else 1
    classes[distance <= 0.3 * radius] = 1
    return classes


def cases() -> dict[str, tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """name -> (prediction, reference, spacing in mm)."""
    one = (1.0, 1.0, 1.0)
    out = {}
    truth = tumour(SHAPE, (10, 9, 8), 5.0)
    out["found_shifted"] = (tumour(SHAPE, (11, 9, 7), 4.5), truth, one)
    two = np.maximum(tumour(SHAPE, (6, 6, 6), 3.5), tumour(SHAPE, (17, 14, 11), 3.2))
    out["missed_lesion"] = (tumour(SHAPE, (6, 7, 6), 3.5), two, one)
    spurious = tumour(SHAPE, (10, 9, 8), 4.8)
    spurious[19:21, 2:4, 13:15] = 3
    out["spurious_lesion"] = (spurious, truth, one)
    out["nothing_predicted"] = (np.zeros(SHAPE, np.uint8), truth, one)
    blob = np.zeros(SHAPE, np.uint8)
    blob[3:6, 12:15, 4:7] = 2
    blob[4, 13, 5] = 3
    out["empty_reference"] = (blob, np.zeros(SHAPE, np.uint8), one)
    out["no_enhancing_anywhere"] = (tumour(SHAPE, (10, 10, 8), 4.0, et=False), tumour(SHAPE, (10, 9, 8), 4.5, et=False),
                                    one)
    out["apart"] = (tumour(SHAPE, (4, 4, 4), 2.5), tumour(SHAPE, (18, 15, 12), 2.5), one)
    near = np.maximum(tumour(SHAPE, (8, 9, 8), 3.0), tumour(SHAPE, (15, 9, 8), 3.0))
    out["merged_by_prediction"] = (tumour(SHAPE, (11, 9, 8), 6.0), near, one)
    rng = np.random.default_rng(7)
    speckle = tumour(SHAPE, (10, 9, 8), 5.0)
    noise = rng.random(SHAPE) < 0.01
    speckle[noise] = rng.choice(np.array([1, 2, 3], np.uint8), size=int(noise.sum()))
    out["speckle"] = (speckle, truth, one)
    spacing = (1.0, 1.5, 2.5)
    out["anisotropic"] = (tumour(SHAPE, (11, 8, 7), 7.0, spacing), tumour(SHAPE, (10, 9, 6), 8.0, spacing), spacing)
    return out

