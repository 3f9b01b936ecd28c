"""Issue 29, hostile input to ``predict``, checkpoints, manifests and run folders: nothing lost, nothing poisoned.
Each test is one of the issue's numbered reproductions (the number in its comment) and failed before the fix: a
one-sentence error (no traceback, non-zero exit, before the work where possible) or correct behaviour."""

from __future__ import annotations

import errno
import gzip
import json
import subprocess
import sys
import tracemalloc

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from gliofed.cli import main
from gliofed.config import TrainConfig
from gliofed.data.cache import PREPROCESS_VERSION, preprocess, read_index
from gliofed.data.check import check_manifest
from gliofed.data.manifest import write_manifest
from gliofed.errors import CheckpointError, DataError
from gliofed.fileio import to_json
from gliofed.model import build_model
from gliofed.runs import TrainingRun, load_checkpoint, save_checkpoint
from tests.conftest import write_case, write_manifest_rows

SMALL_MODEL = {"features": (4, 8, 16, 32), "hidden": 8}
BOMB_SHAPE = (3000, 3000, 300)


def _one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gliofed"), err
    return lines[0]


def _checkpoint(path, size=8, modalities=("t1", "t1ce", "t2", "flair"), model=None):
    config = TrainConfig(model=model or SMALL_MODEL, modalities=modalities, device="cpu")
    torch.manual_seed(0)
    return save_checkpoint(path, build_model(config), config,
                           preprocessing={"size": size, "modalities": list(modalities), "version": PREPROCESS_VERSION})


def _edit_settings(weights, edit):
    """Rewrite the ``model.json`` beside ``weights`` through ``edit(tree)``."""
    sidecar = weights.with_suffix(".json")
    tree = json.loads(sidecar.read_text())
    edit(tree)
    sidecar.write_text(json.dumps(tree))


def _scan_args(case_dir, subject="x"):
    return [a for m in ("t1", "t1ce", "t2", "flair") for a in (f"--{m}", str(case_dir / f"{subject}_{m}.nii.gz"))]


def _bomb(path):
    """An ~60-byte .nii.gz whose header declares 3000 x 3000 x 300 int16 voxels (5.4 GB)."""
    header = nib.Nifti1Header()
    header.set_data_shape(BOMB_SHAPE)
    header.set_data_dtype(np.int16)
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4))
    return path


def _extreme(path, value=3e38):
    """Rewrite a scan as float32 with two voxels set to ``value`` (finite, but z-scoring overflows)."""
    image = nib.load(path)
    data = np.asarray(image.dataobj, dtype=np.float32)
    data.flat[[3, 17]] = value
    nib.save(nib.Nifti1Image(data, image.affine), path)


@pytest.fixture
def case(tmp_path):
    """One 7 x 8 x 9 case with its ground truth, in its own folder C: (C, subject)."""
    write_case(tmp_path / "C", "x", seed=3)
    return tmp_path / "C", "x"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("model") / "model.safetensors")


@pytest.fixture
def cohort(tmp_path):
    """Six small cases over two sites (train and test in each): a manifest ``train`` handles in seconds."""
    rows = []
    for i in range(6):
        subject = f"s{i}"
        rows.append({"subject_id": subject, "dataset": "fixture", "site": "ab"[i % 2],
                     **write_case(tmp_path / subject, subject, seed=i), "idh": str(i % 2), "grade": str(i % 3),
                     "split": "test" if i >= 4 else "train"})
    return write_manifest_rows(tmp_path / "manifest.csv", rows)


# 1. predict destroys ground truth ----------------------------------------------------------------------------------
def test_predict_refuses_an_out_folder_that_holds_the_case_and_its_ground_truth(model_path, case, capsys):
    folder, subject = case
    truth = (folder / f"{subject}_seg.nii.gz").read_bytes()
    code = main(["predict", str(model_path), *_scan_args(folder), "--out", str(folder)])
    assert "the output folder holds subject x's" in _one_line_error(capsys, code)
    assert (folder / f"{subject}_seg.nii.gz").read_bytes() == truth and not (folder / "predictions.csv").exists()


def test_predict_refuses_to_replace_an_earlier_prediction_unless_asked(model_path, case, tmp_path, capsys):
    folder, _ = case
    out = tmp_path / "out"
    assert main(["predict", str(model_path), *_scan_args(folder), "--out", str(out)]) == 0
    earlier = (out / "x_seg.nii.gz").stat().st_mtime_ns
    capsys.readouterr()
    code = main(["predict", str(model_path), *_scan_args(folder), "--out", str(out)])
    assert "an earlier prediction is there; pass --overwrite" in _one_line_error(capsys, code)
    assert (out / "x_seg.nii.gz").stat().st_mtime_ns == earlier
    assert main(["predict", str(model_path), *_scan_args(folder), "--out", str(out), "--overwrite"]) == 0


# 2. finite but extreme voxels ------------------------------------------------------------------------------------
def test_check_names_the_contrast_whose_voxels_are_beyond_a_sane_range(cohort):
    _extreme(cohort.parent / "s1" / "s1_flair.nii.gz")
    report = check_manifest(cohort, progress=False)
    assert not report.ok
    assert [(p.subject, p.where) for p in report.problems] == [("s1", "s1_flair.nii.gz")]
    assert "beyond the sane range" in report.problems[0].message


def test_preprocess_skips_a_case_whose_z_scores_overflow_instead_of_caching_nan(cohort, tmp_path):
    _extreme(cohort.parent / "s1" / "s1_flair.nii.gz")
    report = preprocess(cohort, tmp_path / "cache", size=8, progress=False)
    skipped = report.skipped.set_index("subject_id")["reason"]
    assert list(skipped.index) == ["s1"] and "flair" in skipped["s1"] and "sane range" in skipped["s1"]
    assert "s1" not in set(read_index(tmp_path / "cache")["subject_id"])


def test_predict_refuses_a_scan_whose_z_scores_overflow(model_path, case, tmp_path, capsys):
    folder, _ = case
    _extreme(folder / "x_flair.nii.gz")
    code = main(["predict", str(model_path), *_scan_args(folder), "--out", str(tmp_path / "out")])
    line = _one_line_error(capsys, code)
    assert "subject x: flair:" in line and "sane range" in line
    assert not (tmp_path / "out" / "x_markers.json").exists()


def test_train_on_a_cohort_with_extreme_voxels_leaves_that_case_out_and_finishes(cohort, tmp_path, capsys):
    _extreme(cohort.parent / "s1" / "s1_flair.nii.gz")
    code = main(["train", str(cohort), "--preset", "tiny", "--size", "8", "--out", str(tmp_path / "run"),
                 "--cache", str(tmp_path / "cache")])
    out = capsys.readouterr()
    assert code == 0 and "Traceback" not in out.err
    assert "skipped s1: " in out.out and (tmp_path / "run" / "model.safetensors").is_file()


class _NaNNet(torch.nn.Module):
    """Outputs of the right shapes whose segmentation logits are NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, _, d, h, w = x.shape
        seg = torch.full((b, 4, d, h, w), float("nan")) + self.w
        return {"seg": seg, "idh": torch.zeros(b, 2) + self.w, "codeletion": torch.zeros(b, 2) + self.w,
                "mgmt": torch.zeros(b, 2) + self.w, "grade": torch.zeros(b, 3) + self.w}


def test_the_engine_refuses_a_non_finite_loss_naming_the_batch():
    from gliofed.engine import train_epoch
    from gliofed.errors import TrainingError
    from gliofed.losses import MultiTaskLoss

    batch = {"image": torch.zeros(2, 4, 3, 8, 8), "seg": torch.zeros(2, 1, 3, 8, 8), "has_mask": torch.tensor([1, 1]),
             "labels": torch.zeros(2, 4, dtype=torch.long), "subject": ["p7", "q9"]}
    model = _NaNNet()
    with pytest.raises(TrainingError, match=r"epoch 3: the training loss is nan on the batch of p7, q9"):
        train_epoch(model, [batch], MultiTaskLoss(), torch.optim.SGD(model.parameters(), lr=0.1),
                    torch.device("cpu"), desc="epoch 3", progress=False)
    assert float(model.w.detach()) == 0.0  # no step was taken


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path):
    weights = _checkpoint(tmp_path / "model.safetensors")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(weights))
    key = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    tensors[key][0] = float("nan")
    save_file(tensors, str(weights), metadata={"gliofed": "checkpoint"})
    with pytest.raises(CheckpointError, match=r"holds NaN or Inf values"):
        load_checkpoint(weights)


def test_every_json_gliofed_writes_is_strict_json():
    text = to_json({"auc": float("nan"), "n": np.float32("inf"), "ok": [np.float64(0.5)]})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}")) == {"auc": None, "n": None,
                                                                                    "ok": [0.5]}
    with pytest.raises(ValueError, match=r"probabilities\.idh is nan"):
        to_json({"probabilities": {"idh": float("nan")}}, nan="error")


# 5. memory from declared sizes ---------------------------------------------------------------------------------------
def test_check_refuses_a_nifti_bomb_from_its_header_without_allocating(cohort):
    _bomb(cohort.parent / "s2" / "s2_t2.nii.gz")
    tracemalloc.start()
    try:
        report = check_manifest(cohort, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [p.where for p in report.problems] == ["s2_t2.nii.gz"]
    assert "header declares 3000 x 3000 x 300 voxels" in report.problems[0].message
    assert peak < 50e6  # NumPy's allocations are traced: nothing of the declared 5.4 GB


def test_preprocess_skips_a_nifti_bomb_naming_it(cohort, tmp_path):
    _bomb(cohort.parent / "s2" / "s2_t2.nii.gz")
    report = preprocess(cohort, tmp_path / "cache", size=8, progress=False)
    reason = report.skipped.set_index("subject_id")["reason"]
    assert list(reason.index) == ["s2"] and reason["s2"].startswith("s2_t2.nii.gz: header declares 3000 x 3000")


def test_predict_refuses_a_nifti_bomb_before_the_work(model_path, case, tmp_path, capsys):
    folder, _ = case
    _bomb(folder / "x_t1.nii.gz")
    code = main(["predict", str(model_path), *_scan_args(folder), "--out", str(tmp_path / "out")])
    assert "t1 file" in (line := _one_line_error(capsys, code)) and "header declares 3000 x 3000 x 300" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_compressed_volume_above_the_voxel_cap_is_refused(case, monkeypatch):
    from gliofed.data.check import nifti_size_problem

    folder, _ = case
    assert nifti_size_problem(folder / "x_t1.nii.gz") is None
    monkeypatch.setenv("GLIOFED_MAX_VOXELS", "100")
    assert "more than the limit of 100" in nifti_size_problem(folder / "x_t1.nii.gz")


def test_a_model_json_declaring_huge_features_is_checked_on_the_meta_device(tmp_path, monkeypatch):
    import gliofed.runs

    weights = _checkpoint(tmp_path / "model.safetensors")
    _edit_settings(weights, lambda tree: tree["model_config"].update(features=[4, 8, 16, 512]))
    built = []
    real = gliofed.runs.build_model

    def spy(spec):
        model = real(spec)
        built.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(gliofed.runs, "build_model", spy)
    with pytest.raises(CheckpointError, match=r"the weights do not fit the model it describes \('down_3"):
        load_checkpoint(weights)
    assert built == ["meta"]  # the hostile size was never allocated


# 6. no lock on a run folder --------------------------------------------------------------------------------------
def test_a_second_train_into_a_run_folder_in_use_is_refused_before_any_work(cohort, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (run / TrainingRun.LOCK).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        code = main(["train", str(cohort), "--preset", "tiny", "--size", "8", "--out", str(run),
                     "--cache", str(tmp_path / "cache")])
    finally:
        holder.kill()
        holder.wait()
    assert f"another gliofed train (PID {holder.pid}) is writing this run folder" in _one_line_error(capsys, code)
    assert not (tmp_path / "cache").exists() and sorted(p.name for p in run.iterdir()) == [TrainingRun.LOCK]


# 7. tracebacks where a sentence belongs ------------------------------------------------------------------------------
def test_train_without_size_leaves_a_case_with_a_missing_t1_to_preprocessing(cohort, tmp_path, capsys):
    (cohort.parent / "s1" / "s1_t1.nii.gz").unlink()
    code = main(["train", str(cohort), "--preset", "tiny", "--out", str(tmp_path / "run"),
                 "--cache", str(tmp_path / "cache")])
    out = capsys.readouterr()
    assert code == 0 and "Traceback" not in out.err
    assert "in-plane size 7" in out.out and "skipped s1: t1 file s1_t1.nii.gz not found" in out.out


def test_train_without_size_and_no_readable_t1_is_one_sentence(cohort, tmp_path, capsys):
    for i in range(6):
        (cohort.parent / f"s{i}" / f"s{i}_t1.nii.gz").write_bytes(b"not a NIfTI")
    code = main(["train", str(cohort), "--preset", "tiny", "--out", str(tmp_path / "run"),
                 "--cache", str(tmp_path / "cache")])
    assert "no case has a readable t1 scan" in _one_line_error(capsys, code)


@pytest.mark.parametrize("args,message", [
    (["--device", "gpu"], "argument --device: 'gpu' is not a device"),
    (["--size", "-3"], "argument --size: must be a positive integer"),
    (["--min-component", "-1"], "argument --min-component: must be an integer >= 0"),
])
def test_predict_validates_its_arguments_like_train(model_path, case, tmp_path, capsys, args, message):
    folder, _ = case
    with pytest.raises(SystemExit) as stop:
        main(["predict", str(model_path), *_scan_args(folder), "--out", str(tmp_path / "out"), *args])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_predict_into_an_existing_file_is_refused_before_the_work(model_path, case, tmp_path, capsys):
    folder, _ = case
    (tmp_path / "out").write_text("a file")
    code = main(["predict", str(model_path), *_scan_args(folder), "--out", str(tmp_path / "out")])
    assert "the output folder is a file, not a folder" in _one_line_error(capsys, code)
    assert (tmp_path / "out").read_text() == "a file"


def test_an_error_without_a_message_is_still_one_sentence(model_path, case, monkeypatch):
    import gliofed.inference
    from gliofed.inference import Predictor

    def out_of_memory(*_args):
        def pipeline(_data):
            raise MemoryError()
        return pipeline

    monkeypatch.setattr(gliofed.inference, "inference_pipeline", out_of_memory)
    folder, _ = case
    paths = {m: str(folder / f"x_{m}.nii.gz") for m in ("t1", "t1ce", "t2", "flair")}
    with pytest.raises(DataError, match=r"^subject x: could not be preprocessed \(MemoryError\)\.$"):
        Predictor(model_path, device="cpu").predict_case("x", paths)


def test_a_300_character_subject_id_is_refused_before_any_case_is_written(model_path, case, tmp_path, capsys):
    folder, _ = case
    scans = {m: f"C/x_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")}
    manifest = tmp_path / "cases.csv"
    pd.DataFrame([{"subject_id": "x", **scans}, {"subject_id": "y" * 300, **scans}]).to_csv(manifest, index=False)
    code = main(["predict", str(model_path), "--manifest", str(manifest), "--out", str(tmp_path / "out")])
    assert "longer than 128 characters" in _one_line_error(capsys, code)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("edit,message", [
    (lambda tree: tree.update(model_config=[1, 2]), "its model settings are a list, not a mapping"),
    (lambda tree: tree["model_config"].update(features=[4, 8, 16]), "do not describe a gliofed network"),
    (lambda tree: tree["preprocessing"].update(size=0), "its preprocessing size 0 is not an in-plane size"),
    (lambda tree: tree["preprocessing"].update(size=-40), "its preprocessing size -40 is not an in-plane size"),
    (lambda tree: tree["preprocessing"].update(modalities=["t1", "t2"]),
     "its preprocessing gives 2 contrast(s) (t1, t2) but the model takes 4 input channel(s)"),
])
def test_a_model_json_with_wrong_values_is_one_sentence(tmp_path, edit, message):
    weights = _checkpoint(tmp_path / "model.safetensors")
    _edit_settings(weights, edit)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(weights)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_model_json_nested_200000_deep_is_one_sentence(tmp_path):
    weights = _checkpoint(tmp_path / "model.safetensors")
    weights.with_suffix(".json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        load_checkpoint(weights)


def test_heads_that_are_not_the_markers_are_refused(tmp_path):
    config = TrainConfig(model={**SMALL_MODEL, "heads": {"idh": 3, "codeletion": 2, "mgmt": 2, "grade": 3}},
                         device="cpu")
    weights = save_checkpoint(tmp_path / "model.safetensors", build_model(config), config,
                              preprocessing={"size": 8, "modalities": list(config.modalities),
                                             "version": PREPROCESS_VERSION})
    with pytest.raises(CheckpointError, match=r"heads .* do not match gliofed's markers idh \(2\)"):
        load_checkpoint(weights)


def test_curate_merge_of_an_empty_csv_is_one_sentence(tmp_path, capsys):
    (tmp_path / "empty.csv").write_text("")
    code = main(["curate", "--merge", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "all.csv")])
    assert "empty.csv: the manifest is empty" in _one_line_error(capsys, code)
    assert not (tmp_path / "all.csv").exists()


def _disk_full_on(fragment, monkeypatch):
    """Flushing a file whose name contains ``fragment`` fails as on a full disk (``os.fsync`` raises ENOSPC)."""
    import os

    import gliofed.fileio

    real = gliofed.fileio.os.fsync

    def fsync(fd):
        if fragment in os.path.basename(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(gliofed.fileio.os, "fsync", fsync)


def test_a_full_disk_while_saving_a_round_keeps_the_earlier_round_whole(tmp_path, monkeypatch):
    from gliofed.errors import WriteError

    config = TrainConfig(model=SMALL_MODEL, device="cpu")
    run, model = TrainingRun(tmp_path), build_model(config)
    run.save_state(1, model, {}, [{"round": 1}], config)
    earlier = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    _disk_full_on(TrainingRun.STATE_SETTINGS, monkeypatch)
    with pytest.raises(WriteError, match=r"state.json: could not be written because the disk is full .*; the "
                                         r"earlier files are unchanged\.$"):
        run.save_state(2, model, {}, [{"round": 1}, {"round": 2}], config)
    state = run.load_state()
    assert state["round"] == 1
    for key, value in earlier.items():
        torch.testing.assert_close(state["model"][key], value)  # the weights are round 1's too, not round 2's
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_while_predicting_is_one_sentence(model_path, case, tmp_path, monkeypatch, capsys):
    folder, _ = case
    _disk_full_on("_seg.nii.gz", monkeypatch)
    code = main(["predict", str(model_path), *_scan_args(folder), "--out", str(tmp_path / "out")])
    assert "x_seg.nii.gz: could not be written because the disk is full" in _one_line_error(capsys, code)
    assert not list((tmp_path / "out").iterdir())


# 8. unchecked values -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["=SUM(A1:A9)", "<i>x", "a\nb", "x\u202eyz"])
def test_predict_applies_the_safe_name_rule_to_subjects(model_path, case, tmp_path, capsys, name):
    folder, _ = case
    code = main(["predict", str(model_path), *_scan_args(folder), "--subject", name, "--out", str(tmp_path / "out")])
    assert "not a safe file name" in _one_line_error(capsys, code)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_csv_cells_that_start_a_formula_are_neutralised_in_every_csv(tmp_path):
    from gliofed.fileio import csv_safe

    frame = pd.DataFrame({"a": ["=HYPERLINK(\"http://x\")", "+1+1", "-", "@SUM(1)", "-1", "plain", "\tx"],
                          "n": [-1, 2, 3, 4, 5, 6, 7]})
    safe = csv_safe(frame)
    assert list(safe["a"]) == ["'=HYPERLINK(\"http://x\")", "'+1+1", "'-", "'@SUM(1)", "-1", "plain", "'\tx"]
    assert list(safe["n"]) == [-1, 2, 3, 4, 5, 6, 7]
    manifest = pd.DataFrame([{"subject_id": "s1", "dataset": "=cmd|' /C calc'!A0", "site": "a", "sex": "",
                              **{k: "" for k in ("t1", "t1ce", "t2", "flair", "seg", "split")},
                              "idh": -1, "codeletion": -1, "mgmt": -1, "grade": -1, "age": np.nan}])
    write_manifest(manifest, tmp_path / "m.csv")
    assert pd.read_csv(tmp_path / "m.csv", dtype=str)["dataset"][0].startswith("'=")


def test_evaluate_refuses_a_model_json_size_of_zero_before_building_a_cache(tmp_path, cohort, capsys):
    weights = _checkpoint(tmp_path / "model.safetensors")
    _edit_settings(weights, lambda tree: tree["preprocessing"].update(size=0))
    code = main(["evaluate", str(weights), str(cohort), "--out", str(tmp_path / "eval")])
    assert "its preprocessing size 0 is not an in-plane size" in _one_line_error(capsys, code)
    assert not (cohort.parent / "cache_0").exists()


def test_an_unknown_external_site_is_refused_before_the_cache_refresh(cohort, tmp_path, capsys):
    code = main(["train", str(cohort), "--external-site", "nosuch", "--size", "8", "--out", str(tmp_path / "run"),
                 "--cache", str(tmp_path / "cache")])
    assert not (tmp_path / "cache").exists()
    assert "--external-site 'nosuch' is not a site of" in _one_line_error(capsys, code)


def test_predicts_argument_and_header_checks_load_no_torch():
    """A forged NIfTI header is refused before torch (about 250 MB) is imported: the modules ``gliofed predict``
    imports before it checks the scans' headers import no torch (the memory bomb's peak stays under 200 MB)."""
    code = ("import sys, gliofed.cli, gliofed.inference, gliofed.segmentation\n"
            "from gliofed.segmentation import SegmentationInference\n"
            "SegmentationInference(window=(4, 8, 8), flips=(2,))\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
