"""Notebooks: structure (one `parameters` cell, no committed outputs) and execution on `tiny` with papermill."""

import json

import pytest

from gliofed.data.manifest import read_manifest
from gliofed.notebooks import (
    NOTEBOOK_DIR,
    load_results,
    ordered_notebooks,
    run_notebook,
)

NOTEBOOKS = ordered_notebooks()


def test_notebooks_exist_in_order():
    names = [p.name for p in NOTEBOOKS]
    assert names == ["01_data_curation.ipynb", "02_federated_training.ipynb", "03_evaluation.ipynb",
                     "04_interpretability_viewer.ipynb", "05_flower_federation.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebook_teaches_objectives_timing_and_exercises_with_solutions(path):
    import papermill as pm

    cells = json.loads(path.read_text())["cells"]
    opening = "".join(cells[0]["source"])
    assert "**Learning objectives.**" in opening and "**Timing.**" in opening and "minute" in opening
    exercises = next(i for i, c in enumerate(cells) if "".join(c["source"]).startswith("## Exercises"))
    numbered = [line for line in "".join(cells[exercises]["source"]).splitlines() if line[:3] in ("1. ", "2. ", "3. ")]
    assert 2 <= len(numbered) <= 3
    solutions = [c for c in cells[exercises + 1:] if c["cell_type"] == "code"]
    assert len(solutions) == len(numbered)
    assert all("".join(c["source"]).startswith("if solutions") for c in solutions)
    assert all(c["metadata"].get("jupyter", {}).get("source_hidden") for c in solutions)  # collapsed in JupyterLab
    assert pm.inspect_notebook(str(path))["solutions"]["default"] == "False"


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
    sites = load_results(tmp_path / "data" / "runs" / "01_data_curation.results.json")
    assert len(sites) == 5 and sites["subjects"].sum() == 20


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """Notebook 02 run once on tiny (1 round); notebooks 03 and 04 then read its checkpoints."""
    root = tmp_path_factory.mktemp("nb")
    data = root / "data"
    run_notebook(NOTEBOOK_DIR / "02_federated_training.ipynb", root / "out",
                 {"preset": "tiny", "data_dir": str(data), "rounds": 1, "local_epochs": 1, "seed": 0})
    return root


def test_federated_notebook_runs_every_strategy_on_tiny(trained_tiny):
    data = trained_tiny / "data"
    records = load_results(data / "runs" / "02_federated_training.results.json")
    assert set(records["strategy"]) == {"centralized", "local", "fedavg", "fedprox", "distill"}
    for strategy in ("centralized", "local", "fedavg", "fedprox", "distill"):
        assert (data / "runs" / strategy / "model.safetensors").is_file()
    assert (records["privacy_flagged_class_stats"] == 0).all() and (records["privacy_flagged_real_unsafe"] > 0).all()
    epochs = dict(zip(records["strategy"], records["local_epochs"]))
    assert epochs["distill"] == 1 and epochs["fedavg"] == epochs["centralized"] > 1  # the matched budget


def test_federated_notebook_renders_the_benchmark_from_its_csvs(trained_tiny):
    from gliofed.experiments.benchmark import benchmark_markdown

    notebook = json.loads((trained_tiny / "out" / "02_federated_training.ipynb").read_text())
    text = json.dumps(notebook)
    rendered = benchmark_markdown(pairs=[("distill", "fedavg"), ("fedprox", "fedavg"), ("centralized", "fedavg"),
                                         ("local", "fedavg"), ("distill", "centralized")])
    shown = ["".join(output["data"]["text/markdown"]) for cell in notebook["cells"] if cell["cell_type"] == "code"
             for output in cell.get("outputs", []) if "text/markdown" in output.get("data", {})]
    assert rendered in shown  # the executed notebook shows exactly what the CSVs say (lines joined as nbformat splits)
    from gliofed.experiments.claims import comparison_block

    assert comparison_block() in shown  # and the preregistered comparison, from its shipped per-seed CSV
    assert "by hand and the library agree on every weight" in text and "refuses to send its distilled set" in text


def test_evaluation_notebook_runs_on_tiny(trained_tiny):
    data = trained_tiny / "data"
    executed = run_notebook(NOTEBOOK_DIR / "03_evaluation.ipynb", trained_tiny / "out",
                            {"preset": "tiny", "data_dir": str(data), "strategies": "centralized,local,distill",
                             "ablation_epochs": 1, "bootstrap": 20, "seed": 0})
    assert "not found: training" not in executed.read_text()  # notebook 02's checkpoints were reused
    records = load_results(data / "runs" / "03_evaluation.results.json")
    assert set(records["section"]) == {"table3", "segmentation", "ablation"}
    assert set(records.loc[records["section"] == "table3", "strategy"]) == {"centralized", "local", "distill"}
    ablation = records[records["section"] == "ablation"]
    assert set(ablation["strategy"]) == {f"centralized {m}" for m in ("T1", "T1+T2", "T1+T2+T1ce", "all")}
    assert (data / "runs" / "ablation" / "T1_T2" / "model.safetensors").is_file()


def test_interpretability_notebook_runs_on_tiny_with_a_static_viewer(trained_tiny):
    data = trained_tiny / "data"
    executed = run_notebook(NOTEBOOK_DIR / "04_interpretability_viewer.ipynb", trained_tiny / "out",
                            {"preset": "tiny", "data_dir": str(data), "viewer_cases": 2, "seed": 0})
    assert "showing a static view" in executed.read_text()
    summary = load_results(data / "runs" / "04_interpretability_viewer.results.json")
    assert list(summary["target"]) == ["seg", "idh", "codeletion", "mgmt", "grade"]
    assert summary["top_share"].dropna().between(0, 1).all() and (summary["n"] > 0).all()


def test_curation_notebook_runs_on_your_own_brats_download(tmp_path, monkeypatch):
    from tests.data.source_fixtures import make_brats

    monkeypatch.chdir(tmp_path)
    make_brats(tmp_path / "download")
    executed = run_notebook(NOTEBOOK_DIR / "01_data_curation.ipynb", tmp_path / "out",
                            {"data_dir": "mine", "preset": "paper", "source": "brats", "root": "download"})
    text = executed.read_text()
    assert "4 case(s) found, 2 included, 2 excluded" in text and "2 exclusion(s)" in text
    assert len(read_manifest(tmp_path / "mine" / "manifest.csv")) == 2
    assert (tmp_path / "mine" / "cache_128" / "index.csv").is_file()


@pytest.mark.flower
def test_flower_notebook_runs_a_loopback_federation_on_tiny(trained_tiny):
    pytest.importorskip("flwr")
    data = trained_tiny / "data"
    executed = run_notebook(NOTEBOOK_DIR / "05_flower_federation.ipynb", trained_tiny / "out",
                            {"preset": "tiny", "data_dir": str(data), "sites": 2, "flower_rounds": 1, "seed": 0,
                             "timeout": 480})
    records = load_results(data / "runs" / "05_flower_federation.results.json")
    assert list(records["strategy"]) == ["fedavg", "distill"] and (records["bytes_up"] > 0).all()
    assert records.set_index("strategy").loc["distill", "bytes_up"] < records.set_index("strategy").loc["fedavg",
                                                                                                       "bytes_up"]
    assert "still running: nothing" in executed.read_text()  # every process it started is stopped


@pytest.mark.slow
def test_every_notebooks_exercise_solutions_run(tmp_path):
    """``solutions=True`` on tiny: each notebook's solution cells run (CI: make test-slow)."""
    import papermill as pm

    params = {"preset": "tiny", "data_dir": str(tmp_path / "data"), "rounds": 1, "seed": 0, "solutions": True,
              "ablation_epochs": 1, "bootstrap": 20, "viewer_cases": 2, "sites": 2, "timeout": 480}
    for path in NOTEBOOKS:
        declared = set(pm.inspect_notebook(str(path)))
        executed = run_notebook(path, tmp_path / "out", {k: v for k, v in params.items() if k in declared}, html=False)
        cells = json.loads(executed.read_text())["cells"]
        solved = [c for c in cells if c["cell_type"] == "code" and "".join(c["source"]).startswith("if solutions")]
        assert solved and all(c["outputs"] for c in solved), path.name  # every solution printed or drew something
