"""Wall clock of ``gliofed`` argument errors and ``--help`` (issue 14: under 2 s, before torch and MONAI load).

Usage: ``python benchmarks/bench_cli_arguments.py [REPO ...]`` — each REPO's ``gliofed`` (via PYTHONPATH) is timed on
the same commands, ``--repeats`` times each; the median is printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = [
    ["train", "--help"],
    ["train", "{tmp}/missing.csv"],
    ["train", "{tmp}/empty.csv"],
    ["train", "{tmp}/m.csv", "--rounds", "0"],
    ["train", "{tmp}/m.csv", "--device", "gpu"],
    ["preprocess", "{tmp}/m.csv", "--cache", "{tmp}/c", "--size", "0"],
    ["evaluate", "{tmp}/missing.ckpt", "{tmp}/m.csv"],
]


def time_command(repo: Path, args: list[str], repeats: int) -> tuple[float, int]:
    env = {**os.environ, "PYTHONPATH": str(repo), "TQDM_DISABLE": "1"}  # cwd too: `-m` puts it first on sys.path
    times, code = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        code = subprocess.run([sys.executable, "-m", "gliofed.cli", *args], env=env, cwd=repo,
                              capture_output=True).returncode
        times.append(time.perf_counter() - started)
    return statistics.median(times), code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("repos", nargs="*", default=[str(Path(__file__).resolve().parents[1])])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "empty.csv").write_text("subject_id,site\n")
        Path(tmp, "m.csv").write_text("subject_id,site\na1,a\n")
        print("| command | " + " | ".join(args.repos) + " |")
        print("|---|" + "---|" * len(args.repos))
        for command in COMMANDS:
            filled = [part.format(tmp=tmp) for part in command]
            cells = [time_command(Path(repo), filled, args.repeats) for repo in args.repos]
            shown = " ".join(command).replace("{tmp}/", "")
            print(f"| `gliofed {shown}` | " + " | ".join(f"{t:.2f} s (exit {c})" for t, c in cells) + " |")


if __name__ == "__main__":
    main()
