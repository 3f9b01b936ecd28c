"""The interactive slice viewer: widget state drives the FigureWidget; static fallback without a front end."""

import numpy as np
import plotly.graph_objects as go
import pytest

from gliofed.viz import viewer as viewer_module
from gliofed.viz.viewer import CaseView, SliceViewer, frontend_available

SHAPE = (7, 8, 9)


def make_case(subject="a", seed=0, with_truth=True) -> CaseView:
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(4, *SHAPE)).astype(np.float32)
    truth = np.zeros(SHAPE, np.uint8)
    truth[4, 2:6, 3:7] = 2
    truth[3, 3:5, 4:6] = 3
    return CaseView(subject, image, site="site1", truth=truth if with_truth else None, prediction=truth,
                    cams={"seg": rng.random(SHAPE), "idh": rng.random(SHAPE)},
                    probabilities={"idh": [0.3, 0.7], "grade": [0.1, 0.2, 0.7]}, labels={"idh": 1, "grade": -1})


def test_starts_at_the_largest_tumour_slice_and_the_slider_moves_the_slice():
    viewer = SliceViewer([make_case()])
    case = viewer.case
    flair = case.image[3]
    assert viewer.controls["slice"].value == 4 and viewer.controls["slice"].max == SHAPE[0] - 1
    assert np.allclose(np.asarray(viewer.figure.data[0].z), flair[4])
    viewer.controls["slice"].value = 1
    assert np.allclose(np.asarray(viewer.figure.data[0].z), flair[1])
    assert "axial 1" in viewer.figure.layout.title.text


def test_plane_modality_and_overlays():
    viewer = SliceViewer([make_case()])
    viewer.controls["plane"].value = "sagittal"
    assert viewer.controls["slice"].max == SHAPE[2] - 1
    assert np.asarray(viewer.figure.data[0].z).shape == SHAPE[:2]
    viewer.controls["modality"].value = "t1"
    index = viewer.controls["slice"].value
    assert np.allclose(np.asarray(viewer.figure.data[0].z), viewer.case.image[0][:, :, index])
    assert viewer.figure.data[1].visible and not viewer.figure.data[2].visible and not viewer.figure.data[3].visible
    viewer.controls["truth"].value = False
    viewer.controls["prediction"].value = True
    viewer.controls["cam"].value = "idh"
    viewer.controls["opacity"].value = 0.8
    truth, prediction, cam = viewer.figure.data[1:]
    assert not truth.visible and prediction.visible and cam.visible and cam.opacity == 0.8
    assert np.allclose(np.asarray(cam.z), viewer.case.cams["idh"][:, :, index])


def test_case_picker_switches_case_and_probabilities():
    viewer = SliceViewer([make_case("a"), make_case("b", seed=1, with_truth=False)])
    assert "0.70" in viewer.probabilities.value and "mutant" in viewer.probabilities.value
    viewer.controls["case"].value = "b"
    assert viewer.case.subject == "b" and not viewer.figure.data[1].visible  # b has no ground truth
    assert viewer.figure.layout.title.text.startswith("b (site1)")


def test_static_figure_without_front_end(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    viewer = SliceViewer([make_case()])
    viewer.show(interactive=False)
    assert isinstance(shown[0], go.Figure) and not isinstance(shown[0], go.FigureWidget)
    assert "idh mutant 0.70" in shown[0].layout.title.text
    viewer.show(interactive=True)
    assert shown[1] is viewer.widget


def test_front_end_detection(monkeypatch):
    monkeypatch.setenv("GLIOFED_STATIC_VIEWER", "1")
    assert not frontend_available()
    monkeypatch.setenv("GLIOFED_STATIC_VIEWER", "0")
    assert frontend_available()
    monkeypatch.delenv("GLIOFED_STATIC_VIEWER")
    assert not frontend_available()  # pytest is no IPython kernel


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="truth has shape"):
        CaseView("a", np.zeros((4, *SHAPE)), truth=np.zeros((7, 8, 8)))


def test_case_views_from_a_model(tiny_cache):
    from gliofed.data import CaseDataset
    from gliofed.model import MultiTaskUNet

    test = CaseDataset(tiny_cache, split="test")
    views = viewer_module.case_views(MultiTaskUNet(features=(4, 8, 8, 8), hidden=8), test, max_cases=2,
                                     heads=("seg", "idh"))
    assert [v.subject for v in views] == list(test.index["subject_id"][:2])
    assert set(views[0].cams) == {"seg", "idh"} and views[0].cams["seg"].shape == views[0].image.shape[1:]
    assert abs(sum(views[0].probabilities["grade"]) - 1) < 1e-5
    SliceViewer(views)
