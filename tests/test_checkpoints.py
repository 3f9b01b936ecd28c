"""Checkpoints safe to share: safetensors + JSON, nothing in a checkpoint ever runs."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from gliofed.cli import main
from gliofed.config import TrainConfig
from gliofed.errors import CheckpointError
from gliofed.federated.server.strategies.local_only import LocalOnly
from gliofed.model import build_model
from gliofed.runs import TrainingRun, load_checkpoint, save_checkpoint

CONFIG = TrainConfig(model={"features": (4, 8, 16, 32), "hidden": 8}, device="cpu")


class Payload:
    """Unpickling this object creates the file ``marker``: what an attacker's checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _malicious(path: Path, marker: Path, zipped: bool = True) -> Path:
    content = {"model": Payload(marker), "train_config": {}}
    if zipped:
        torch.save(content, path)  # torch's zip container, as old gliofed checkpoints were
    else:
        path.write_bytes(pickle.dumps(content))
    return path


@pytest.mark.parametrize("zipped", [True, False])
def test_a_malicious_pickle_is_refused_without_running(tmp_path, zipped):
    marker = tmp_path / "pwned"
    path = _malicious(tmp_path / "model.ckpt", marker, zipped)
    with pytest.raises(CheckpointError, match="old pickle checkpoint that cannot be loaded without running code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_pickle_renamed_safetensors_is_refused_too(tmp_path):
    marker = tmp_path / "pwned"
    _malicious(tmp_path / "model.safetensors", marker)
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(CheckpointError, match="old pickle checkpoint"):
        load_checkpoint(tmp_path / "model.safetensors")
    assert not marker.exists()


def test_evaluate_with_a_malicious_checkpoint_is_a_one_line_error(tiny_cohort, tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = _malicious(tmp_path / "model.ckpt", marker)
    assert main(["evaluate", str(path), str(tiny_cohort / "manifest.csv"), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "cannot be loaded without running code" in err
    assert not marker.exists()


def test_predict_with_a_malicious_checkpoint_is_a_one_line_error(tiny_cohort, tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = _malicious(tmp_path / "model.ckpt", marker)
    flair = next(tiny_cohort.rglob("*flair*.nii.gz"))
    assert main(["predict", str(path), "--flair", str(flair), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "cannot be loaded without running code" in err
    assert not marker.exists()


@pytest.mark.parametrize("name", [TrainingRun.LEGACY_STATE, TrainingRun.STATE])
def test_resume_from_a_malicious_state_is_a_one_line_error(name, tiny_cohort, tmp_path, capsys):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    _malicious(run / name, marker)
    (run / TrainingRun.STATE_SETTINGS).write_text("{}")
    assert main(["train", str(tiny_cohort / "manifest.csv"), "--strategy", "fedavg", "--rounds", "1", "--resume",
                 "--preset", "tiny", "--size", "16", "--cache", str(tmp_path / "cache"), "--device", "cpu",
                 "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "without running code" in err
    assert not marker.exists()


def test_files_are_safetensors_and_json(tmp_path):
    path = save_checkpoint(tmp_path / "model.safetensors", build_model(CONFIG), CONFIG, epoch=3,
                           preprocessing={"size": 24, "modalities": list(CONFIG.modalities)})
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert any(k.startswith("/model/") for k in list(f.keys()))
    _, config, state = load_checkpoint(tmp_path)  # a run folder works too
    assert config == CONFIG and state["epoch"] == 3 and state["preprocessing"]["size"] == 24


def test_a_checkpoint_without_its_json_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path / "model.safetensors", build_model(CONFIG), CONFIG)
    (tmp_path / "model.json").unlink()
    with pytest.raises(CheckpointError, match="settings file model.json is missing"):
        load_checkpoint(tmp_path / "model.safetensors")


def test_an_old_checkpoint_of_tensors_and_plain_types_still_loads(tmp_path):
    model = build_model(CONFIG)
    torch.save({"model": model.state_dict(), "model_config": model.config, "train_config": CONFIG.to_dict(),
                "optimizer": None, "epoch": 2, "extra": {}}, tmp_path / "model.ckpt")
    loaded, config, state = load_checkpoint(tmp_path / "model.ckpt")
    assert config == CONFIG and state["epoch"] == 2
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_resume_state_keeps_local_only_site_weights_exactly(tmp_path):
    model = build_model(CONFIG)
    rng = np.random.default_rng(0)
    sites = {"a": {"w:x": rng.standard_normal((3, 5)).astype(np.float32), "b:n": np.array(7, dtype=np.int64)},
             "b": {"w:x": rng.standard_normal((3, 5)).astype(np.float32), "b:n": np.array(1, dtype=np.int64)}}
    history = [{"round": 1, "metrics": {"dice_WT": float("nan"), "auc_idh": 0.25}, "excluded": {"c": "too slow"}}]
    TrainingRun(tmp_path).save_state(1, model, {"site_models": sites}, history, CONFIG)
    strategy = LocalOnly.from_checkpoint(tmp_path / TrainingRun.STATE)
    for site, arrays in sites.items():
        for name, array in arrays.items():
            assert strategy.site_models[site][name].dtype == array.dtype
            np.testing.assert_array_equal(strategy.site_models[site][name], array)
    state = TrainingRun(tmp_path).load_state()
    assert state["round"] == 1 and state["history"][0]["excluded"] == {"c": "too slow"}
    # an unknown (NaN) metric is strict JSON's null, read back as None
    assert state["history"][0]["metrics"]["dice_WT"] is None and TrainConfig.from_dict(state["config"]) == CONFIG
    assert "NaN" not in (tmp_path / TrainingRun.STATE_SETTINGS).read_text()


def test_no_unsafe_load_remains_in_the_package():
    package = Path(__file__).resolve().parents[1] / "gliofed"
    offenders = [str(p) for p in package.rglob("*.py") if "weights_only=False" in p.read_text()]
    assert offenders == []


def test_a_checkpoint_loads_whatever_device_name_the_caller_uses(tmp_path):
    save_checkpoint(tmp_path / "model.safetensors", build_model(CONFIG), CONFIG)
    for device in ("auto", "cpu"):  # notebooks pass their config's device, "auto" by default
        model, _, _ = load_checkpoint(tmp_path, device)
        assert next(model.parameters()).device.type == "cpu"
