"""Batch execution of the ordered notebooks with papermill (executed copies + offline HTML)."""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["NOTEBOOK_DIR", "ordered_notebooks", "run_notebook", "run_notebooks"]

#: the notebooks shipped with the repository
NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def ordered_notebooks(folder: str | Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks (``01_...ipynb``, ``02_...``) of ``folder``, in order."""
    return sorted(p for p in Path(folder).glob("[0-9][0-9]_*.ipynb"))


def run_notebook(notebook: str | Path, out_dir: str | Path, parameters: dict | None = None,
                 html: bool = True, kernel_name: str | None = None) -> Path:
    """Execute one notebook with papermill into ``out_dir`` (and an HTML copy); return the executed path.

    The kernel runs in the caller's working directory, so relative paths in ``parameters`` (e.g.
    ``data_dir``) mean what they mean on the command line. Raises papermill's ``PapermillExecutionError``
    when a cell fails (the executed copy is still written).
    """
    import papermill as pm

    notebook, out_dir = Path(notebook), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / notebook.name
    try:
        pm.execute_notebook(str(notebook), str(executed), parameters=parameters or {}, kernel_name=kernel_name,
                            cwd=os.getcwd(), progress_bar=False)
    finally:
        if html and executed.exists():
            _export_html(executed)
    return executed


def _export_html(executed: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    target = executed.with_suffix(".html")
    target.write_text(body, encoding="utf-8")
    return target


def run_notebooks(out_dir: str | Path, parameters: dict | None = None, folder: str | Path = NOTEBOOK_DIR,
                  html: bool = True) -> list[Path]:
    """Execute every ordered notebook in turn with the same parameters; stops at the first failure.

    Parameters a notebook does not declare are dropped for it (papermill would only warn).
    """
    import papermill as pm

    done = []
    for notebook in ordered_notebooks(folder):
        declared = set(pm.inspect_notebook(str(notebook)))
        params = {k: v for k, v in (parameters or {}).items() if k in declared}
        start = time.perf_counter()
        print(f"running {notebook.name} with {params} ...", flush=True)
        done.append(run_notebook(notebook, out_dir, params, html=html))
        print(f"  {notebook.name} finished in {time.perf_counter() - start:.0f} s -> {done[-1]}", flush=True)
    return done
