"""The BraTS scores against the official package: values computed by brats-evaluation 0.0.10 (panoptica 2.1.7) on the
fixtures of tests/data/brats_metric_fixtures.py, recorded by benchmarks/brats_evaluation_reference.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from gliofed.brats_metrics import HD95_PENALTY_MM, brats_scores, region_brats_scores
from tests.data.brats_metric_fixtures import SHAPE, cases

REFERENCE = json.loads((Path(__file__).parent / "data" / "brats_evaluation_reference.json").read_text())
FIXTURES = cases()
ISOTROPIC = [name for name, (_, _, spacing) in FIXTURES.items() if spacing == (1.0, 1.0, 1.0)]


def _expected(value, field: str) -> float:
    number = float(value)  # "nan" and "inf" are recorded as strings
    if field == "lesion_hd95" and math.isinf(number):
        return HD95_PENALTY_MM  # the package leaves it infinite; its own penalty keeps summaries finite
    return number


def _same(mine: float, expected: float) -> bool:
    return (math.isnan(mine) and math.isnan(expected)) or mine == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("name", ISOTROPIC)
def test_equal_to_brats_evaluation_on_one_mm_grids(name):
    prediction, reference, spacing = FIXTURES[name]
    mine = brats_scores(prediction, reference, spacing)
    differences = {f"{field}_{region}": (mine[f"{field}_{region}"], _expected(value, field))
                   for region, fields in REFERENCE["cases"][name].items() for field, value in fields.items()
                   if not _same(mine[f"{field}_{region}"], _expected(value, field))}
    assert not differences


def test_a_missed_lesion_is_a_false_negative_that_lowers_f1():
    scores = brats_scores(*FIXTURES["missed_lesion"])
    assert (scores["lesions_WT"], scores["tp_WT"], scores["fn_WT"], scores["fp_WT"]) == (2, 1, 1, 0)
    assert scores["f1_WT"] == pytest.approx(2 / 3)
    assert scores["dice_WT"] < scores["lesion_dice_WT"]  # the whole-region Dice pays for the missed lesion


def test_a_spurious_lesion_is_a_false_positive():
    scores = brats_scores(*FIXTURES["spurious_lesion"])
    assert (scores["tp_ET"], scores["fp_ET"], scores["fn_ET"]) == (1, 1, 0) and scores["f1_ET"] == pytest.approx(2 / 3)


def test_nothing_predicted_scores_zero_and_the_penalty():
    scores = brats_scores(*FIXTURES["nothing_predicted"])
    for region in ("WT", "TC", "ET"):
        assert (scores[f"dice_{region}"], scores[f"hd95_{region}"]) == (0.0, HD95_PENALTY_MM)
        assert (scores[f"lesion_dice_{region}"], scores[f"lesion_hd95_{region}"]) == (0.0, HD95_PENALTY_MM)
        assert scores[f"f1_{region}"] == 0.0


def test_a_spurious_region_on_an_empty_reference_scores_zero_and_the_penalty():
    scores = brats_scores(*FIXTURES["empty_reference"])
    assert (scores["dice_ET"], scores["hd95_ET"], scores["fp_ET"], scores["lesions_ET"]) == (0, HD95_PENALTY_MM, 1, 0)


def test_a_region_absent_from_both_is_not_scored():
    scores = brats_scores(*FIXTURES["no_enhancing_anywhere"])
    assert all(math.isnan(scores[f"{s}_ET"]) for s in ("dice", "hd95", "lesion_dice", "lesion_hd95", "f1"))
    assert scores["dice_TC"] > 0


def test_anisotropic_distances_are_in_mm_along_the_right_axes():
    bar = np.zeros(SHAPE, bool)
    bar[10, 10, 8:10] = True
    shifted = np.roll(bar, 1, axis=2)  # one voxel along the third axis, 2.5 mm long
    assert region_brats_scores(shifted, bar, (1.0, 1.5, 2.5))["hd95"] == pytest.approx(2.5)
    # the package measures the whole-region HD95 in voxels and pairs the lesions' spacing with the axes reversed
    # (SimpleITK's z, y, x arrays): gliofed reproduces its numbers only under those two readings
    prediction, reference, spacing = FIXTURES["anisotropic"]
    recorded = REFERENCE["cases"]["anisotropic"]
    in_voxels = brats_scores(prediction, reference, (1.0, 1.0, 1.0))
    reversed_axes = brats_scores(prediction, reference, spacing[::-1])
    mine = brats_scores(prediction, reference, spacing)
    for region in ("WT", "TC", "ET"):
        assert in_voxels[f"hd95_{region}"] == pytest.approx(recorded[region]["hd95"])
        assert reversed_axes[f"lesion_hd95_{region}"] == pytest.approx(recorded[region]["lesion_hd95"])
        assert mine[f"dice_{region}"] == pytest.approx(recorded[region]["dice"])
    assert mine["hd95_WT"] != pytest.approx(recorded["WT"]["hd95"])


def test_every_fixture_has_a_recorded_reference():
    assert set(REFERENCE["cases"]) == set(FIXTURES) and REFERENCE["package"].startswith("brats-evaluation 0.0.10")
