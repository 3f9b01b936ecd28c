"""Batch execution of the ordered notebooks with papermill (executed copies + offline HTML), parameter sweeps,
and the machine-readable results file every notebook writes."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

from gliofed.errors import ConfigError
from gliofed.fileio import atomic_write_text, to_json, write_csv

__all__ = ["NOTEBOOK_DIR", "RESULTS_SUFFIX", "ordered_notebooks", "run_notebook", "run_notebooks", "save_results",
           "load_results", "parse_value", "parse_grid", "sweep", "fill_placeholders", "missing_requirements"]

#: ``<notebook stem>.results.json``: what :func:`save_results` writes and :func:`sweep` collects
RESULTS_SUFFIX = ".results.json"

#: the notebooks shipped inside the package (package data, so a regular ``pip install`` has them; the checkout's
#: top-level ``notebooks/`` links here)
NOTEBOOK_DIR = Path(__file__).resolve().parent / "ipynb"


def ordered_notebooks(folder: str | Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks (``01_...ipynb``, ``02_...``) of ``folder``, in order."""
    return sorted(p for p in Path(folder).glob("[0-9][0-9]_*.ipynb"))


def run_notebook(notebook: str | Path, out_dir: str | Path, parameters: dict | None = None,
                 html: bool = True, kernel_name: str | None = None, progress: bool = False) -> Path:
    """Execute one notebook with papermill into ``out_dir`` (and an HTML copy); return the executed path.

    The kernel runs in the caller's working directory, so relative paths in ``parameters`` (e.g.
    ``data_dir``) mean what they mean on the command line. Raises papermill's ``PapermillExecutionError``
    when a cell fails (the executed copy is still written).

    Args:
        notebook, out_dir, parameters: what to run, where the executed copy goes, the parameters injected.
        html: also export the executed notebook as offline HTML (default True).
        kernel_name: the Jupyter kernel (default: the notebook's).
        progress: show papermill's progress bar over the cells (default False).
    """
    import papermill as pm

    notebook, out_dir = Path(notebook), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / notebook.name
    try:
        with _batch_environment():
            pm.execute_notebook(str(notebook), str(executed), parameters=parameters or {}, kernel_name=kernel_name,
                                cwd=os.getcwd(), progress_bar=progress)
    finally:
        if html and executed.exists():
            _export_html(executed)
    return executed


@contextlib.contextmanager
def _batch_environment() -> Iterator[None]:
    """The kernel inherits this process's environment: tell gliofed's widgets nobody is watching."""
    previous = os.environ.get("GLIOFED_STATIC_VIEWER")
    os.environ["GLIOFED_STATIC_VIEWER"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("GLIOFED_STATIC_VIEWER", None)
        else:
            os.environ["GLIOFED_STATIC_VIEWER"] = previous


def _export_html(executed: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    target = executed.with_suffix(".html")
    atomic_write_text(target, body)
    return target


def missing_requirements(notebook: str | Path) -> list[str]:
    """The modules a notebook declares it needs (its metadata ``gliofed.requires``) that are not installed: notebook
    05 needs Flower, which only the ``flower`` extra installs."""
    import importlib.util

    import nbformat

    needed = nbformat.read(str(notebook), as_version=4).metadata.get("gliofed", {}).get("requires", [])
    return [name for name in needed if importlib.util.find_spec(name) is None]


def run_notebooks(out_dir: str | Path, parameters: dict | None = None, folder: str | Path = NOTEBOOK_DIR,
                  html: bool = True, strict: bool = False, progress: bool = False) -> list[Path]:
    """Execute every ordered notebook in turn with the same parameters; stops at the first failure.

    Each notebook gets the parameters it declares. A notebook whose required modules are missing
    (:func:`missing_requirements`) is skipped with a line saying what to install.

    Args:
        out_dir: folder for the executed notebooks (and HTML).
        parameters: name -> value.
        folder: where the notebooks are (default: the shipped ones).
        html: also export HTML (default True).
        strict: refuse, before anything runs, a parameter that no notebook declares (a misspelt key; the CLI's
            behaviour). Default False: such keys are dropped.
        progress: papermill's progress bar over each notebook's cells (default False).

    Returns:
        the executed notebooks' paths.
    """
    import papermill as pm

    notebooks = ordered_notebooks(folder)
    if not notebooks:
        raise ConfigError(f"{folder}: no notebooks (01_*.ipynb ...) found; reinstall gliofed, whose package ships "
                          "them.")
    declared = {notebook: set(pm.inspect_notebook(str(notebook))) for notebook in notebooks}
    unknown = sorted(set(parameters or {}) - set().union(*declared.values()))
    if strict and unknown:
        known = ", ".join(sorted(set().union(*declared.values())))
        raise ConfigError(f"no notebook declares the parameter(s) {', '.join(unknown)}; they declare {known}.")
    done = []
    for notebook in notebooks:
        missing = missing_requirements(notebook)
        if missing:
            print(f"skipping {notebook.name}: it needs {', '.join(missing)}, which is not installed "
                  "(pip install 'gliofed[flower]')", flush=True)
            continue
        params = {k: v for k, v in (parameters or {}).items() if k in declared[notebook]}
        start = time.perf_counter()
        print(f"running {notebook.name} with {params} ...", flush=True)
        done.append(run_notebook(notebook, out_dir, params, html=html, progress=progress))
        print(f"  {notebook.name} finished in {time.perf_counter() - start:.0f} s -> {done[-1]}", flush=True)
    return done


def save_results(notebook: str, records: Sequence[dict] | pd.DataFrame, parameters: dict,
                 results_dir: str | Path) -> Path:
    """Write a notebook's machine-readable results to ``results_dir/<notebook>.results.json``.

    Args:
        notebook: the notebook's stem, e.g. ``"03_evaluation"``.
        records: flat rows (one per strategy, metric, ...), each a dict of scalars; a DataFrame is converted.
        parameters: the notebook's parameters (repeated in the file so it stands on its own).
        results_dir: folder (created).
    """
    if isinstance(records, pd.DataFrame):
        records = records.to_dict(orient="records")
    path = Path(results_dir) / f"{notebook}{RESULTS_SUFFIX}"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, to_json({"notebook": notebook, "parameters": parameters, "records": list(records)},
                                    indent=2))
    return path


def load_results(path: str | Path) -> pd.DataFrame:
    """The records of a results file as a DataFrame."""
    return pd.DataFrame(json.loads(Path(path).read_text())["records"])


def parse_value(text: str):
    """A parameter value from the command line: int, float, bool, None or string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_grid(items: Sequence[str]) -> dict[str, list]:
    """``["seed=0,1", "preset=tiny"]`` -> ``{"seed": [0, 1], "preset": ["tiny"]}`` (values parsed like ``-p``)."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ConfigError(f"grid entry {item!r} must look like KEY=a,b,c.")
        grid[key.strip()] = [parse_value(v.strip()) for v in values.split(",")]
    return grid


def fill_placeholders(fixed: dict, combo: dict) -> dict:
    """``fixed`` with ``{key}`` in its string values replaced by ``combo[key]``: ``-p data_dir data/tiny-{seed}``
    gives each seed of a sweep its own cohort. Only names in ``combo`` are replaced; other braces stay as they are.
    """
    def fill(text: str) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: str(combo[m.group(1)]) if m.group(1) in combo else m.group(0), text)

    return {k: fill(v) if isinstance(v, str) else v for k, v in fixed.items()}


def _run_name(index: int, params: dict) -> str:
    tag = "_".join(f"{k}-{v}" for k, v in params.items())
    return f"run{index:03d}_" + re.sub(r"[^A-Za-z0-9._-]+", "-", tag)[:80]


def sweep(notebook: str | Path, grid: dict[str, list], out_dir: str | Path, fixed: dict | None = None,
          html: bool = False) -> pd.DataFrame:
    """Run ``notebook`` once per combination of ``grid`` and collect every run's results into ``out_dir/sweep.csv``.

    Each run executes into ``out_dir/runNNN_<params>/`` with ``results_dir`` pointing there. A failing run is
    reported (status ``failed``, its parameters and the error) and the others go on.

    Returns:
        one row per result record (or one row per failed run): ``run``, ``status``, ``error``, the grid
        parameters, then the record's columns.
    """
    import papermill as pm

    notebook, out_dir = Path(notebook), Path(out_dir)
    if not notebook.is_file():
        raise ConfigError(f"{notebook}: notebook not found.")
    declared = set(pm.inspect_notebook(str(notebook)))
    unknown = sorted((set(grid) | set(fixed or {})) - declared)
    if unknown:
        raise ConfigError(f"{notebook.name} has no parameter(s) {', '.join(unknown)}; it declares "
                          f"{', '.join(sorted(declared))}.")
    if "results_dir" not in declared:
        raise ConfigError(f"{notebook.name} declares no results_dir parameter, so a sweep cannot collect its results.")
    rows = []
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    for i, combo in enumerate(combos):
        run_dir = out_dir / _run_name(i, combo)
        params = {**fill_placeholders(fixed or {}, combo), **combo, "results_dir": str(run_dir)}
        print(f"[{i + 1}/{len(combos)}] {notebook.name} {combo}", flush=True)
        start = time.perf_counter()
        base = {"run": run_dir.name, **combo}
        try:
            run_notebook(notebook, run_dir, params, html=html)
            records = load_results(run_dir / f"{notebook.stem}{RESULTS_SUFFIX}").to_dict(orient="records")
        except Exception as error:  # noqa: BLE001 - a failed run is reported, the sweep goes on
            message = f"{getattr(error, 'ename', type(error).__name__)}: {getattr(error, 'evalue', error)}"
            print(f"  failed after {time.perf_counter() - start:.0f} s: {message}", flush=True)
            rows.append({**base, "status": "failed", "error": message})
            continue
        print(f"  done in {time.perf_counter() - start:.0f} s ({len(records)} record(s))", flush=True)
        rows.extend({**base, "status": "ok", "error": "", **record} for record in records or [{}])
    table = pd.DataFrame(rows)
    front = ["run", "status", "error", *grid]
    table = table[front + [c for c in table.columns if c not in front]]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "sweep.csv", table)
    failed = table.loc[table["status"] == "failed", "run"].nunique()
    print(f"{len(combos) - failed}/{len(combos)} run(s) succeeded; results in {out_dir / 'sweep.csv'}", flush=True)
    return table
