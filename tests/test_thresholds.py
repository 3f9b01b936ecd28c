"""Decision thresholds chosen on the training split travel with the model: stored in model.json, used by
`evaluate` and `predict` (whose markers JSON names them)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from gliofed.config import TrainConfig
from gliofed.data.cache import PREPROCESS_VERSION
from gliofed.data.manifest import read_manifest
from gliofed.metrics import choose_thresholds, classification_metrics
from gliofed.model import build_model
from gliofed.runs import load_checkpoint, save_checkpoint
from gliofed.vocab import MODALITIES
from tests.fake_predictions import miscalibrated_predictions

SMALL_MODEL = {"features": (4, 8, 16, 32), "hidden": 8}


def _checkpoint(path, thresholds=None):
    config = TrainConfig(model=SMALL_MODEL, device="cpu")
    torch.manual_seed(0)
    return save_checkpoint(path, build_model(config), config, thresholds=thresholds,
                           preprocessing={"size": 16, "modalities": list(MODALITIES), "version": PREPROCESS_VERSION})


def _recall(table):
    return table[(table["task"] == "idh") & (table["metric"] == "recall")]["value"].iloc[0]


def test_the_youden_threshold_travels_in_the_checkpoint_and_restores_recall(tmp_path):
    record = choose_thresholds(miscalibrated_predictions(seed=0, n=60))  # the training split
    _, _, state = load_checkpoint(_checkpoint(tmp_path / "model.safetensors", record))
    assert state["thresholds"] == record
    test = miscalibrated_predictions(seed=1, n=60)
    assert _recall(classification_metrics(test, n_boot=0)) == 0  # the fixed 0.5
    assert _recall(classification_metrics(test, n_boot=0, thresholds=state["thresholds"])) > 0.5


def test_a_checkpoint_without_thresholds_loads_with_none(tmp_path):
    _, _, state = load_checkpoint(_checkpoint(tmp_path / "model.safetensors"))
    assert state["thresholds"] == {}


@pytest.mark.parametrize("markers", [{"idh": 1.5}, {"idh": -0.1}, {"idh": "0.3"}, {"idh": True}, ["idh"]],
                         ids=["above 1", "below 0", "a string", "a boolean", "not a mapping"])
def test_a_checkpoint_whose_thresholds_are_not_probabilities_is_refused(tmp_path, markers):
    from gliofed.errors import CheckpointError

    path = _checkpoint(tmp_path / "model.safetensors", {"method": "youden", "markers": markers})
    with pytest.raises(CheckpointError, match="threshold"):
        load_checkpoint(path)


class LowIdh(torch.nn.Module):
    """A stand-in network that says IDH mutant with probability 0.2 (and background everywhere)."""

    def forward(self, x):
        seg = torch.zeros(x.shape[0], 4, *x.shape[2:])
        seg[:, 0] = 1
        idh = torch.log(torch.tensor([[0.8, 0.2]]))
        return {"seg": seg, "idh": idh, "codeletion": torch.zeros(1, 2), "mgmt": torch.zeros(1, 2),
                "grade": torch.zeros(1, 3)}


@pytest.mark.parametrize("stored", [True, False], ids=["stored threshold", "none stored"])
def test_predict_decides_with_the_stored_threshold_and_names_it(tiny_cohort, tmp_path, stored):
    from gliofed.inference import Predictor

    row = read_manifest(tiny_cohort / "manifest.csv").iloc[0]
    record = {"method": "youden", "split": "train", "markers": {"idh": 0.15}, "n": {"idh": 40}} if stored else None
    predictor = Predictor(_checkpoint(tmp_path / "model.safetensors", record), device="cpu")
    predictor.model = LowIdh()
    case = {m: row[m] for m in MODALITIES}
    predictor.write_case("p1", predictor.predict_case("p1", case), tmp_path / "out")
    markers = json.loads((tmp_path / "out" / "p1_markers.json").read_text())
    assert markers["probabilities"]["idh"]["mutant"] == pytest.approx(0.2)
    rule = markers["thresholds"]["idh"]
    if stored:
        assert markers["predicted"]["idh"] == "mutant"
        assert rule == {"threshold": 0.15, "class": "mutant", "chosen_by": "Youden's J", "chosen_on": "train split"}
    else:
        assert markers["predicted"]["idh"] == "wildtype"
        assert rule["threshold"] == 0.5 and rule["chosen_by"].startswith("fixed default")
    assert markers["thresholds"]["grade"] == {"rule": "most likely class"}


@pytest.fixture
def fedavg_run(tiny_fedavg_run):
    return tiny_fedavg_run


def test_training_stores_thresholds_chosen_on_the_training_split(fedavg_run, tiny_cache):
    from gliofed.data import CaseDataset
    from gliofed.engine import predict

    model, config, state = load_checkpoint(fedavg_run)
    thresholds = state["thresholds"]
    assert thresholds["method"] == "f1" and thresholds["split"] == "train"
    train = CaseDataset(tiny_cache, split="train", seed=0)
    expected = choose_thresholds(predict(model, train, device="cpu", progress=False, hd95=False), "f1")
    assert thresholds == expected and thresholds["n"]["idh"] == int((train.index["idh"] >= 0).sum())


def test_evaluate_scores_at_the_stored_thresholds_and_says_so(fedavg_run, tiny_cohort, tiny_cache, tmp_path, capsys):
    from gliofed.cli import main

    _, _, state = load_checkpoint(fedavg_run)
    state["thresholds"]["markers"]["idh"] = 0.0  # every case positive: recall 1 whatever the model
    saved = json.loads((fedavg_run / "model.json").read_text())
    saved["thresholds"] = state["thresholds"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.json").write_text(json.dumps(saved))
    (tmp_path / "run" / "model.safetensors").write_bytes((fedavg_run / "model.safetensors").read_bytes())
    assert main(["evaluate", str(tmp_path / "run" / "model.safetensors"), str(tiny_cohort / "manifest.csv"),
                 "--cache", str(tiny_cache), "--bootstrap", "0", "--device", "cpu",
                 "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["thresholds"]["markers"]["idh"] == 0.0
    idh = {r["metric"]: r["value"] for r in metrics["classification"] if r["task"] == "idh"}
    assert idh["threshold"] == 0.0 and idh["recall"] == 1.0
    assert "threshold chosen on the train split by the F1-optimal point" in capsys.readouterr().out
    table3 = pd.read_csv(tmp_path / "eval" / "table3.csv", index_col=0)
    assert float(table3.loc["IDH", "threshold"]) == 0.0
