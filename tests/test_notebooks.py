"""Notebooks: structure (one `parameters` cell, no committed outputs) and execution on `tiny` with papermill."""

import json

import pytest

from gliofed.notebooks import NOTEBOOK_DIR, ordered_notebooks, run_notebook

NOTEBOOKS = ordered_notebooks()


def test_notebooks_exist_in_order():
    names = [p.name for p in NOTEBOOKS]
    assert names and names[0] == "01_data_curation.ipynb" and names == sorted(names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_parameters_cell_and_no_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells if c["cell_type"] == "code")


def test_curation_notebook_runs_on_tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative data_dir is relative to where the run was started
    executed = run_notebook(NOTEBOOK_DIR / "01_data_curation.ipynb", tmp_path / "out",
                            {"preset": "tiny", "data_dir": "data", "seed": 0})
    text = executed.read_text()
    assert "no problems" in text and "grade unknown" in text and "0 exclusion(s)" in text
    assert (tmp_path / "out" / "01_data_curation.html").is_file()
    assert (tmp_path / "data" / "cache_32" / "index.csv").is_file()


def test_federated_notebook_runs_every_strategy_on_tiny(tmp_path):
    data = tmp_path / "data"
    run_notebook(NOTEBOOK_DIR / "02_federated_training.ipynb", tmp_path / "out",
                 {"preset": "tiny", "data_dir": str(data), "rounds": 1, "local_epochs": 1, "seed": 0})
    results = json.loads((data / "runs" / "02_results.json").read_text())
    assert {row["strategy"] for row in results["final"]} == {"centralized", "local", "fedavg", "fedprox", "distill"}
    for strategy in ("centralized", "local", "fedavg", "fedprox", "distill"):
        assert (data / "runs" / strategy / "model.ckpt").is_file()
    assert results["privacy_flagged"]["class_stats"] == 0
