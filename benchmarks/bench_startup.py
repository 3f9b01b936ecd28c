"""Start-up cost of gliofed's entry points (issue 14 point 5): wall-clock seconds of fresh interpreters.

Measured, each in a new process with the tree under test first on ``PYTHONPATH``:

- ``import gliofed.engine`` (the issue's target: <= 5 s on 2 cores);
- ``gliofed --help`` and ``gliofed check <missing manifest>`` (a CLI command; the second exits non-zero);
- the first code cell of ``notebooks/02_*.ipynb`` run as a script (a notebook kernel's first import cell,
  without the kernel's own start-up);
- ``import gliofed.federated.site.client_app`` (what a Flower SuperNode loads to start the ClientApp).

Each command runs ``--repeat`` times per tree (interleaved across commands and trees, so that a burst of load
from other users of the machine hits every command and both trees alike); the median, min and max are
reported with the load average.

Usage::

    git archive <commit> | tar -x -C /tmp/before             # a checkout to compare with ("before")
    python benchmarks/bench_startup.py --before /tmp/before   # both, interleaved; "after" = this checkout
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _notebook_cell(tree: Path) -> str:
    """Source of the first code cell of notebook 02 (its imports and setup)."""
    notebook = sorted((tree / "notebooks").glob("02_*.ipynb"))[0]
    cells = json.loads(notebook.read_text())["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "code")["source"])


def commands(tree: Path) -> dict[str, list[str]]:
    """Label -> argv of every measured command."""
    python = sys.executable
    cli = [python, "-c", "import sys; from gliofed.cli import main; sys.exit(main(sys.argv[1:]))"]
    return {
        "import gliofed.engine": [python, "-c", "import gliofed.engine"],
        "gliofed --help": [*cli, "--help"],
        "gliofed check <missing manifest>": [*cli, "check", "/nonexistent/manifest.csv"],
        "notebook 02 first cell": [python, "-c", _notebook_cell(tree)],
        "Flower ClientApp import": [python, "-c", "import gliofed.federated.site.client_app"],
    }


def run(argv: list[str], tree: Path, workdir: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "MPLBACKEND": "Agg", "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    subprocess.run(argv, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout to measure (default: this one)")
    parser.add_argument("--label", default="after", help="name of the measured tree in the output")
    parser.add_argument("--before", type=Path, default=None,
                        help="a second checkout measured in the same loop, interleaved (labelled 'before')")
    parser.add_argument("--repeat", type=int, default=5, help="runs per command and tree (default 5)")
    parser.add_argument("--only", default=None, help="comma-separated subset of the command labels")
    args = parser.parse_args()
    trees = ([("before", args.before.resolve())] if args.before else []) + [(args.label, args.tree.resolve())]
    todo = {name: commands(tree) for name, tree in trees}
    labels = list(todo[trees[0][0]])
    if args.only:
        labels = [k for k in labels if k in args.only.split(",")]
    times = {(name, label): [] for name, _ in trees for label in labels}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as workdir:
        for name, tree in trees:  # warm the file cache once, not measured
            for label in labels:
                run(todo[name][label], tree, workdir)
        for _ in range(args.repeat):
            for label in labels:
                for name, tree in trees:
                    times[name, label].append(run(todo[name][label], tree, workdir))
            loads.append(os.getloadavg()[0])
    print(f"trees: {', '.join(f'{n} = {t}' for n, t in trees)}; {args.repeat} runs each, interleaved; CPU cores: "
          f"{os.cpu_count()}; 1-min load average during the runs: {min(loads):.1f}-{max(loads):.1f}")
    print("| command | " + " | ".join(f"{n}: median s (min-max)" for n, _ in trees) + " |")
    print("|---|" + "---|" * len(trees))
    for label in labels:
        cells = [f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" for v in (times[n, label] for n, _ in trees)]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
