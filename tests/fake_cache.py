"""A fake on-disk cache of given shape (for size measurements without preprocessing)."""

from pathlib import Path

import numpy as np

from gliofed.data.cache import write_index


def write_fake_cache(folder: Path, cases: int, shape: tuple[int, int, int, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (folder / "cases").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(cases):
        subject = f"fake_{i:03d}"
        np.save(folder / "cases" / f"{subject}.image.npy", rng.standard_normal(shape).astype(np.float16))
        seg = np.zeros(shape[1:], np.uint8)
        seg[shape[1] // 3: shape[1] // 2, 40:60, 40:60] = 2
        seg[shape[1] // 3 + 2: shape[1] // 2 - 2, 45:55, 45:55] = 3
        np.save(folder / "cases" / f"{subject}.seg.npy", seg)
        rows.append({"subject_id": subject, "dataset": "fake", "site": "s0", "split": "train", "idh": i % 2,
                     "codeletion": 0, "mgmt": 1, "grade": 2, "age": 50, "sex": "M", "has_mask": True,
                     "depth": shape[1], "height": shape[2], "width": shape[3], "fingerprint": "fake"})
    write_index(folder, rows)  # adds the file sizes and checksums the cache verifies
    return folder
