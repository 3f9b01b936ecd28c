"""One preprocessing record: made once with the cache, copied into the checkpoint, read by evaluate and predict; one
pipeline for the cache and (inverted) for predict; no two of them can disagree without a one-sentence error."""

from __future__ import annotations

import json

import pytest
import torch

from gliofed.cli import main
from gliofed.data.cache import preprocess, read_plan
from gliofed.data.manifest import read_manifest
from gliofed.data.plan import plan_for_manifest
from gliofed.errors import CacheError, ConfigError
from gliofed.preprocessing import PREPROCESS_VERSION, Preprocessing
from gliofed.runs import load_checkpoint
from gliofed.vocab import MODALITIES


def test_the_record_round_trips_through_json_and_names_its_first_difference():
    plan = Preprocessing(size=24, modalities=("t2", "t1"), label_convention="brats2023")
    assert Preprocessing.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert "24x24" in plan.to_dict()["steps"]
    assert plan.difference(Preprocessing(size=24, modalities=("t2", "t1"))) is None  # the convention: not an input
    assert plan.difference(Preprocessing(size=16, modalities=("t2", "t1"))) == "24x24 in-plane (the other: 16x16)"
    assert Preprocessing(size=24).difference(plan, channels="subset") is None  # all four serve a model of two
    assert plan.difference(Preprocessing(size=24), channels="subset").startswith("contrasts t2, t1")


@pytest.mark.parametrize(("values", "message"), [
    ({"size": 24, "spacing": 1.0}, "unknown preprocessing setting(s) spacing"),
    ({"modalities": ["t1"]}, "has no in-plane size"),
    ({"size": 0}, "size 0 is not an in-plane size"),
    ({"size": 24, "orientation": "LPS"}, "orientation 'LPS' is not one this gliofed implements"),
    ({"size": 24, "modalities": ["t1", "dwi"]}, "are not distinct names among"),
])
def test_a_bad_record_is_one_sentence_naming_the_file(values, message):
    with pytest.raises(ConfigError, match="^model.json: ") as error:
        Preprocessing.from_dict(values, "model.json")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_size_rule_is_one_function(tiny_cohort, small_manifest):
    assert plan_for_manifest(tiny_cohort / "manifest.csv").size == 32  # the tiny preset's, from cohort.json
    assert plan_for_manifest(small_manifest).size == 7  # 7 x 8 x 9 scans: the smallest in-plane side, never upsampled
    assert plan_for_manifest(small_manifest, size=12) == Preprocessing(size=12)


def test_the_cache_keeps_its_record_and_is_refreshed_with_it(small_manifest, tmp_path):
    cache = tmp_path / "cache"
    preprocess(small_manifest, cache, size=12, progress=False)
    assert read_plan(cache) == Preprocessing(size=12)
    report = preprocess(small_manifest, cache, progress=False)  # no size: the cache's own record, not a new rule
    assert set(report.cases["status"]) == {"cached"} and read_plan(cache).size == 12


@pytest.fixture
def trained(tiny_run):
    return tiny_run


def test_training_copies_the_caches_record_into_the_checkpoint(trained, tiny_cache):
    _, _, state = load_checkpoint(trained)
    assert Preprocessing.from_dict(state["preprocessing"]) == read_plan(tiny_cache).for_model(("t1", "t2"))
    assert json.loads((trained / "model.json").read_text())["preprocessing"]["size"] == 32


def test_cache_and_predict_run_one_pipeline(trained, small_manifest, tmp_path, monkeypatch):
    """Both paths build their steps with plan_pipeline: the cache from its record, predict from the checkpoint's."""
    import gliofed.data.transforms as transforms
    from gliofed.inference import Predictor

    built = []
    original = transforms.plan_pipeline
    monkeypatch.setattr(transforms, "plan_pipeline", lambda plan, *a, **k: built.append(plan) or original(plan, *a,
                                                                                                           **k))
    preprocess(small_manifest, tmp_path / "cache", size=12, progress=False)
    assert built == [Preprocessing(size=12)] * 2  # one per case
    row = read_manifest(small_manifest).iloc[0]
    predictor = Predictor(trained, device="cpu")
    predictor.predict_case("p", {m: row[m] for m in MODALITIES})
    assert built[-1] == Preprocessing(size=32, modalities=("t1", "t2")) == predictor.plan


def test_cache_checkpoint_and_predict_cannot_disagree_without_an_error(trained, small_manifest, tmp_path, capsys):
    manifest, checkpoint = str(small_manifest), str(trained / "model.safetensors")
    other = tmp_path / "cache_12"
    preprocess(manifest, other, size=12, progress=False)
    # evaluate on a cache made at another size
    assert main(["evaluate", checkpoint, manifest, "--cache", str(other), "--bootstrap", "0", "--device", "cpu",
                 "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err.strip()
    assert "preprocessed with size 12" in err and "not size 32" in err and "\n" not in err
    # predict asked for another size than the checkpoint's
    row = read_manifest(manifest).iloc[0]
    scans = [f"--{m}={row[m]}" for m in MODALITIES]
    assert main(["predict", checkpoint, *scans, "--size", "12", "--out", str(tmp_path / "pred")]) == 2
    err = capsys.readouterr().err.strip()
    assert "trained on 32x32 in-plane inputs but --size 12" in err and "\n" not in err
    # a checkpoint whose record was changed after training
    model_json = trained / "model.json"
    original = model_json.read_text()
    try:
        record = json.loads(original)
        record["preprocessing"]["version"] = PREPROCESS_VERSION + 1
        model_json.write_text(json.dumps(record))
        assert main(["predict", checkpoint, *scans, "--out", str(tmp_path / "pred")]) == 2
        err = capsys.readouterr().err.strip()
        assert f"preprocessing version {PREPROCESS_VERSION + 1}" in err and "\n" not in err
    finally:
        model_json.write_text(original)
    # everything agreeing: evaluate makes its cache with the checkpoint's record
    assert main(["evaluate", checkpoint, manifest, "--cache", str(tmp_path / "cache_32"), "--bootstrap", "0",
                 "--device", "cpu", "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["size"] == 32
    assert read_plan(tmp_path / "cache_32") == Preprocessing(size=32)


def test_a_checkpoint_cannot_record_other_channels_than_its_model(tmp_path):
    from gliofed.config import TrainConfig
    from gliofed.model import build_model
    from gliofed.runs import save_checkpoint

    config = TrainConfig(model={"features": (4, 8, 16, 32), "hidden": 8}, modalities=("t1",), device="cpu")
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match="contrasts t1, t2 are not the model's t1"):
        save_checkpoint(tmp_path / "m.safetensors", build_model(config), config,
                        preprocessing=Preprocessing(size=16, modalities=("t1", "t2")))


def test_a_cache_without_a_record_is_named(tmp_path):
    (tmp_path / "cache").mkdir()
    with pytest.raises(CacheError, match="no preprocessing record"):
        read_plan(tmp_path / "cache")
