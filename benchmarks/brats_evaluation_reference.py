"""Score the fixtures of ``tests/data/brats_metric_fixtures.py`` with the official BraTS metric package and write the
values to ``tests/data/brats_evaluation_reference.json``; ``tests/test_brats_metrics.py`` checks gliofed's
:mod:`gliofed.brats_metrics` against them.

``brats-evaluation`` pins pandas < 3 and numpy < 2.3, so it cannot live in gliofed's environment. Run this script in
a throwaway one (it needs NumPy and nibabel besides the package, not gliofed)::

    python3 -m venv /tmp/bratsref && /tmp/bratsref/bin/pip install brats-evaluation==0.0.10 nibabel
    /tmp/bratsref/bin/python benchmarks/brats_evaluation_reference.py

Each fixture is written as two NIfTI files with BraTS 2023 labels (the package's ``gli`` configuration: 1 NETC,
2 SNFH, 3 ET) and an affine whose diagonal is the fixture's spacing, then scored with
``brats_evaluation.evaluate_single_exam`` exactly as the package's command line does. Recorded per region: the
fields the package's ``parse_seg_results`` reports (tp, fp, fn, rq = F1, global Dice and HD95 with infinity as
373, lesion-wise Dice and HD95 = panoptica's sq_dsc and sq_hd95).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "brats_evaluation_reference.json"


def _value(value):
    if value is None:
        return None
    value = float(value)
    return "nan" if math.isnan(value) else ("inf" if math.isinf(value) else value)


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from brats_evaluation import config_path, evaluate_single_exam
    from panoptica import Panoptica_Evaluator

    from tests.data.brats_metric_fixtures import cases

    evaluator = Panoptica_Evaluator.load_from_config(str(config_path("gli")))
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, (prediction, reference, spacing) in cases().items():
            affine = np.diag([*spacing, 1.0])
            paths = {}
            for kind, array in (("pred", prediction), ("ref", reference)):
                paths[kind] = str(Path(folder) / f"{name}_{kind}.nii.gz")
                nib.save(nib.Nifti1Image(array.astype(np.uint8), affine), paths[kind])
            scored = evaluate_single_exam(paths["pred"], paths["ref"], name, evaluator)
            if "error" in scored:
                raise RuntimeError(f"{name}: {scored['error']}")
            results[name] = {}
            for region in ("wt", "tc", "et"):
                r = scored[region]
                hd95 = r.get("global_bin_hd95")
                results[name][region.upper()] = {
                    "tp": r["tp"], "fp": r["fp"], "fn": r["fn"], "f1": _value(r["rq"]),
                    "dice": _value(r["global_bin_dsc"]),
                    "hd95": _value(373 if hd95 is not None and math.isinf(hd95) else hd95),
                    "lesion_dice": _value(r["sq_dsc"]), "lesion_hd95": _value(r["sq_hd95"]),
                }
    payload = {"package": f"brats-evaluation {version('brats-evaluation')}, panoptica {version('panoptica')}",
               "config": "gli", "cases": results}
    OUT.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {OUT} ({len(results)} fixtures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
