"""Packaging: every imported package declared, the hospital-node requirement list honest, and a regular
(non-editable) install that runs the shipped notebooks."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gliofed"
#: the Jupyter-first part of the default install that a SuperNode must not need
JUPYTER_STACK = ("jupyterlab", "ipykernel", "papermill", "nbconvert", "nbformat", "IPython", "plotly", "anywidget",
                 "ipywidgets", "captum", "nilearn", "openpyxl")
#: what a site loads to train, distil and answer over Flower
SITE_MODULES = ("gliofed.federated.site.client_app", "gliofed.federated.site", "gliofed.federated.site.condense",
                "gliofed.federated.site.privacy", "gliofed.engine", "gliofed.data.cache", "gliofed.data.dataset",
                "gliofed.data.transforms", "gliofed.runs")


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _third_party_imports(files) -> set[str]:
    found = set()
    for path in files:
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "gliofed"}


def test_every_imported_package_is_declared():
    project = _pyproject()["project"]
    declared = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["flower"]}
    distributions = packages_distributions()
    missing = {}
    for module in _third_party_imports(PACKAGE.rglob("*.py")):
        names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not names & declared:
            missing[module] = sorted(names)
    assert missing == {}


def test_site_requirements_are_declared_dependencies_with_the_same_bounds():
    project = _pyproject()["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["flower"]
    declared = {_name(r): r.replace(" ", "") for r in requirements}
    site = [line.split("#")[0].strip() for line in (ROOT / "requirements" / "site.txt").read_text().splitlines()]
    for requirement in filter(None, site):
        assert declared.get(_name(requirement)) == requirement.replace(" ", ""), requirement


def test_a_site_imports_nothing_of_the_jupyter_stack_and_nothing_outside_its_requirements():
    code = ("import json, sys\n" + "".join(f"import {m}\n" for m in SITE_MODULES) +
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                           cwd=ROOT).stdout))
    assert loaded.isdisjoint(JUPYTER_STACK)
    site = {_name(line) for line in (ROOT / "requirements" / "site.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")} | {"torch"}
    from tests.import_graph import closure, graph, read_sources

    sources = read_sources(PACKAGE)
    import_graph = graph(sources)
    reached = set().union(*(closure(m, sources, import_graph) for m in SITE_MODULES))  # every import form
    files = [PACKAGE.parent / (m.replace(".", "/") + ".py") for m in reached]
    files = [f if f.is_file() else f.with_suffix("") / "__init__.py" for f in files]
    distributions = packages_distributions()
    for module in _third_party_imports(files):
        names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        assert names & site, module


def test_the_notebooks_ship_inside_the_package():
    from gliofed.notebooks import NOTEBOOK_DIR, ordered_notebooks

    assert NOTEBOOK_DIR.is_relative_to(PACKAGE) and len(ordered_notebooks()) == 5
    assert "ipynb/*.ipynb" in _pyproject()["tool"]["setuptools"]["package-data"]["gliofed"]


def test_notebooks_run_fails_loudly_without_notebooks(tmp_path, capsys):
    from gliofed.cli import main
    from gliofed.notebooks import run_notebooks

    with pytest.raises(Exception, match="no notebooks"):
        run_notebooks(tmp_path / "out", folder=tmp_path)
    assert main(["sweep", str(tmp_path / "none.ipynb"), "--grid", "seed=0", "--out", str(tmp_path / "s")]) != 0


@pytest.mark.slow
def test_a_regular_install_runs_every_shipped_notebook(tmp_path):
    """``pip install .`` (not editable) into a fresh venv, then ``gliofed notebooks run -p preset tiny``: what a user
    outside a checkout does. The torch wheel comes from pip's usual sources (a local wheel house where configured)."""
    venv = tmp_path / "venv"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    torch_version = __import__("torch").__version__.split("+")[0]
    subprocess.run([*pip, f"torch=={torch_version}"], check=True)
    subprocess.run([*pip, str(ROOT)], check=True, cwd=tmp_path)  # a copy is built: no link to the checkout
    installed = time.perf_counter() - started
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    work = tmp_path / "work"  # outside the checkout: only the installed package can supply the notebooks
    work.mkdir()
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import gliofed; print(gliofed.__file__)"],
                           capture_output=True, text=True, check=True, cwd=work, env=env).stdout
    assert str(venv) in where
    subprocess.run([str(venv / "bin" / "gliofed"), "synth", "--preset", "tiny", "--out", "data"], check=True,
                   cwd=work, env=env)
    done = subprocess.run([str(venv / "bin" / "gliofed"), "notebooks", "run", "--out", "executed", "-p", "preset",
                           "tiny", "-p", "data_dir", "data", "-p", "rounds", "1", "-p", "ablation_epochs", "1"],
                          capture_output=True, text=True, cwd=work, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    executed = sorted(p.name for p in (work / "executed").glob("*.ipynb"))
    assert executed == ["01_data_curation.ipynb", "02_federated_training.ipynb", "03_evaluation.ipynb",
                        "04_interpretability_viewer.ipynb"]
    # the Flower notebook needs the flower extra, which a plain install lacks: skipped, saying what to install
    assert "skipping 05_flower_federation.ipynb: it needs flwr" in done.stdout
    print(f"install {installed:.0f} s, total {time.perf_counter() - started:.0f} s")


def test_the_benchmark_results_ship_inside_the_package():
    from gliofed.experiments.benchmark import RESULTS_DIR

    assert RESULTS_DIR.is_relative_to(PACKAGE) and sorted(p.name for p in RESULTS_DIR.glob("strategies_*.csv")) == [
        "strategies_differences.csv", "strategies_per_seed.csv", "strategies_summary.csv"]
    assert (RESULTS_DIR / "comparison_per_seed.csv").is_file()  # notebook 02's preregistered comparison
    assert "benchmark_results/*.csv" in _pyproject()["tool"]["setuptools"]["package-data"]["gliofed"]
