"""The GPU check's driver (``benchmarks/gpu_check.sh`` calls it): which wheels a bare GPU machine needs, the plan of
steps with their time budgets, running them, and one summary table.

Subcommands:
  requirements          print the pinned distributions the check needs that a machine with torch lacks: the
                        closure of gliofed's runtime imports, minus torch and everything torch itself requires, with
                        this environment's versions, for Python 3.12 on Linux x86_64 (``gpu_check.sh --fetch-wheels``
                        downloads their wheels)
  run [--dry-run]       the steps: bench_train (all modes, full size), bench_data (full size, every mode, with the
                        engine's training rate) and bench_strategies --paper-subset (five strategies, 2 rounds);
                        each under its own time budget (``timeout``), its output in ``--out``; then one table.
                        ``--dry-run`` checks the machine and every step's arguments with that step's own parser, prints
                        the plan and runs nothing heavy.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(ROOT), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

#: what the check imports (gliofed's runtime for the three steps: site training, synthesis, scoring, figures)
NEEDED = ("monai", "nibabel", "numpy", "pandas", "scipy", "scikit-learn", "tqdm", "safetensors", "flwr", "captum",
          "nilearn", "plotly")
#: the markers' environment of the GPU machine (Python 3.12, Linux x86_64, CPython)
TARGET_ENVIRONMENT = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
                      "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                      "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
#: total budget of the three steps (the issue: under 8 minutes)
TOTAL_BUDGET_S = 470


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _closure(roots: tuple[str, ...]) -> dict[str, str]:
    """{distribution: installed version} of ``roots`` and everything they require on the target machine (extras
    only where a requirement names them)."""
    from packaging.requirements import Requirement

    found: dict[str, str] = {}
    todo = [(root, ()) for root in roots]
    while todo:
        name, extras = todo.pop()
        key = name.lower().replace("_", "-")
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not needed on this platform / Python, or absent here: pip resolves nothing for it
        first = key not in found
        found[key] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            wanted = [{**TARGET_ENVIRONMENT, "extra": extra} for extra in ("", *extras)]
            if requirement.marker is not None and not any(requirement.marker.evaluate(env) for env in wanted):
                continue
            child = requirement.name.lower().replace("_", "-")
            if first or requirement.extras:
                todo.append((child, tuple(requirement.extras)))
    return found


def wheel_requirements() -> list[str]:
    """``name==version`` of every distribution the check needs beyond torch and torch's own requirements."""
    needed = _closure(NEEDED)
    torch_side = _closure(("torch",))
    return [f"{name}=={version}" for name, version in sorted(needed.items()) if name not in torch_side]


# --------------------------------------------------------------------------------------------------- steps
@dataclass
class Step:
    """One benchmark of the check: its script, arguments, time budget and output."""

    name: str
    script: str
    args: list[str]
    budget_s: int
    outputs: dict = field(default_factory=dict)

    def command(self, python: str) -> list[str]:
        return [python, str(HERE / self.script), *self.args]


def plan(out: Path, device: str, subjects_per_site: int) -> list[Step]:
    """The three steps, sized for an H100/H200 in under 8 minutes together."""
    return [
        Step("bench_train", "bench_train.py",
             ["--device", device, "--steps", "10", "--warmup", "3", "--repeats", "2",
              "--json", str(out / "bench_train.json")], budget_s=170, outputs={"json": out / "bench_train.json"}),
        Step("bench_data", "bench_data.py",
             ["--device", device, "--cases", "24", "--epochs", "3", "--workers", "0,4,8", "--train-steps", "5",
              "--json", str(out / "bench_data.json")], budget_s=80, outputs={"json": out / "bench_data.json"}),
        Step("paper_subset", "bench_strategies.py",
             ["--paper-subset", "--device", device, "--cases-per-site", str(subjects_per_site),
              "--out", str(out / "paper_subset")], budget_s=TOTAL_BUDGET_S - 250,
             outputs={"summary": out / "paper_subset" / "summary.csv", "costs": out / "paper_subset" / "per_seed.csv"}),
    ]


def check_arguments(steps: list[Step]) -> list[str]:
    """Every step's arguments parsed by that step's own parser (nothing run); the problems found."""
    problems = []
    for step in steps:
        module = importlib.import_module(Path(step.script).stem)
        try:
            module.build_parser().parse_args(step.args)
        except SystemExit:
            problems.append(f"{step.name}: {step.script} refuses {' '.join(step.args)}")
    return problems


def machine_report() -> dict:
    """Python, torch, CUDA and the packages the check needs (present or missing)."""
    report = {"python": platform.python_version(), "torch": None, "cuda": None, "missing": []}
    try:
        import torch

        report["torch"] = torch.__version__
        report["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    for name in ("monai", "nibabel", "captum", "flwr", "nilearn", "sklearn", "pandas", "scipy", "safetensors"):
        if importlib.util.find_spec(name) is None:
            report["missing"].append(name)
    return report


def _summary_rows(steps: list[Step], status: dict[str, dict]) -> list[dict]:
    import pandas as pd

    rows = []
    for step in steps:
        state = status.get(step.name, {})
        base = {"step": step.name, "status": state.get("status", "not run"), "wall_s": state.get("wall_s")}
        figures = {}
        try:
            if step.name == "bench_train" and step.outputs["json"].is_file():
                result = json.loads(step.outputs["json"].read_text())
                for row in result["rows"]:
                    ratio = f" ({row['x best bare']:.2f}x best bare)" if "x best bare" in row else ""
                    figures[row["mode"]] = f"{row['vol/s']:.1f} vol/s{ratio}"
            elif step.name == "bench_data" and step.outputs["json"].is_file():
                result = json.loads(step.outputs["json"].read_text())
                if result.get("engine_vol_s"):
                    figures["engine training"] = f"{result['engine_vol_s']:.1f} vol/s"
                for row in result["rows"]:
                    figures[row["mode"]] = f"{row['vol/s']:.1f} vol/s"
            elif step.name == "paper_subset" and step.outputs["costs"].is_file():
                frame = pd.read_csv(step.outputs["costs"])
                frame = frame[frame["labels"] == "truth"]
                for record in frame.to_dict("records"):
                    figures[record["strategy"]] = (f"{record['wall_s']:.0f} s, AUC {record['auc_mean']:.2f}, "
                                                   f"Dice WT {record['dice_WT']:.2f}")
        except (OSError, KeyError, ValueError) as error:
            figures["summary"] = f"unreadable output ({type(error).__name__}: {error})"
        if not figures:
            rows.append({**base, "figure": "", "value": ""})
        for key, value in figures.items():
            rows.append({**base, "figure": key, "value": value})
    return rows


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    steps = plan(out, args.device, args.subjects_per_site)
    machine = machine_report()
    print(f"machine: Python {machine['python']}, torch {machine['torch']}, CUDA device {machine['cuda']}; "
          f"missing packages: {', '.join(machine['missing']) or 'none'}")
    problems = check_arguments(steps)
    total = sum(step.budget_s for step in steps)
    print(f"plan ({total} s of budgets, {len(steps)} steps; outputs in {out}):")
    for step in steps:
        print(f"  {step.name:<13} budget {step.budget_s:>3} s: {' '.join(step.command('python'))}")
    if problems:
        print("refused arguments:\n  " + "\n  ".join(problems))
        return 2
    if args.dry_run:
        print("dry run: the machine and every step's arguments checked; nothing run.")
        return 0
    if machine["missing"]:
        print(f"cannot run: {', '.join(machine['missing'])} missing (install from the wheel folder first: "
              "benchmarks/gpu_check.sh does).")
        return 2
    if args.device == "cuda" and not machine["cuda"]:
        print("cannot run: no CUDA device (pass --device cpu to try the steps on the CPU; they are sized for a GPU).")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    status: dict[str, dict] = {}
    timeout = shutil.which("timeout")
    for step in steps:
        command = step.command(sys.executable)
        if timeout:  # kills the whole step (and its workers) when its budget is spent
            command = [timeout, "--kill-after=10", str(step.budget_s), *command]
        print(f"\n=== {step.name} (budget {step.budget_s} s) ===", flush=True)
        started = time.perf_counter()
        with open(out / f"{step.name}.log", "w") as log:
            completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                       timeout=None if timeout else step.budget_s + 30)
        wall = time.perf_counter() - started
        state = {0: "ok", 124: "timed out", 137: "timed out"}.get(completed.returncode,
                                                                  f"failed (exit {completed.returncode})")
        status[step.name] = {"status": state, "wall_s": round(wall, 1)}
        print(f"{step.name}: {state} in {wall:.0f} s (log: {out / (step.name + '.log')})", flush=True)
        print("".join((out / f"{step.name}.log").read_text().splitlines(keepends=True)[-25:]))
    import pandas as pd

    table = pd.DataFrame(_summary_rows(steps, status))
    text = table.to_string(index=False)
    print("\n=== summary ===")
    print(f"device: {machine['cuda'] or 'CPU'}; torch {machine['torch']}; Python {machine['python']}; "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}; total {sum(s['wall_s'] for s in status.values()):.0f} s")
    print(text)
    (out / "summary.txt").write_text(text + "\n")
    return 0 if all(s["status"] == "ok" for s in status.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("requirements", help="print the pinned wheels the check needs beyond torch")
    runner = commands.add_parser("run", help="run (or with --dry-run, plan) the check")
    runner.add_argument("--out", default=str(ROOT / "runs" / "gpu_check"))
    runner.add_argument("--device", default="cuda")
    runner.add_argument("--subjects-per-site", type=int, default=12,
                        help="the paper subset's size (5 sites; default 12: 60 subjects, ~18 test cases scored "
                             "with HD95 by every strategy's model, local-only's five)")
    runner.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "requirements":
        print("\n".join(wheel_requirements()))
        return 0
    return run(args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
