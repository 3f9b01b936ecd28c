"""Segmentation that learns the core: region-based outputs, the learning-rate schedule, sliding-window inference with
test-time flips, and post-processing chosen on training cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gliofed.config import TrainConfig
from gliofed.engine import fit, scheduled_lr
from gliofed.errors import ConfigError
from gliofed.losses import MultiTaskLoss
from gliofed.model import MultiTaskUNet, build_model
from gliofed.segmentation import (
    SegmentationInference,
    choose_postprocessing,
    postprocess_mask,
    predict_volume,
    region_dice,
    region_targets,
    seg_probabilities,
    to_classes,
)

SMALL = {"features": (4, 8, 16, 32), "hidden": 8}


def class_map(seed: int = 0, shape=(5, 7, 9)) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 4, size=(1, 1, *shape)))


# --- region outputs --------------------------------------------------------------------------------------------------
def test_regions_of_a_class_map_convert_back_to_it():
    seg = class_map()
    regions = region_targets(seg)
    assert regions.shape == (1, 3, 5, 7, 9)
    assert torch.equal(regions[:, 1].bool(), (seg[:, 0] == 1) | (seg[:, 0] == 3))  # TC = necrotic core + enhancing
    assert torch.equal(to_classes(regions, "regions"), seg[:, 0])


def test_a_regions_head_has_three_sigmoid_channels_and_the_seeds_body():
    classes, regions = MultiTaskUNet(**SMALL), MultiTaskUNet(**SMALL, seg_output="regions")
    x = torch.zeros(1, 4, 3, 9, 10)
    assert regions(x)["seg"].shape == (1, 3, 3, 9, 10) and classes(x)["seg"].shape == (1, 4, 3, 9, 10)
    body = {k: v.shape for k, v in classes.state_dict().items() if not k.startswith("seg_head")}
    assert body == {k: v.shape for k, v in regions.state_dict().items() if not k.startswith("seg_head")}
    assert build_model(regions.config).config == regions.config and "seg_output" not in classes.config
    with pytest.raises(ValueError, match="3 channels"):
        MultiTaskUNet(seg_classes=4, seg_output="regions")


def test_a_regions_model_round_trips_through_a_checkpoint_and_a_wrong_head_is_refused(tmp_path):
    from gliofed.errors import CheckpointError
    from gliofed.runs import TrainingRun, load_checkpoint

    config = TrainConfig(model={**SMALL, "seg_output": "regions"}, device="cpu")
    model = build_model(config)
    run = TrainingRun(tmp_path / "run")
    run.save_model(model, config, epoch=1, preprocessing={"size": 32, "modalities": list(config.modalities)})
    loaded, _, _ = load_checkpoint(tmp_path / "run")
    assert loaded.config["seg_output"] == "regions" and loaded.config["seg_classes"] == 3
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    settings = tmp_path / "run" / "model.json"
    text = settings.read_text()
    settings.write_text(text.replace('"seg_output": "regions"', '"seg_output": "classes"', 1))
    with pytest.raises(CheckpointError, match="3 outputs, not the 4"):
        load_checkpoint(tmp_path / "run")


def test_the_region_loss_is_dice_plus_bce_of_each_region():
    seg = class_map(1)
    target = region_targets(seg)
    loss = MultiTaskLoss(seg_output="regions")
    labels, has_mask = torch.full((1, 4), -1), torch.tensor([True])
    right, _ = loss({"seg": (target * 2 - 1) * 20, **_no_markers()}, seg, has_mask, labels)
    wrong, parts = loss({"seg": (1 - target * 2) * 20, **_no_markers()}, seg, has_mask, labels)
    assert float(right) < 1e-3 and float(wrong) > 10
    expected = (MultiTaskLoss(seg_output="regions").region_dice((1 - target * 2) * 20, target)
                + torch.nn.functional.binary_cross_entropy_with_logits((1 - target * 2) * 20, target))
    assert parts["seg"] == pytest.approx(float(expected))


def _no_markers():
    return {"idh": torch.zeros(1, 2), "codeletion": torch.zeros(1, 2), "mgmt": torch.zeros(1, 2),
            "grade": torch.zeros(1, 3)}


def test_region_training_learns_a_fixed_batch_and_predicts_class_maps(tiny_cache):
    from gliofed.data.dataset import CaseDataset
    from gliofed.engine import predict

    config = TrainConfig(optimizer="adamw", lr=1e-2, epochs=5, batch_size=2, augment=False, device="cpu",
                         model={**SMALL, "seg_output": "regions"})
    torch.manual_seed(0)
    model = build_model(config)
    cases = torch.utils.data.Subset(CaseDataset(tiny_cache, split="train"), [0, 1])
    history = fit(model, cases, config, progress=False)
    assert history[-1]["seg"] < history[0]["seg"]
    table = predict(model, cases, device="cpu", progress=False, hd95=False)
    assert table[["dice_WT", "dice_TC", "dice_ET"]].notna().all().all()


def test_grad_cam_explains_the_whole_tumour_of_a_regions_head():
    from gliofed.explain import grad_cam

    torch.manual_seed(0)
    model = MultiTaskUNet(**SMALL, seg_output="regions")
    cam = grad_cam(model, torch.randn(1, 4, 3, 16, 16), target="seg")
    assert cam.shape == (1, 1, 3, 16, 16) and bool(torch.isfinite(cam).all())


# --- learning-rate schedule ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("schedule", "expected"), [
    ("poly", [0.01 * (1 - e / 3) ** 0.9 for e in range(3)]),
    ("cosine", [0.01 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)]),
])
def test_the_schedule_sets_each_epochs_rate(tiny_cache, schedule, expected):
    from gliofed.data.dataset import CaseDataset

    config = TrainConfig(optimizer="adamw", lr=0.01, lr_schedule=schedule, epochs=3, batch_size=4, augment=False,
                         device="cpu", model=SMALL)
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    seen = []
    cases = torch.utils.data.Subset(CaseDataset(tiny_cache, split="train"), [0])
    fit(model, cases, config, optimizer=optimizer, progress=False,
        on_epoch_end=lambda epoch, losses: seen.append(optimizer.param_groups[0]["lr"]))
    assert seen == pytest.approx(expected)
    assert [scheduled_lr(config, e, 3) for e in range(3)] == pytest.approx(expected)
    assert scheduled_lr(config.replace(lr_schedule="constant"), 2, 3) == 0.01


def test_a_site_places_its_round_in_the_runs_schedule():
    """The round loop tells every train request where it stands; a site trains those epochs of the whole run."""
    from gliofed.federated.protocol import Payload
    from gliofed.federated.server.rounds import run_rounds
    from gliofed.federated.server.strategies import make_strategy
    from gliofed.federated.site.site import _schedule

    config = TrainConfig(device="cpu", model=SMALL, lr_schedule="poly")
    model = build_model(config)
    seen = []

    def exchange(requests):
        seen.append({site: r.settings.get("schedule") for site, r in requests.items()})
        return {site: Payload("weights_update", r.payload.arrays, {"site": site, "n_cases": 1})
                for site, r in requests.items()}

    run_rounds(make_strategy("fedavg", local_epochs=2), model, ["a", "b"], config, lambda rnd: exchange, 3)
    assert seen[1] == {"a": {"round": 2, "rounds": 3}, "b": {"round": 2, "rounds": 3}}
    assert _schedule({"epochs": 2, "schedule": seen[1]["a"]}) == (2, 6)  # epochs 2-3 of 6


@pytest.mark.parametrize("schedule", [{"round": 4, "rounds": 3}, {"round": 1}, {"round": "1", "rounds": 3}, [1, 3]])
def test_a_site_refuses_a_schedule_that_is_not_one(schedule):
    from gliofed.federated.site.policy import SitePolicy

    assert any("schedule" in v for v in SitePolicy().violations("train", {"epochs": 1, "schedule": schedule}))


def test_an_unknown_schedule_is_a_config_error():
    with pytest.raises(ConfigError, match="lr_schedule 'step'"):
        TrainConfig(lr_schedule="step")


# --- sliding windows and flips ---------------------------------------------------------------------------------------
class Voxelwise(torch.nn.Module):
    """Logits that depend on each voxel alone (class 2 where channel 0 is bright), plus a marker head: any window
    sees the same answer at every voxel."""

    config = {}

    def forward(self, x):
        bright = x[:, 0] * 4
        seg = torch.stack([-bright, torch.zeros_like(bright), bright, torch.zeros_like(bright)], 1)
        return {"seg": seg, "idh": x.mean((1, 2, 3, 4))[:, None].repeat(1, 2)}


class Ramp(Voxelwise):
    """Class 2 evidence that grows from left to right, whatever the image: not symmetric under a left-right flip."""

    def forward(self, x):
        out = super().forward(x)
        ramp = torch.linspace(-3, 3, x.shape[-1]).expand_as(x[:, 0])
        out["seg"] = torch.stack([-ramp, torch.zeros_like(ramp), ramp, torch.zeros_like(ramp)], 1)
        return out


def test_gaussian_sliding_windows_agree_with_one_pass_for_a_voxelwise_model():
    image = torch.randn(1, 4, 6, 20, 22, generator=torch.Generator().manual_seed(0))
    whole, outputs = predict_volume(Voxelwise(), image)
    windowed, windowed_outputs = predict_volume(Voxelwise(), image, SegmentationInference(window=(-1, 8, 8)))
    torch.testing.assert_close(windowed, whole)
    torch.testing.assert_close(windowed_outputs["idh"], outputs["idh"])  # markers read the whole volume


def test_sliding_windows_call_the_model_on_windows_of_the_chosen_size():
    shapes = []

    class Spy(Voxelwise):
        def forward(self, x):
            shapes.append(tuple(x.shape[2:]))
            return super().forward(x)

    predict_volume(Spy(), torch.zeros(1, 4, 6, 20, 22), SegmentationInference(window=(-1, 8, 8), overlap=0.5))
    assert shapes[0] == (6, 20, 22) and set(shapes[1:]) == {(6, 8, 8)} and len(shapes) > 9


def test_left_right_flips_average_the_flipped_prediction_back_in():
    image = torch.zeros(1, 4, 3, 5, 9)
    plain, _ = predict_volume(Ramp(), image)
    flipped, _ = predict_volume(Ramp(), image, SegmentationInference(flips=(2,)))
    torch.testing.assert_close(flipped, (plain + plain.flip(-1)) / 2)
    torch.testing.assert_close(flipped, flipped.flip(-1))  # symmetric after averaging


def test_a_bad_window_or_flip_is_one_sentence():
    with pytest.raises(ConfigError, match="not three sides"):
        SegmentationInference(window=(8, 8))
    with pytest.raises(ConfigError, match="axes of"):
        SegmentationInference(flips=(3,))


def test_probabilities_follow_the_head():
    logits = torch.randn(2, 3, 2, 3, 4)
    torch.testing.assert_close(seg_probabilities(logits, "regions"), torch.sigmoid(logits))
    torch.testing.assert_close(seg_probabilities(logits, "classes").sum(1), torch.ones(2, 2, 3, 4))


# --- post-processing -------------------------------------------------------------------------------------------------
def _case(false_positive: int, true_lesion: int = 0) -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((6, 20, 20), np.uint8)
    truth[1:5, 2:8, 2:8] = 2
    truth[2:4, 4:6, 4:6] = 3
    if true_lesion:
        truth[4, 15:15 + true_lesion, 15] = 2
    predicted = truth.copy()
    predicted[0, 18, 0:false_positive] = 2  # a spurious line of voxels far from the tumour
    return predicted, truth


def test_post_processing_is_chosen_to_remove_the_spurious_components_of_training_cases():
    chosen = choose_postprocessing([_case(3), _case(5), _case(2)], candidates=(0, 4, 8, 16))
    assert chosen["min_voxels"] == 8 and not chosen["keep_largest"] and chosen["cases"] == 3
    assert [s["min_voxels"] for s in chosen["scores"]] == [0, 4, 8, 16, 0]


def test_post_processing_stays_off_when_small_components_are_real():
    chosen = choose_postprocessing([_case(0, true_lesion=3), _case(0, true_lesion=2)], candidates=(0, 4, 8))
    assert chosen["min_voxels"] == 0 and not chosen["keep_largest"]


def test_region_dice_counts_two_empty_regions_as_agreement():
    empty = np.zeros((2, 3, 4), np.uint8)
    assert region_dice(empty, empty) == {"WT": 1.0, "TC": 1.0, "ET": 1.0}
    predicted, truth = _case(4)
    assert region_dice(postprocess_mask(predicted, 5), truth)["WT"] == 1.0 > region_dice(predicted, truth)["WT"]


def test_training_records_the_chosen_post_processing_and_predict_applies_it(tiny_run):
    from gliofed.inference import Predictor
    from gliofed.runs import load_checkpoint

    _, _, state = load_checkpoint(tiny_run)
    recorded = state["extra"]["postprocessing"]
    assert recorded["chosen_on"] == "training split" and recorded["cases"] > 0
    best = max(s["dice"] for s in recorded["scores"])
    assert [s["dice"] for s in recorded["scores"] if (s["min_voxels"], s["keep_largest"])
            == (recorded["min_voxels"], recorded["keep_largest"])] == [best]
    predictor = Predictor(tiny_run, device="cpu")
    assert (predictor.min_voxels, predictor.keep_largest) == (recorded["min_voxels"], recorded["keep_largest"])
    assert Predictor(tiny_run, device="cpu", min_voxels=0, keep_largest=False).min_voxels == 0


def test_choosing_post_processing_case_by_case_scores_each_option_by_its_mean_region_dice():
    from gliofed.segmentation import PostprocessingChoice

    cases = [_case(3), _case(5), _case(2), _case(0, true_lesion=3)]
    choice = PostprocessingChoice(candidates=(0, 4, 8, 16))
    for seen, (predicted, truth) in enumerate(cases, start=1):
        choice.add(predicted, truth)
        result = choice.result()
        assert result["cases"] == seen
        for score in result["scores"]:  # each option: the mean over the cases so far of the mean of WT, TC, ET Dice
            expected = np.mean([np.mean(list(region_dice(postprocess_mask(p, score["min_voxels"],
                                                                           score["keep_largest"]), t).values()))
                                for p, t in cases[:seen]])
            assert score["dice"] == pytest.approx(expected, abs=1e-12)
    # spurious lines of 3, 5 and 2 voxels, and one real 3-voxel lesion: 4 and 8 both lose the real lesion, only 8 also
    # removes the 5-voxel line, 16 gains nothing more (ties go to the gentler option)
    assert (result["min_voxels"], result["keep_largest"]) == (8, False)
    empty = PostprocessingChoice().result()
    assert empty["cases"] == 0 and empty["min_voxels"] == 0 and not empty["keep_largest"]


def test_one_prediction_of_the_training_split_chooses_thresholds_and_post_processing_as_two_would(tiny_run,
                                                                                                 tiny_cache):
    from gliofed.experiments.comparison import training_choices, training_postprocessing, training_thresholds
    from gliofed.runs import load_checkpoint

    model, config, state = load_checkpoint(tiny_run)
    thresholds, postprocessing = training_choices(model, tiny_cache, config, "f1")
    assert thresholds == training_thresholds(model, tiny_cache, config, "f1")
    assert postprocessing == training_postprocessing(model, tiny_cache, config)
    assert postprocessing["cases"] > 0
    # and the run folder recorded exactly these (train_and_save makes one pass)
    assert state["extra"]["postprocessing"] == training_postprocessing(model, tiny_cache, config)
    assert state["thresholds"] == training_thresholds(model, tiny_cache, config)
