"""Static plotly figures: ROC, Dice violin, per-site bars, ablation, Grad-CAM overlay, offline HTML."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from gliofed.viz.plots import (
    plot_ablation,
    plot_cases,
    plot_dice_violin,
    plot_gradcam,
    plot_per_site,
    plot_roc,
    save_html,
)


def fake_predictions(n=40, seed=0, sites=("a", "b")) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = {"subject": f"s{i}", "site": sites[i % len(sites)], "has_mask": i % 5 != 0}
        for marker, k in (("idh", 2), ("codeletion", 2), ("mgmt", 2), ("grade", 3)):
            label = int(rng.integers(-1, k))
            probs = rng.dirichlet(np.ones(k))
            if label >= 0:
                probs[label] += 0.5
            probs /= probs.sum()
            row[marker] = label
            row.update({f"p_{marker}_{j}": float(p) for j, p in enumerate(probs)})
        for region in ("WT", "TC", "ET"):
            row[f"dice_{region}"] = float(rng.random()) if row["has_mask"] else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def test_roc_legend_carries_the_auc_of_each_model():
    runs = {"fedavg": fake_predictions(seed=1), "distill": fake_predictions(seed=2)}
    fig = plot_roc(runs, markers=("idh",))
    curves = [t for t in fig.data if t.name]
    assert len(curves) == 2
    for trace, (name, table) in zip(curves, runs.items()):
        known = table[table["idh"] >= 0]
        assert trace.name.startswith(name) and f"AUC {roc_auc_score(known['idh'], known['p_idh_1']):.2f}" in trace.name


def test_roc_grade_is_one_vs_rest_per_grade():
    fig = plot_roc(fake_predictions(), markers=("grade",))
    assert [t.name.split(" (")[0] for t in fig.data if t.name] == ["model · II", "model · III", "model · IV"]


def test_dice_violin_has_one_violin_per_model_with_masked_cases_only():
    table = fake_predictions()
    fig = plot_dice_violin({"a": table, "b": table}, regions=("WT",))
    assert [t.type for t in fig.data] == ["violin", "violin"]
    assert len(fig.data[0].y) == int(table["has_mask"].sum())


def test_per_site_bars_show_each_site():
    fig = plot_per_site(fake_predictions(sites=("x", "y", "z")), metrics=("dice_WT", "auc_idh"))
    assert len(fig.data) == 2 and list(fig.data[0].x) == ["x", "y", "z"]


def test_ablation_bars_follow_the_table():
    table = pd.DataFrame({"modalities": ["T1", "T1", "all", "all"], "metric": ["dice_WT", "auc_idh"] * 2,
                          "value": [0.5, 0.6, 0.8, 0.9], "ci_low": [0.4, 0.5, 0.7, 0.8],
                          "ci_high": [0.6, 0.7, 0.9, 1.0]})
    fig = plot_ablation(table)
    assert [t.name for t in fig.data] == ["T1", "all"]
    assert list(fig.data[1].y) == [0.8, 0.9] and list(fig.data[1].error_y.array) == pytest.approx([0.1, 0.1])


def _gradcam_case():
    image = np.random.default_rng(0).random((7, 8, 9)) + 0.1
    mask = np.zeros((7, 8, 9), np.uint8)
    mask[2, 1:3, 1:3] = 1
    mask[5, 1:7, 1:7] = 2
    return image, mask


def test_gradcam_overlay_uses_the_largest_tumour_slice():
    image, mask = _gradcam_case()
    fig = plot_gradcam(image, {"seg": image, "idh": image}, mask)
    assert np.allclose(np.asarray(fig.data[0].z), image[5]) and len(fig.data) == 6


def test_gradcam_is_thresholded_with_one_colour_bar():
    image, mask = _gradcam_case()
    cam = np.linspace(0, 1, image.size).reshape(image.shape)
    fig = plot_gradcam(image, {"seg": cam, "idh": cam}, mask, threshold=0.5)
    shown = np.asarray(fig.data[1].z)
    assert np.array_equal(np.isnan(shown), cam[5] < 0.5) and fig.data[1].zmin == 0.5
    assert [t.showscale for t in fig.data if t.type == "heatmap"] == [False, True, False, False]


def test_gradcam_truth_outline_is_white():
    image, mask = _gradcam_case()
    outline = plot_gradcam(image, {"seg": image}, mask).data[2]
    assert outline.type == "contour" and {c for _, c in outline.colorscale} == {"white"}


def test_gradcam_of_every_head_fits_a_laptop_screen():
    image, mask = _gradcam_case()
    heads = dict.fromkeys(("seg", "idh", "codeletion", "mgmt", "grade"), image)
    assert plot_gradcam(image, heads, mask).layout.width <= 1100


def test_case_rows_show_the_largest_tumour_slice_at_true_aspect(tiny_cache):
    from gliofed.data.cache import load_case, read_index

    subject = read_index(tiny_cache).query("has_mask")["subject_id"].iloc[0]
    image, seg = load_case(tiny_cache, subject)
    fig = plot_cases(tiny_cache, [subject], modalities=("flair",))
    z = int(np.argmax((np.asarray(seg) > 0).sum((1, 2))))
    flair = np.asarray(image[3, z], np.float32)
    shown = np.asarray(fig.data[0].z)
    assert np.allclose(shown[flair != 0], flair[flair != 0]) and np.isnan(shown[flair == 0]).all()
    assert fig.layout.yaxis.scaleanchor == "x" and fig.layout.xaxis.range[0] > fig.layout.xaxis.range[1]


def test_html_export_is_offline(tmp_path):
    path = save_html(plot_dice_violin(fake_predictions()), tmp_path / "fig" / "violin.html")
    text = path.read_text()
    assert "<script src=\"http" not in text and len(text) > 1_000_000  # plotly.js inline, nothing fetched
