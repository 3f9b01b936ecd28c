"""`gliofed sweep`: a parameter grid over one notebook, results collected into one CSV, failures reported."""

import nbformat
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from gliofed.cli import main
from gliofed.errors import ConfigError
from gliofed.notebooks import parse_grid, sweep


@pytest.fixture
def grid_notebook(tmp_path):
    """A tiny notebook: fails for a == 3, otherwise writes two result records."""
    nb = new_notebook()
    params = new_code_cell('a = 1\nb = "x"\nresults_dir = None')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, new_code_cell(
        "from gliofed.notebooks import save_results\n"
        "if a == 3:\n    raise ValueError('a must not be 3')\n"
        "save_results('grid', [{'k': 0, 'score': a * 10}, {'k': 1, 'score': a * 10 + 1}], {'a': a, 'b': b}, "
        "results_dir)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "grid.ipynb"
    nbformat.write(nb, path)
    return path


def test_sweep_collects_every_run_and_reports_failures(grid_notebook, tmp_path):
    table = sweep(grid_notebook, parse_grid(["a=1,2,3", "b=x,y"]), tmp_path / "sweep")
    ok = table[table["status"] == "ok"]
    assert ok["run"].nunique() == 4 and len(ok) == 8  # 4 runs x 2 records
    assert sorted(ok.loc[ok["k"] == 0, "score"]) == [10, 10, 20, 20]
    failed = table[table["status"] == "failed"]
    assert sorted(failed["b"]) == ["x", "y"] and (failed["a"] == 3).all()
    assert failed["error"].str.contains("a must not be 3").all()
    on_disk = pd.read_csv(tmp_path / "sweep" / "sweep.csv")
    assert len(on_disk) == len(table) and list(on_disk.columns[:5]) == ["run", "status", "error", "a", "b"]


def test_sweep_cli_exits_non_zero_when_a_run_failed(grid_notebook, tmp_path, capsys):
    assert main(["sweep", str(grid_notebook), "--grid", "a=2", "--out", str(tmp_path / "s1")]) == 0
    assert main(["sweep", str(grid_notebook), "--grid", "a=3", "-p", "b", "z", "--out", str(tmp_path / "s2")]) == 1
    assert "0/1 run(s) succeeded" in capsys.readouterr().out


def test_unknown_parameter_or_bad_grid_is_a_clear_error(grid_notebook, tmp_path, capsys):
    with pytest.raises(ConfigError, match="no parameter"):
        sweep(grid_notebook, {"epochs": [1]}, tmp_path)
    with pytest.raises(ConfigError, match="KEY=a,b,c"):
        parse_grid(["seed"])
    assert main(["sweep", str(grid_notebook), "--grid", "nope=1", "--out", str(tmp_path)]) == 2
    assert "no parameter(s) nope" in capsys.readouterr().err


def test_grid_values_are_typed():
    assert parse_grid(["seed=0,1", "preset=tiny", "lr=0.1,none"]) == {"seed": [0, 1], "preset": ["tiny"],
                                                                       "lr": [0.1, None]}
