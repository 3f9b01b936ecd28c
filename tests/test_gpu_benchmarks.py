"""benchmarks/gpu_check.sh (the prepared GPU check, tested by its dry run) and the data-path, training and round
benchmarks at their smallest settings on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_cpu_convolution  # noqa: E402
import bench_data  # noqa: E402
import bench_round_overhead  # noqa: E402
import bench_train  # noqa: E402
import gpu_check  # noqa: E402


def _check(tmp_path, *args, wheels=None):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_OUT": str(tmp_path / "out"),
           "GLIOFED_WHEELS": str(wheels or tmp_path / "wheels")}
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=600)


def test_gpu_check_dry_run_checks_every_step_and_runs_nothing(tmp_path):
    done = _check(tmp_path, "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    for step in ("bench_train.py", "bench_data.py", "bench_strategies.py --paper-subset"):
        assert step in done.stdout
    assert "nothing run" in done.stdout and not (tmp_path / "out").exists()


def test_gpu_check_without_its_wheels_says_how_to_fetch_them(tmp_path):
    done = _check(tmp_path)
    assert done.returncode == 2 and "--fetch-wheels" in done.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_check_fits_its_budget_and_refuses_arguments_a_step_does_not_take(tmp_path):
    steps = gpu_check.plan(tmp_path, "cuda", 12)
    assert sum(step.budget_s for step in steps) < 8 * 60
    assert gpu_check.check_arguments(steps) == []
    steps[1].args.append("--no-such-flag")
    assert gpu_check.check_arguments(steps) == [f"bench_data: bench_data.py refuses {' '.join(steps[1].args)}"]


def test_wheel_list_holds_what_a_torch_machine_lacks_and_nothing_torch_brings():
    names = {line.split("==")[0] for line in gpu_check.wheel_requirements()}
    assert {"monai", "nibabel", "captum", "flwr", "nilearn", "scikit-learn", "safetensors"} <= names
    assert not names & {"torch", "sympy", "filelock", "jinja2", "networkx", "fsspec", "typing-extensions"}
    assert all("==" in line for line in gpu_check.wheel_requirements())


def test_data_path_benchmark_times_every_mode(tmp_path, capsys):
    assert bench_data.main(["--device", "cpu", "--shape", "4,5,8,9", "--cases", "4", "--epochs", "2",
                            "--workers", "0", "--json", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    for mode in ("legacy", "loader-w0", "device-cache"):
        assert mode in out


def test_training_benchmark_gives_the_engines_ratio_to_the_bare_step(tmp_path):
    import json

    assert bench_train.main(["--device", "cpu", "--shape", "4,4,16,16", "--batch", "2", "--steps", "1",
                             "--warmup", "1", "--repeats", "1", "--modes", "fp32,engine",
                             "--json", str(tmp_path / "t.json")]) == 0
    rows = {row["mode"]: row for row in json.loads((tmp_path / "t.json").read_text())["rows"]}
    assert rows["engine"]["x best bare"] == pytest.approx(rows["engine"]["vol/s"] / rows["fp32"]["vol/s"], rel=1e-2)


def test_round_overhead_clock_counts_nested_work_once():
    clock = bench_round_overhead.Clock()
    with clock.timing("model copies"), clock.timing("training"):
        pass
    taken = clock.take()
    assert taken["training"] == 0.0 and taken["model copies"] > 0.0 and clock.take()["model copies"] == 0.0


def test_the_cpu_convolution_benchmark_compares_both_kernels_on_one_case(monkeypatch, capsys):
    from gliofed.model import MultiTaskUNet, OneDNNConv3d

    net = MultiTaskUNet(features=(4, 8, 16, 32), hidden=8)
    plain = bench_cpu_convolution.generic(net)
    assert not any(isinstance(layer, OneDNNConv3d) for layer in plain.modules())
    assert any(isinstance(layer, OneDNNConv3d) for layer in net.modules())  # the original is untouched
    monkeypatch.setattr(bench_cpu_convolution, "SHAPES", (("tiny", (1, 4, 3, 16, 16)),))
    monkeypatch.setattr(sys, "argv", ["bench_cpu_convolution.py", "--turns", "1", "--repeats", "1"])
    bench_cpu_convolution.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny")]
    assert [row.split(" | ")[1] for row in rows] == ["forward", "forward + backward"]
    assert all(row.split(" | ")[4].endswith("x") for row in rows)
