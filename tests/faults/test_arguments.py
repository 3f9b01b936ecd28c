"""Nonsense arguments, an output folder that is a file or refuses writes, a resume that would relabel another run:
each is one line on stderr and exit 2, before any work and (for argument errors) before torch is imported."""

import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from gliofed.cli import main
from gliofed.errors import ConfigError
from gliofed.experiments import run_experiment
from gliofed.federated.server.strategies import FedAvg, FederationError
from gliofed.federated.simulate import simulate
from gliofed.federated.site import Site
from gliofed.metrics import evaluate_predictions
from tests.federated.helpers import small_config

_NO_TORCH = ("import sys; from gliofed.cli import main; code = main(sys.argv[1:]); "
             "assert 'torch' not in sys.modules and 'monai' not in sys.modules, 'heavy import'; sys.exit(code)")


def _cli(*args: str) -> subprocess.CompletedProcess:
    """``gliofed args`` in a fresh interpreter that fails if torch or MONAI got imported."""
    return subprocess.run([sys.executable, "-c", _NO_TORCH, *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "manifest.csv"
    pd.DataFrame({"subject_id": ["a1", "b1"], "site": ["a", "b"]}).to_csv(path, index=False)
    return str(path)


def _read_only_folder(tmp_path):
    """A folder writes fail in: chmod 555, or where that does not stop this user (root), a /proc folder."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").write_text("x")
    except OSError:
        return folder
    (folder / "probe").unlink()
    return "/proc/self/gliofed_out"  # the kernel refuses new files here, even for root


@pytest.mark.parametrize("args,message", [
    (["train", "M", "--rounds", "0"], "argument --rounds: must be a positive integer, not '0'"),
    (["train", "M", "--local-epochs", "-1"], "argument --local-epochs: must be a positive integer, not '-1'"),
    (["train", "M", "--size", "0"], "argument --size: must be a positive integer, not '0'"),
    (["preprocess", "M", "--cache", "C", "--size", "-32"], "argument --size: must be a positive integer"),
    (["train", "M", "--device", "gpu"], "argument --device: 'gpu' is not a device"),
    (["train", "M", "--lr", "nan"], "argument --lr: must be a positive number"),
    (["train", "M", "--min-sites", "0"], "argument --min-sites: must be a positive integer"),
    (["evaluate", "K", "M", "--bootstrap", "-5"], "argument --bootstrap: must be an integer >= 0"),
    (["synth", "--out", "O", "--difficulty", "3"], "argument --difficulty: must be a number from 0 to 1"),
])
def test_a_nonsense_number_or_device_is_refused_before_torch_loads(args, message):
    done = _cli(*args)
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_help_and_argument_errors_return_in_under_two_seconds(tmp_path):
    for args in (["train", "--help"], ["train", str(tmp_path / "missing.csv")]):
        started = time.perf_counter()
        done = _cli(*args)
        assert time.perf_counter() - started < 2.0 and done.returncode in (0, 2), done.stderr


def test_an_empty_manifest_is_a_one_line_error(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("subject_id,dataset,site,t1\n")
    for command in (["check", str(empty)], ["train", str(empty)], ["preprocess", str(empty), "--cache", "c"]):
        done = _cli(*command)
        assert done.returncode == 2 and done.stderr.strip() == f"gliofed: error: {empty}: manifest has no subjects " \
                                                               "(no rows under its header)."


def test_min_sites_above_the_manifest_sites_is_refused_before_any_work(manifest, tmp_path):
    done = _cli("train", manifest, "--strategy", "fedavg", "--min-sites", "3", "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    assert f"--min-sites 3 is more than the 2 training site(s) in {manifest}" in done.stderr
    assert not (tmp_path / "run").exists()


def test_an_output_that_is_a_file_is_refused_before_training(manifest, tmp_path):
    (tmp_path / "out").write_text("not a folder")
    done = _cli("train", manifest, "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"))
    assert done.returncode == 2 and "the output folder is a file, not a folder" in done.stderr
    assert not (tmp_path / "cache").exists()  # nothing was preprocessed


def test_a_disk_that_refuses_writes_is_refused_before_training(manifest, tmp_path):
    out = os.path.join(_read_only_folder(tmp_path), "run")
    done = _cli("train", manifest, "--out", out, "--cache", str(tmp_path / "cache"))
    assert done.returncode == 2 and "the output folder is not writable" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "cache").exists()


def test_a_read_only_cache_folder_is_refused_before_preprocessing(manifest, tmp_path):
    done = _cli("preprocess", manifest, "--cache", os.path.join(_read_only_folder(tmp_path), "cache"))
    assert done.returncode == 2 and "the cache folder is not writable" in done.stderr


def test_a_device_this_machine_lacks_is_an_error_before_preprocessing(manifest, tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["train", manifest, "--device", "cuda:0", "--out", str(tmp_path / "run"),
                 "--cache", str(tmp_path / "cache")])
    assert code == 2 and not (tmp_path / "cache").exists()


def test_bootstrap_zero_means_no_intervals():
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"idh": rng.integers(0, 2, 9), "codeletion": -1, "mgmt": -1, "grade": -1,
                          "p_idh_0": 0.5, "p_idh_1": rng.random(9)})
    table["p_idh_0"] = 1 - table["p_idh_1"]
    for marker, k in (("codeletion", 2), ("mgmt", 2), ("grade", 3)):
        for c in range(k):
            table[f"p_{marker}_{c}"] = 1.0 / k
    table["has_mask"] = False
    metrics = evaluate_predictions(table, n_boot=0)["classification"]
    assert len(metrics) and metrics["ci_low"].isna().all() and metrics["value"].notna().any()


def test_min_sites_above_the_sites_fails_before_round_one(tiny_cache, tmp_path):
    with pytest.raises(FederationError, match="min_sites=3 must be between 1 and the 2 site"):
        simulate(FedAvg(1), [Site("brats21", tiny_cache), Site("upenn", tiny_cache)], None, small_config(),
                 rounds=1, min_sites=3, checkpoint_dir=tmp_path, progress=False)
    assert not (tmp_path / "state.pt").exists()


@pytest.fixture(scope="module")
def one_round_run(tiny_cache, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    run_experiment(tiny_cache, "fedavg", small_config(seed=3), rounds=1, checkpoint_dir=folder, progress=False)
    return folder


@pytest.mark.parametrize("strategy,changes,message", [
    ("fedprox", {}, "strategy fedavg \\(now fedprox\\)"),
    ("fedavg", {"seed": 4}, "seed 3 \\(now 4\\)"),
    ("fedavg", {"lr": 0.5}, "lr 0.01 \\(now 0.5\\)"),
])
def test_a_resume_with_other_settings_is_refused(one_round_run, tiny_cache, strategy, changes, message):
    with pytest.raises(ConfigError, match=f"cannot resume .*: it was started with {message}"):
        run_experiment(tiny_cache, strategy, small_config(seed=3).replace(**changes), rounds=2,
                       checkpoint_dir=one_round_run, resume=True, progress=False)


def test_the_command_line_refuses_a_mismatched_resume_before_preprocessing(one_round_run, tiny_cohort, tmp_path):
    done = _cli_with_torch("train", str(tiny_cohort / "manifest.csv"), "--strategy", "fedprox", "--resume",
                           "--out", str(one_round_run), "--cache", str(tmp_path / "cache"), "--device", "cpu")
    assert done.returncode == 2 and "cannot resume" in done.stderr and "strategy fedavg (now fedprox)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "cache").exists()


def _cli_with_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gliofed.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
