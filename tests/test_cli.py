import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from gliofed.cli import main


def test_check_clean_manifest_exits_zero_with_summary(small_manifest, capsys):
    assert main(["check", str(small_manifest)]) == 0
    assert "2 subjects, no problems" in capsys.readouterr().out


def test_check_prints_one_line_per_problem_and_exits_one(small_manifest, capsys):
    (small_manifest.parent / "s1" / "s1_t2.nii.gz").unlink()
    nib.save(nib.Nifti1Image(np.zeros((7, 8, 9), np.int16), np.eye(4)), small_manifest.parent / "s2" / "s2_t1.nii.gz")
    assert main(["check", str(small_manifest)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "s1: s1_t2.nii.gz: file not found" in out
    assert "s2: s2_t1.nii.gz: empty modality (every voxel is 0)" in out


def test_user_error_prints_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "gliofed.cli", "preprocess", str(tmp_path / "missing.csv"),
                             "--cache", str(tmp_path / "c")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"gliofed: error: {tmp_path / 'missing.csv'}: manifest file not found."
    assert "Traceback" not in result.stderr


def test_synth_then_preprocess_from_the_command_line(tmp_path, capsys):
    assert main(["synth", "--preset", "tiny", "--out", str(tmp_path / "c"), "--sites", "tcga_lgg",
                 "--cases-per-site", "2", "--seed", "1"]) == 0
    assert main(["preprocess", str(tmp_path / "c" / "manifest.csv"), "--cache", str(tmp_path / "cache"),
                 "--size", "16"]) == 0
    out = capsys.readouterr().out
    assert "2 subjects written" in out and "2 preprocessed, 0 up to date, 0 skipped" in out


def test_synth_cues_flag_makes_the_morphology_cohort(tmp_path, capsys):
    import json

    assert main(["synth", "--preset", "tiny", "--out", str(tmp_path / "c"), "--sites", "tcga_lgg",
                 "--cases-per-site", "2", "--cues", "morphology"]) == 0
    assert json.loads((tmp_path / "c" / "cohort.json").read_text())["cues"] == "morphology"
    assert "cues morphology" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # an unknown family: an argument error before any work
        main(["synth", "--preset", "tiny", "--out", str(tmp_path / "d"), "--cues", "colour"])
    assert not (tmp_path / "d").exists()


def test_train_then_evaluate_write_checkpoint_predictions_and_metrics(tiny_cohort, tmp_path, capsys):
    import json

    import pandas as pd

    manifest = str(tiny_cohort / "manifest.csv")
    cache = str(tmp_path / "cache")
    assert main(["train", manifest, "--preset", "tiny", "--epochs", "1", "--modalities", "t1,t2", "--size", "16",
                 "--cache", cache, "--device", "cpu", "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "run" / "history.csv").is_file()
    assert main(["evaluate", str(tmp_path / "run" / "model.safetensors"), manifest, "--size", "16", "--cache", cache,
                 "--bootstrap", "20", "--device", "cpu", "--out", str(tmp_path / "eval")]) == 0
    predictions = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    expected = (pd.read_csv(manifest)["split"] == "test").sum()
    assert len(predictions) == expected
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["cases"] == expected and metrics["classification"]
    assert "IDH" in capsys.readouterr().out


def test_evaluate_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "none.ckpt"), str(tmp_path / "m.csv")]) == 2
    assert capsys.readouterr().err.strip() == f"gliofed: error: {tmp_path / 'none.ckpt'}: checkpoint not found."


def test_train_federated_strategy_writes_history_per_round(tiny_cohort, tmp_path):
    import pandas as pd

    assert main(["train", str(tiny_cohort / "manifest.csv"), "--strategy", "fedavg", "--rounds", "2",
                 "--local-epochs", "1", "--preset", "tiny", "--size", "16", "--cache", str(tmp_path / "cache"),
                 "--device", "cpu", "--out", str(tmp_path / "run")]) == 0
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert list(history["round"]) == [1, 2] and (history["bytes_up"] > 0).all()
    assert (tmp_path / "run" / "state.safetensors").is_file() and (tmp_path / "run" / "history_sites.csv").is_file()


def test_train_defaults_to_the_native_in_plane_size_and_the_presets_distillation(tiny_cohort, tmp_path, monkeypatch,
                                                                                 capsys):
    import gliofed.experiments

    captured = {}

    def fake_train(out, cache, strategy, config, rounds, **kwargs):
        captured.update(cache=cache, distill=kwargs["distill"])
        raise SystemExit(0)

    monkeypatch.setattr(gliofed.experiments, "train_and_save", fake_train)
    monkeypatch.chdir(tmp_path)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text((tiny_cohort / "manifest.csv").read_text())  # same cases, cache beside this copy
    for entry in tiny_cohort.iterdir():
        if entry.is_dir() and not entry.name.startswith("cache"):
            (tmp_path / entry.name).symlink_to(entry)
    with pytest.raises(SystemExit):
        main(["train", str(manifest), "--strategy", "distill", "--preset", "tiny", "--synthetic", "2"])
    assert "in-plane size 40" in capsys.readouterr().out  # tiny volumes are 40 x 46: never upsampled to 128
    assert captured["cache"].name == "cache_40"
    assert captured["distill"] == {"steps": 2, "server_epochs": 2, "n_synthetic": 2}


def _capture_train(monkeypatch) -> dict:
    import gliofed.experiments

    captured = {}

    def fake_train(out, cache, strategy, config, rounds, **kwargs):
        captured.update(config=config, distill=kwargs["distill"])
        raise SystemExit(0)

    monkeypatch.setattr(gliofed.experiments, "train_and_save", fake_train)
    return captured


def _copy_of(tiny_cohort, folder, cohort_json: str | None):
    folder.mkdir()
    (folder / "manifest.csv").write_text((tiny_cohort / "manifest.csv").read_text())
    for entry in tiny_cohort.iterdir():
        if entry.is_dir() and not entry.name.startswith("cache"):
            (folder / entry.name).symlink_to(entry)
    if cohort_json is not None:
        (folder / "cohort.json").write_text(cohort_json)
    return folder / "manifest.csv"


def test_synth_records_its_preset_and_train_follows_it_without_preset(tiny_cohort, tmp_path, monkeypatch, capsys):
    import json

    assert json.loads((tiny_cohort / "cohort.json").read_text())["preset"] == "tiny"
    captured = _capture_train(monkeypatch)
    manifest = _copy_of(tiny_cohort, tmp_path / "c", (tiny_cohort / "cohort.json").read_text())
    with pytest.raises(SystemExit):
        main(["train", str(manifest), "--strategy", "distill", "--rounds", "1", "--size", "16"])
    assert "preset tiny (the synthetic cohort's" in capsys.readouterr().out
    assert captured["distill"] == {"steps": 2, "server_epochs": 2}  # the tiny preset's effort, not the paper's
    assert captured["config"].optimizer == "adamw"


def test_train_without_preset_or_cohort_file_uses_the_papers_recipe(tiny_cohort, tmp_path, monkeypatch):
    captured = _capture_train(monkeypatch)
    manifest = _copy_of(tiny_cohort, tmp_path / "c", None)
    with pytest.raises(SystemExit):
        main(["train", str(manifest), "--strategy", "fedavg", "--rounds", "1", "--size", "16"])
    assert captured["config"].optimizer == "sgd" and captured["config"].lr == 1e-3


_DAMAGED = ["{not json", '{"preset": "huge"}', '["tiny"]', "[" * 200_000, '{"preset": "tiny"}' + " " * 70_000,
            '{"preset": ["tiny"]}', '{"preset": ' + "[" * 60_000]  # the last: under the size cap, too deep to parse


def test_the_deep_cohort_file_is_under_the_size_cap_and_too_deep_for_json():
    import json

    from gliofed.presets import _COHORT_FILE_LIMIT

    deep = _DAMAGED[-1]
    assert len(deep.encode()) < _COHORT_FILE_LIMIT  # so it reaches the parser, not the size check
    with pytest.raises(RecursionError):
        json.loads(deep)


@pytest.mark.parametrize("text", _DAMAGED)
def test_a_damaged_cohort_file_is_refused_in_one_line_before_any_work(tiny_cohort, tmp_path, monkeypatch, capsys,
                                                                      text):
    captured = _capture_train(monkeypatch)
    manifest = _copy_of(tiny_cohort, tmp_path / "c", text)
    assert main(["train", str(manifest), "--strategy", "fedavg", "--rounds", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gliofed: error: {tmp_path / 'c' / 'cohort.json'}: ") and "\n" not in err
    assert not captured and not list((tmp_path / "c").glob("cache*"))  # nothing trained or preprocessed


@pytest.mark.parametrize("text", _DAMAGED)
def test_the_argument_check_reads_the_cohort_file_before_train_runs(tiny_cohort, tmp_path, text):
    """The check runs in check_arguments, before the command imports torch or touches the cache."""
    from gliofed.cli import build_parser, check_arguments
    from gliofed.errors import ConfigError

    manifest = _copy_of(tiny_cohort, tmp_path / "c", text)
    args = build_parser().parse_args(["train", str(manifest), "--strategy", "fedavg", "--rounds", "1"])
    with pytest.raises(ConfigError, match="cohort.json: ") as caught:
        check_arguments(args)
    assert len(str(caught.value)) < 400
    assert check_arguments(build_parser().parse_args(["train", str(manifest), "--strategy", "fedavg",
                                                      "--preset", "tiny"])) is None  # --preset: the file is not read

