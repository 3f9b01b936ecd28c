"""The interactive slice viewer: widget state drives the FigureWidget; static fallback without a front end.
What only a browser can show (pixels, colours, reload) is in test_browser.py."""

import shutil

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from gliofed.viz import viewer as viewer_module
from gliofed.viz.viewer import PREDICTION_COLOUR, CaseView, SliceViewer, frontend_available

SHAPE = (7, 8, 9)
IMAGE, CAM, TRUTH, PREDICTION = range(4)  # trace order, bottom to top


def make_case(subject="a", seed=0, with_truth=True, spacing=None) -> CaseView:
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(4, *SHAPE)).astype(np.float32)
    image[:, :, 0, :] = 0  # background row (outside the brain) on every slice
    truth = np.zeros(SHAPE, np.uint8)
    truth[4, 2:6, 3:7] = 2
    truth[3, 3:5, 4:6] = 3
    return CaseView(subject, image, site="site1", truth=truth if with_truth else None, prediction=truth,
                    cams={"seg": rng.random(SHAPE), "idh": rng.random(SHAPE)},
                    probabilities={"idh": [0.3, 0.7], "grade": [0.1, 0.2, 0.7]}, labels={"idh": 1, "grade": -1},
                    spacing=spacing)


def image_z(viewer) -> np.ndarray:
    return np.asarray(viewer.figure.data[IMAGE].z)


def test_starts_at_the_largest_tumour_slice_and_the_slider_moves_the_slice():
    viewer = SliceViewer([make_case()])
    flair = viewer.case.image[3]
    assert viewer.controls["slice"].value == 4 and viewer.controls["slice"].max == SHAPE[0] - 1
    assert np.allclose(image_z(viewer)[1:], flair[4][1:])
    viewer.controls["slice"].value = 1
    assert np.allclose(image_z(viewer)[1:], flair[1][1:])


def test_title_names_case_plane_slice_contrast_and_overlays():
    viewer = SliceViewer([make_case()])
    viewer.controls["slice"].value = 1
    viewer.controls["prediction"].value = True
    viewer.controls["cam"].value = "idh"
    title = viewer.figure.layout.title.text
    for part in ("<b>a</b> (site1)", "axial slice 1 of 0\u20136", "FLAIR", "ground truth, prediction",
                 "Grad-CAM idh \u2265 0.30"):
        assert part in title


def test_background_is_transparent_and_the_window_belongs_to_the_volume():
    viewer = SliceViewer([make_case()])
    window = (viewer.figure.data[IMAGE].zmin, viewer.figure.data[IMAGE].zmax)
    assert np.isnan(image_z(viewer)[0]).all() and not np.isnan(image_z(viewer)[1:]).any()
    for index in (0, 2, 6):
        viewer.controls["slice"].value = index
        assert (viewer.figure.data[IMAGE].zmin, viewer.figure.data[IMAGE].zmax) == window
    viewer.controls["modality"].value = "t1"
    assert (viewer.figure.data[IMAGE].zmin, viewer.figure.data[IMAGE].zmax) == viewer.case.window("t1") != window


def test_plane_and_modality_pick_the_slice():
    viewer = SliceViewer([make_case()])
    viewer.controls["plane"].value = "sagittal"
    assert viewer.controls["slice"].max == SHAPE[2] - 1
    viewer.controls["modality"].value = "t1"
    index = viewer.controls["slice"].value
    assert image_z(viewer).shape == SHAPE[:2]
    assert np.allclose(image_z(viewer)[:, 1:], viewer.case.image[0][:, 1:, index])


def test_overlays_toggle():
    viewer = SliceViewer([make_case()])
    data = viewer.figure.data
    assert data[TRUTH].visible and not data[PREDICTION].visible and not data[CAM].visible
    viewer.controls["truth"].value = False
    viewer.controls["prediction"].value = True
    viewer.controls["cam"].value = "idh"
    viewer.controls["opacity"].value = 0.8
    assert not data[TRUTH].visible and data[PREDICTION].visible and data[CAM].visible and data[CAM].opacity == 0.8


def test_grad_cam_is_transparent_below_the_threshold_with_a_named_colour_bar():
    viewer = SliceViewer([make_case()], cam_threshold=0.4)
    viewer.controls["cam"].value = "seg"
    cam = viewer.figure.data[CAM]
    raw = viewer.case.cams["seg"][viewer.controls["slice"].value]
    shown = np.asarray(cam.z)
    assert np.array_equal(np.isnan(shown), raw < 0.4) and np.allclose(shown[raw >= 0.4], raw[raw >= 0.4])
    assert cam.zmin == 0.4 and cam.showscale and cam.colorbar.title.text == "Grad-CAM seg"
    viewer.controls["cam_threshold"].value = 0.8
    assert np.array_equal(np.isnan(np.asarray(cam.z)), raw < 0.8)


def test_prediction_outline_is_cyan_and_closed_at_the_image_edge():
    viewer = SliceViewer([make_case()])
    viewer.controls["prediction"].value = True
    outline = viewer.figure.data[PREDICTION]
    # coloring="lines" draws with the colour scale (it ignores line.color): the scale must be cyan throughout
    assert outline.contours.coloring == "lines" and {c for _, c in outline.colorscale} == {PREDICTION_COLOUR}
    z = np.asarray(outline.z)
    assert z.shape == (SHAPE[1] + 2, SHAPE[2] + 2) and not z[0].any() and not z[:, -1].any()
    assert outline.x0 == -outline.dx  # the padding sits outside the image


def test_key_lists_the_overlays_on_display():
    viewer = SliceViewer([make_case()])
    keys = {trace.name: trace for trace in viewer.figure.data[4:]}
    assert keys["truth: core"].visible and not keys["prediction"].visible
    assert keys["prediction"].line.color == PREDICTION_COLOUR
    viewer.controls["prediction"].value = True
    viewer.controls["truth"].value = False
    assert keys["prediction"].visible and not keys["truth: oedema"].visible


def test_voxel_spacing_sets_the_aspect_ratio_and_labels_each_plane():
    viewer = SliceViewer([make_case(spacing=(3.0, 1.0, 0.5))], plane="coronal")
    image = viewer.figure.data[IMAGE]
    assert (image.dx, image.dy) == (0.5, 3.0) and viewer.figure.layout.yaxis.scaleanchor == "x"
    assert tuple(viewer.figure.layout.xaxis.range) == (9 * 0.5 - 0.25, -0.25)
    assert [a.text for a in viewer.figure.layout.annotations] == ["R", "L", "I", "S"]
    assert "aspect estimated" not in viewer.figure.layout.title.text
    viewer.controls["plane"].value = "sagittal"
    assert [a.text for a in viewer.figure.layout.annotations] == ["A", "P", "I", "S"]


def test_without_spacing_the_aspect_is_estimated_and_says_so():
    viewer = SliceViewer([make_case()], plane="coronal")
    image = viewer.figure.data[IMAGE]
    assert (image.dx, image.dy) == (1.0, 9 / 7) and "aspect estimated" in viewer.figure.layout.title.text


def test_saved_widget_state_follows_every_change():
    """What a reloaded page draws from: the current slice, with the settings plotly would prune."""
    viewer = SliceViewer([make_case()])
    viewer.controls["slice"].value = 2
    # the browser reports plotly.js defaults back and the widget drops matching properties: simulate that
    viewer.figure._data[IMAGE].pop("showscale")
    viewer.figure._layout_obj._props["xaxis"].pop("visible")
    viewer.controls["plane"].value = "coronal"
    saved_data, saved_layout = viewer.figure._widget_data, viewer.figure._widget_layout
    assert np.array_equal(saved_data[IMAGE]["z"], image_z(viewer), equal_nan=True)
    assert saved_data[IMAGE]["showscale"] is False and saved_layout["xaxis"]["visible"] is False
    assert saved_layout["yaxis"]["scaleanchor"] == "x" and saved_layout["title"]["text"].find("coronal") > 0


def test_case_picker_switches_case_and_probabilities():
    viewer = SliceViewer([make_case("a"), make_case("b", seed=1, with_truth=False)])
    assert "0.70" in viewer.probabilities.value and "mutant" in viewer.probabilities.value
    viewer.controls["case"].value = "b"
    assert viewer.case.subject == "b" and not viewer.figure.data[TRUTH].visible  # b has no ground truth
    assert viewer.figure.layout.title.text.startswith("<b>b</b> (site1)")


def test_static_figure_without_front_end(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    viewer = SliceViewer([make_case()])
    viewer.show(interactive=False)
    assert isinstance(shown[0], go.Figure) and not isinstance(shown[0], go.FigureWidget)
    assert "idh mutant 0.70" in shown[0].layout.title.text and shown[0].data[IMAGE].showscale is False
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


def test_bad_spacing_is_a_clear_error():
    with pytest.raises(ValueError, match="a: spacing must be three positive numbers"):
        CaseView("a", np.zeros((4, *SHAPE)), spacing=(1.0, 0.0, 1.0))


@pytest.fixture(scope="module")
def small_model():
    from gliofed.model import MultiTaskUNet

    return MultiTaskUNet(features=(4, 8, 8, 8), hidden=8)


def test_case_views_from_a_model(tiny_cache, small_model):
    from gliofed.data import CaseDataset
    from gliofed.explain import grad_cam

    test = CaseDataset(tiny_cache, split="test")
    views = viewer_module.case_views(small_model, test, max_cases=2, heads=("seg", "idh"))
    assert [v.subject for v in views] == list(test.index["subject_id"][:2])
    assert set(views[0].cams) == {"seg", "idh"} and views[0].cams["seg"].shape == views[0].image.shape[1:]
    assert abs(sum(views[0].probabilities["grade"]) - 1) < 1e-5
    first = test.index.iloc[0]  # the cache records each case's voxel spacing: the viewer draws with it
    assert views[0].spacing == pytest.approx((first["spacing_d"], first["spacing_h"], first["spacing_w"]))
    # the viewer's maps are explain's: Grad-CAM of the predicted class
    image = test[0]["image"][None]
    predicted = int(small_model(image)["idh"].argmax(1)[0])
    assert np.allclose(views[0].cams["idh"], grad_cam(small_model, image, "idh", predicted)[0, 0].numpy())
    SliceViewer(views)


def test_case_views_take_the_spacing_from_the_cache_index(tiny_cache, small_model, tmp_path):
    from gliofed.data import CaseDataset

    cache = shutil.copytree(tiny_cache, tmp_path / "cache")
    index = pd.read_csv(cache / "index.csv", dtype={"subject_id": str})
    index["spacing_d"], index["spacing_h"], index["spacing_w"] = 9.9375, 5.5, 4.25
    index.to_csv(cache / "index.csv", index=False)
    views = viewer_module.case_views(small_model, CaseDataset(cache, split="test"), max_cases=1, heads=("idh",))
    assert views[0].spacing == (9.9375, 5.5, 4.25)


def test_label_colours_and_the_grad_cam_scale_differ():
    from gliofed.viz.colours import MIN_SEPARATION, palette_separation

    figure = SliceViewer([make_case()]).figure
    truth = [c for _, c in figure.data[TRUTH].colorscale if not c.startswith("rgba(0,0,0,0)")]
    labels = {*truth, *(c for _, c in figure.data[PREDICTION].colorscale)}
    assert len(labels) == 4  # core, oedema, enhancing, prediction
    assert palette_separation(labels, figure.data[CAM].colorscale) >= MIN_SEPARATION
    assert palette_separation(labels, "Plasma") < MIN_SEPARATION  # the old scale ended in the enhancing yellow
