"""The preregistered strategy comparison (``benchmarks/PREREGISTRATION.md``): arms x cohorts x seeds, each arm at a
matched site compute, scored on one large fixed test cohort per cohort kind, with seed-level statistics.

A **task** is one (cohort kind, seed, arm). Each writes its own folder ``OUT/<cohort>/run_<seed>_<arm>/``:
``cost.json`` (costs, settings key, code fingerprint and commit, device, date) and ``test_predictions.csv`` (every
case of the fixed test cohort; local-only: one block per site model). A task whose folder holds both, made with the
same settings key, is done and is never run again; so the same command **resumes** after an interruption. ``--jobs``
runs tasks in parallel processes (one torch thread each); ``--shard K/N`` runs only every N-th task from the K-th
(split a run across sessions); ``--merge-only`` runs nothing and writes the tables from whatever tasks are done,
listing the missing ones. A merge refuses runs made by different code unless ``--allow-mixed-code``.

Outputs of the merge (``OUT``): ``per_seed.csv``, ``summary.csv``, ``differences.csv``, ``costs.csv`` (column
conventions: :mod:`gliofed.experiments.study`), ``results.json`` (code, seeds, device, dates, missing tasks),
``table.md`` and ``pareto.html`` (accuracy against site compute, bytes up and bytes up + down).

Usage:
  python benchmarks/bench_comparison.py --design calibrate --out runs/calibrate     # cost of one round per arm
  python benchmarks/bench_comparison.py --design dev --out runs/dev --jobs 2        # tuning on development seeds
  nice -n 10 python benchmarks/bench_comparison.py --design prereg --out runs/prereg --jobs 2   # the fresh seeds
  python benchmarks/bench_comparison.py --design prereg --out runs/prereg --merge-only         # tables so far
  python benchmarks/bench_comparison.py --design smoke --out /tmp/smoke                         # seconds (tests)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import fcntl
import json
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from gliofed.errors import ConfigError  # noqa: E402
from gliofed.experiments.study import (  # noqa: E402
    LABELS,
    METRICS,
    Arm,
    ComputeMeter,
    control_predictions,
    prepare_cohort,
    run_arm,
    score_models,
    seed_differences,
    seed_summary,
    with_labels,
)
from gliofed.presets import train_preset  # noqa: E402
from gliofed.provenance import sources_fingerprint  # noqa: E402

TEST_PREDICTIONS = "test_predictions.csv"
COST = "cost.json"

#: cohort kinds: the synthetic generator's cue family (:func:`gliofed.data.synth.make_cohort`)
COHORTS = {"workshop": "intensity", "hard": "morphology"}


@dataclass(frozen=True)
class Design:
    """One benchmark design: cohorts, seeds, arms, the fixed test cohorts and the comparisons.

    Attributes:
        seeds: training seeds (each a new training cohort and a new training run).
        cohorts: cohort kinds (:data:`COHORTS`).
        arms: the arms run on every (cohort, seed).
        pairs: (a, b) arm pairs compared at seed level.
        test_seeds: per cohort kind, the seed of its fixed test cohort (every case labelled and masked).
        test_per_site: subjects per site in a test cohort.
        cases_per_site: subjects per site in a training cohort (its own 30 % test split is scored too, secondarily).
        size: cache in-plane size. preset: cohort and training recipe. distill: the benchmark's distillation settings.
        small_model: a small network (the smoke test only).
    """

    seeds: tuple[int, ...]
    cohorts: tuple[str, ...]
    arms: tuple[Arm, ...]
    pairs: tuple[tuple[str, str], ...] = ()
    test_seeds: dict = field(default_factory=lambda: {"workshop": 9000, "hard": 9001})
    test_per_site: int = 40
    cases_per_site: int = 24
    size: int = 32
    preset: str = "workshop"
    distill: dict = field(default_factory=lambda: {"steps": 5, "server_epochs": 10, "real_batch": 12})
    small_model: bool = False

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)


#: the distillation rounds of the dev and prereg designs; every other arm's rounds follow from the compute budget
DISTILL_ROUNDS = 3
#: rounds per local epochs at the site-CPU budget: floor(3 x 12.0 / (E x 6.67)), from the calibration of 2026-12-05
#: 06:22 UTC on fa0e5a5 (seed 10, one round per arm, 1 torch thread, idle; benchmarks/RESULTS.md). The calibration of
#: 2026-12-04 (distillation 40.3 site CPU s a round, FedAvg 8.3: 14 / 7 / 4 rounds) predates OneDNNConv3d, which made
#: distillation's single-case passes about 6x faster and left FedAvg's batches as they were.
ROUNDS_CPU = {1: 5, 2: 2, 3: 1}
#: rounds per local epochs at the voxel-pass budget (floor(3 x 9.22 / (E x 4.81)); voxel passes do not depend on the
#: kernel)
ROUNDS_VP = {1: 5, 2: 2, 3: 1}
#: centralized epochs at the site-CPU budget (floor(3 x 12.0 / 7.21))
CENTRALIZED_EPOCHS = 4

CONTROL_ARMS = (Arm("probe_summary", "probe_summary"), Arm("probe_means", "probe_means"),
                Arm("site_only", "site_only"))


def _calibration_arms() -> tuple[Arm, ...]:
    return (Arm("centralized", "centralized", 1), Arm("local", "local", 1), Arm("fedavg", "fedavg", 1),
            Arm("distill", "distill", 1), Arm("distill_0step", "distill", 1, distill={"steps": 0}),
            Arm("distill_noise", "distill", 1, distill={"init": "noise"}))


def _weight_sharing(strategy: str, label: str, epochs: int, **options) -> Arm:
    """A weight-sharing arm at the site-CPU budget for ``epochs`` local epochs."""
    return Arm(f"{strategy}-{label}", strategy, ROUNDS_CPU[epochs], local_epochs=epochs, options=options)


def _epochs_grid(strategy: str) -> tuple[Arm, ...]:
    """FedAvg's, FedProx's and FedBN's grid: 1, 2 or 3 local epochs, and 1 epoch with a cosine learning-rate schedule
    and each site's optimizer state kept across rounds."""
    return (*(_weight_sharing(strategy, f"e{e}", e) for e in (1, 2, 3)),
            _weight_sharing(strategy, "e1-cosine-kept", 1, lr_schedule="cosine", keep_optimizer=True))


#: the tuning grid (PREREGISTRATION.md section 6): exactly 4 configurations per tuned strategy
TUNING_GRID: dict[str, tuple[Arm, ...]] = {
    "fedavg": _epochs_grid("fedavg"),
    "fedprox": _epochs_grid("fedprox"),
    "fedavgm": (_weight_sharing("fedavgm", "e1-lr1-m0.9", 1, server_lr=1.0, momentum=0.9),
                _weight_sharing("fedavgm", "e1-lr1-m0.5", 1, server_lr=1.0, momentum=0.5),
                _weight_sharing("fedavgm", "e1-lr0.5-m0.9", 1, server_lr=0.5, momentum=0.9),
                _weight_sharing("fedavgm", "e2-lr1-m0.5", 2, server_lr=1.0, momentum=0.5)),
    "fedadam": (_weight_sharing("fedadam", "e1-lr3e-4", 1, server_lr=3e-4),
                _weight_sharing("fedadam", "e1-lr1e-3", 1, server_lr=1e-3),
                _weight_sharing("fedadam", "e1-lr3e-3", 1, server_lr=3e-3),
                _weight_sharing("fedadam", "e2-lr1e-3", 2, server_lr=1e-3)),
    "fedbn": _epochs_grid("fedbn"),
    "distill": (Arm("distill-shipped", "distill", DISTILL_ROUNDS),
                Arm("distill-server-epochs-20", "distill", DISTILL_ROUNDS, distill={"server_epochs": 20}),
                Arm("distill-kl-0.1", "distill", DISTILL_ROUNDS, distill={"kl_weight": 0.1}),
                Arm("distill-server-lr-1e-4", "distill", DISTILL_ROUNDS, distill={"server_lr": 1e-4})),
}

#: the configuration chosen per tuned strategy on the development seeds 10-11 (the dev design's merge, main e2f0703,
#: ``benchmarks/results/comparison_dev_tuning.csv``; PREREGISTRATION.md, issue 25, section 6)
CHOSEN: dict[str, str] | None = {"fedavg": "fedavg-e1", "fedprox": "fedprox-e1", "fedavgm": "fedavgm-e1-lr1-m0.5",
                                 "fedadam": "fedadam-e1-lr3e-3", "fedbn": "fedbn-e1",
                                 "distill": "distill-server-epochs-20"}
#: the centralized learnability reference: 3x the matched budget's epochs (not budget-matched; PREREGISTRATION.md)
CENTRALIZED_REFERENCE_EPOCHS = 3 * CENTRALIZED_EPOCHS


def prereg_design(chosen: dict[str, str]) -> Design:
    """The fresh-seed design (PREREGISTRATION.md) with the tuned configurations ``chosen`` (strategy -> arm name of
    :data:`TUNING_GRID`)."""
    grid = {arm.name: arm for arms in TUNING_GRID.values() for arm in arms}
    picked = {strategy: grid[name] for strategy, name in chosen.items()}
    arms = [Arm("centralized", "centralized", CENTRALIZED_EPOCHS),
            Arm("centralized_12", "centralized", CENTRALIZED_REFERENCE_EPOCHS), Arm("local", "local", ROUNDS_CPU[1])]
    for strategy in ("fedavg", "fedprox", "fedavgm", "fedadam", "fedbn"):
        arm = dataclasses.replace(picked[strategy], name=strategy)
        if strategy == "fedavg":
            arm = dataclasses.replace(arm, snapshots=(("vp", ROUNDS_VP[arm.local_epochs]),))
            fp16 = dataclasses.replace(arm, name="fedavg_fp16", snapshots=(),
                                       options={**arm.options, "transport": "float16"})
            arms += [arm, fp16]
        else:
            arms.append(arm)
    distill = dataclasses.replace(picked["distill"], name="distill")
    arms += [distill, dataclasses.replace(distill, name="distill_0step", distill={**distill.distill, "steps": 0}),
             dataclasses.replace(distill, name="distill_noise", distill={**distill.distill, "init": "noise"}),
             *CONTROL_ARMS]
    baselines = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedbn")
    pairs = ([("distill", b) for b in baselines] + [("centralized", "distill"), ("centralized", "fedavg")]
             + [(a, "local") for a in (*baselines, "distill")]
             + [("distill", "distill_0step"), ("distill", "distill_noise")]
             + [(a, c) for c in ("probe_summary", "site_only")
                for a in ("centralized", "centralized_12", "distill", "fedavg")]
             + [("distill", "fedavg@vp"), ("fedavg_fp16", "fedavg")])
    return Design(seeds=tuple(range(200, 210)), cohorts=("workshop", "hard"), arms=tuple(arms), pairs=tuple(pairs),
                  test_seeds={"workshop": 9000, "hard": 9001}, test_per_site=40)


DESIGNS: dict[str, Design] = {
    # the tuning: every configuration of TUNING_GRID on development seeds 10 and 11 (workshop cohort, test cohort 8000)
    "dev": Design(seeds=(10, 11), cohorts=("workshop",), arms=tuple(a for arms in TUNING_GRID.values() for a in arms),
                  test_seeds={"workshop": 8000, "hard": 8001}, test_per_site=40),
    # one round of each arm on one development seed: the compute each costs per round (PREREGISTRATION.md)
    "calibrate": Design(seeds=(10,), cohorts=("workshop",), arms=_calibration_arms(),
                        test_seeds={"workshop": 8000, "hard": 8001}, test_per_site=8),
    # before the preregistration: can a CNN learn each cohort's markers, and what do the controls reach? (seeds 20-21
    # are used for nothing else)
    "cohort_check": Design(seeds=(20, 21), cohorts=("workshop", "hard"), test_seeds={"workshop": 8100, "hard": 8101},
                           arms=(Arm("centralized", "centralized", 12), *CONTROL_ARMS)),
    # the A0 check of the hard cohort (PREREGISTRATION.md, issue 25): one variant at the matched budget (centralized
    # 4 epochs, FedAvg 5 x 1) and at 12 epochs, with the summary probe and the site-only baseline (seed 20, test
    # cohort 8101)
    "cohort_check_quick": Design(seeds=(20,), cohorts=("hard",), test_seeds={"workshop": 8100, "hard": 8101},
                                 arms=(Arm("centralized", "centralized", CENTRALIZED_EPOCHS),
                                       Arm("centralized_12", "centralized", 12),
                                       Arm("fedavg", "fedavg", ROUNDS_CPU[1], local_epochs=1),
                                       CONTROL_ARMS[0], CONTROL_ARMS[2])),
    # the smallest setting: the test's
    "smoke": Design(seeds=(0, 1), cohorts=("workshop",), preset="tiny", cases_per_site=None, size=24,
                    test_per_site=3, small_model=True, test_seeds={"workshop": 7000, "hard": 7001},
                    distill={"steps": 1, "server_epochs": 1, "real_batch": 4},
                    arms=(Arm("fedavg", "fedavg", 2, snapshots=(("r1", 1),)), Arm("fedavg_1round", "fedavg", 1),
                          Arm("distill", "distill", 1), CONTROL_ARMS[0], CONTROL_ARMS[2]),
                    pairs=(("distill", "fedavg"), ("fedavg", "probe_summary"))),
}
if CHOSEN is not None:
    DESIGNS["prereg"] = prereg_design(CHOSEN)


# ---------------------------------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------------------------------


def source_fingerprint() -> str:
    """:func:`gliofed.provenance.sources_fingerprint` of the package and this script: a run made by other code, or
    in another environment, is never reused."""
    return sources_fingerprint([__file__])


def git_commit() -> str:
    """The checkout's commit, with ``+dirty`` when tracked files under gliofed/ or benchmarks/ differ from it
    (``unknown`` outside a git checkout)."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--",
                                "gliofed", "benchmarks"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def device_name(device: str = "cpu") -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.machine()}, {platform.processor() or 'unknown'}), 1 torch thread per run"


def task_key(design: Design, cohort: str, arm: Arm, fingerprint: str) -> str:
    """What makes two runs of one (cohort, seed, arm) the same run: the design's cohort and training settings, the
    arm's settings, the distillation settings as resolved (every field, defaults included) and the code."""
    from gliofed.federated.protocol import DistillSettings

    distill = (dataclasses.asdict(DistillSettings(**{**design.distill, **arm.distill}))
               if arm.strategy == "distill" else None)
    keep = {k: v for k, v in dataclasses.asdict(design).items() if k not in ("seeds", "cohorts", "arms", "pairs")}
    return json.dumps({"design": keep, "cohort": cohort, "arm": arm.as_dict(), "distill": distill,
                       "code": fingerprint}, sort_keys=True, default=str)


# ---------------------------------------------------------------------------------------------------------------
# Cohorts and tasks
# ---------------------------------------------------------------------------------------------------------------


@contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` (two shards preparing the same cohort wait for each other)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cohort_paths(out: Path, cohort: str, seed: int | None) -> tuple[Path, Path]:
    """(cohort folder, cache folder) of a training seed, or of the fixed test cohort (``seed=None``)."""
    base = out / cohort
    return (base / "test_cohort", base / "test_cache") if seed is None else (base / f"cohort_{seed}",
                                                                            base / f"cache_{seed}")


def prepare(design: Design, out: Path, cohort: str, seed: int | None, fingerprint: str) -> None:
    """Make (or keep) the training cohort of ``seed``, or the fixed test cohort (``seed=None``), and its cache."""
    folder, cache = cohort_paths(out, cohort, seed)
    if seed is None:
        settings = dict(preset=design.preset, seed=design.test_seeds[cohort], cases_per_site=design.test_per_site,
                        cues=COHORTS[cohort], all_masks=True)
    else:
        settings = dict(preset=design.preset, seed=seed, cases_per_site=design.cases_per_site, cues=COHORTS[cohort])
    stamp = {**settings, "size": design.size, "code": fingerprint}
    with _locked(out / cohort / f".{folder.name}.lock"):
        prepare_cohort(folder, cache, stamp, design.size, **settings)


def _config(design: Design, seed: int):
    overrides = {"device": "cpu", "seed": seed}
    if design.small_model:
        overrides["model"] = {"features": (4, 8, 16, 32), "hidden": 8}
    return train_preset(design.preset, **overrides)


def run_task(design: Design, cohort: str, seed: int, arm_name: str, out: str, key: str, fingerprint: str,
             commit: str) -> dict:
    """Run one task (training or control) and write its folder; returns its cost row. Runs in a worker process
    when ``--jobs`` > 1."""
    torch.set_num_threads(1)
    out = Path(out)
    arm = design.arm(arm_name)
    folder = out / cohort / f"run_{seed}_{arm.name}"
    folder.mkdir(parents=True, exist_ok=True)
    _, cache = cohort_paths(out, cohort, seed)
    _, test_cache = cohort_paths(out, cohort, None)
    started = time.perf_counter()
    if arm.is_control:
        predictions = control_predictions(arm, cache, test_cache, seed)
        zero = ("cpu_s", "bytes_up_per_client_round", "bytes_down_per_client_round", "bytes_up", "bytes_down",
                "site_voxel_passes", "site_s", "site_cpu_s", "server_voxel_passes", "server_s", "server_cpu_s",
                "test_predict_s")
        cost = {"rounds": 0, "wall_s": time.perf_counter() - started, **dict.fromkeys(zero, 0),
                "site_s_per_round": float("nan")}
        snapshots = {}
    else:
        cost, predictions, snapshots = run_arm(arm, cache, test_cache, folder, _config(design, seed),
                                               design.distill, ComputeMeter())
    stamp = {"settings": key, "code": fingerprint, "commit": commit, "device": device_name(),
             "finished": dt.datetime.now(dt.timezone.utc).isoformat()}
    # snapshots first, the arm's own cost file last: it marks the task done
    for label, (snap_cost, snap_predictions) in [*snapshots.items(), (None, (cost, predictions))]:
        name = arm.name if label is None else f"{arm.name}@{label}"
        _atomic_csv(snap_predictions, folder / _file(TEST_PREDICTIONS, label))
        row = {"cohort": cohort, "seed": seed, "arm": name, **snap_cost, **stamp}
        (folder / f"{COST}.tmp").write_text(json.dumps(row, indent=1))
        (folder / f"{COST}.tmp").replace(folder / _file(COST, label))
    return row


def _file(name: str, label: str | None) -> str:
    """``test_predictions.csv`` / ``cost.json``, or a snapshot's ``test_predictions@vp.csv`` / ``cost@vp.json``."""
    if label is None:
        return name
    stem, suffix = name.rsplit(".", 1)
    return f"{stem}@{label}.{suffix}"


def _atomic_csv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path.with_name(path.name + ".tmp"), index=False)
    path.with_name(path.name + ".tmp").replace(path)


def scored_arms(design: Design) -> list[tuple[str, str, str | None]]:
    """(table name, arm name, snapshot label) of every arm the design scores: each arm, then its snapshots. A
    snapshot at or after the arm's last round is the arm's final model, which a run does not write twice: it is not
    scored separately (nor listed as missing)."""
    out = []
    for arm in design.arms:
        out.append((arm.name, arm.name, None))
        out += [(f"{arm.name}@{label}", arm.name, label) for label, r in arm.snapshots if int(r) < arm.rounds]
    return out


def final_snapshots(design: Design) -> dict[str, str]:
    """``{"arm@label": "arm"}`` for every snapshot at or after its arm's last round: the arm's final model, which
    :func:`scored_arms` does not score twice; a pair naming one is that arm's pair."""
    return {f"{arm.name}@{label}": arm.name for arm in design.arms for label, r in arm.snapshots
            if int(r) >= arm.rounds}


def done(out: Path, cohort: str, seed: int, arm: str, key: str | None, label: str | None = None) -> dict | None:
    """The cost row of a finished task (its predictions and cost file exist; with ``key``, made with that
    settings key), else None; ``label``: one of the arm's snapshots."""
    folder = out / cohort / f"run_{seed}_{arm}"
    if not ((folder / COST).is_file() and (folder / _file(COST, label)).is_file()
            and (folder / _file(TEST_PREDICTIONS, label)).is_file()):
        return None
    cost = json.loads((folder / _file(COST, label)).read_text())
    return cost if key is None or cost.get("settings") == key else None


# ---------------------------------------------------------------------------------------------------------------
# Merge
# ---------------------------------------------------------------------------------------------------------------


def merge(design: Design, out: Path, allow_mixed_code: bool = False, n_boot: int = 0,
          leakage: Path | None = None, jobs: int = 1) -> dict:
    """Tables from the finished tasks of ``design`` in ``out`` (see the module docstring); returns results.json's
    content. ``leakage``: a CSV with columns ``arm``, ``tpr_at_1pct_fpr`` (and optionally ``cohort``) — the
    membership-inference results of issue 30 — joined into ``costs.csv`` and the table (blank where absent).
    ``n_boot``: two-level bootstrap resamples (0: none), its pairs in ``jobs`` processes.

    Raises:
        ConfigError: the finished runs were made by different code (without ``allow_mixed_code``)."""
    costs, missing, rows, boot = [], [], [], {}
    truths = {}
    for cohort in design.cohorts:
        test_folder, _ = cohort_paths(out, cohort, None)
        if (test_folder / "truth.csv").is_file():
            truths[cohort] = pd.read_csv(test_folder / "truth.csv")
        for seed in design.seeds:
            for name, arm, label in scored_arms(design):
                cost = done(out, cohort, seed, arm, None, label)
                if cost is None:
                    missing.append(f"{cohort}/seed {seed}/{name}")
                    continue
                costs.append(cost)
                predictions = pd.read_csv(out / cohort / f"run_{seed}_{arm}" / _file(TEST_PREDICTIONS, label))
                truth_frame = with_labels(predictions, truths[cohort])
                boot[(cohort, seed, name)] = truth_frame
                for labels, frame in (("truth", truth_frame), ("manifest", predictions)):
                    rows.append({"cohort": cohort, "seed": seed, "arm": name, "labels": labels,
                                 **score_models(frame)})
    codes = sorted({c["code"] for c in costs})
    if len(codes) > 1 and not allow_mixed_code:
        raise ConfigError(f"{out}: the finished runs were made by {len(codes)} different code versions "
                          f"({', '.join(c[:12] for c in codes)}); rerun the stale ones or pass --allow-mixed-code.")
    cost_frame = pd.DataFrame(costs)
    per_seed = pd.DataFrame(rows)
    result = {"design": {k: v for k, v in dataclasses.asdict(design).items() if k != "arms"},
              "arms": [a.as_dict() for a in design.arms], "code": codes,
              "commits": sorted({c.get("commit", "unknown") for c in costs}),
              "devices": sorted({c.get("device", "unknown") for c in costs}),
              "finished": [min((c["finished"] for c in costs), default=None),
                           max((c["finished"] for c in costs), default=None)],
              "done": len(costs), "missing": missing, "merged": dt.datetime.now(dt.timezone.utc).isoformat(),
              "merged_by": git_commit(),  # the code that wrote the tables (the runs name their own in "commits")
              "n_boot": n_boot}
    if per_seed.empty:
        (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
        return result
    per_seed = per_seed.merge(cost_frame.drop(columns=["settings"], errors="ignore"), on=["cohort", "seed", "arm"])
    summary = seed_summary(per_seed)
    bootstrap = ({"predictions": boot, "n_boot": n_boot, "labels": "truth", "jobs": jobs} if n_boot > 0
                 else None)
    aliases = final_snapshots(design)
    pairs = list(dict.fromkeys((aliases.get(a, a), aliases.get(b, b)) for a, b in design.pairs))
    differences = seed_differences(per_seed, pairs, bootstrap=bootstrap)
    result["final_snapshots"] = aliases  # named in table.md: their comparisons are their arm's
    cost_table = cost_summary(cost_frame)
    cost_table["tpr_at_1pct_fpr"] = np.nan
    if leakage is not None:
        table = pd.read_csv(leakage)
        keys = ["cohort", "arm"] if "cohort" in table else ["arm"]
        joined = cost_table.drop(columns="tpr_at_1pct_fpr").merge(table[[*keys, "tpr_at_1pct_fpr"]], on=keys,
                                                                  how="left")
        cost_table = joined
    for frame, name in ((per_seed, "per_seed.csv"), (summary, "summary.csv"), (differences, "differences.csv"),
                        (cost_table, "costs.csv")):
        frame.to_csv(out / f"{name}.tmp", index=False)
        (out / f"{name}.tmp").replace(out / name)
    if any(arm.name in {a.name for arms in TUNING_GRID.values() for a in arms} for arm in design.arms):
        tuning, choice = tuning_choice(per_seed)
        tuning.to_csv(out / "tuning.csv", index=False)
        result["choice"] = choice
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "table.md").write_text(markdown(summary, differences, cost_table, result))
    pareto_figure(summary, cost_table, out / "pareto.html")
    return result


def tuning_choice(per_seed: pd.DataFrame, tie: float = 0.005) -> tuple[pd.DataFrame, dict[str, str]]:
    """The tuning table and choice (PREREGISTRATION.md section 6): per configuration of :data:`TUNING_GRID` found in
    ``per_seed`` (true labels), the mean over seeds of mean marker AUC, Dice WT, their mean (the criterion) and the
    site CPU seconds; per strategy the configuration with the highest criterion, a tie (within ``tie``) going to the
    one with fewer site CPU seconds. A strategy none of whose configurations has run on every seed is not chosen."""
    truth = per_seed[per_seed["labels"] == "truth"].copy()
    truth["criterion"] = (truth["auc_mean"] + truth["dice_WT"]) / 2
    rows = []
    for strategy, arms in TUNING_GRID.items():
        for arm in arms:
            part = truth[truth["arm"] == arm.name]
            rows.append({"strategy": strategy, "arm": arm.name, "seeds": part["seed"].nunique(),
                         "auc_mean": part["auc_mean"].mean(), "dice_WT": part["dice_WT"].mean(),
                         "criterion": part["criterion"].mean(), "site_cpu_s": part["site_cpu_s"].mean()})
    table = pd.DataFrame(rows)
    full = truth["seed"].nunique()
    choice = {}
    for strategy, part in table.groupby("strategy", sort=False):
        if not (part["seeds"] == full).all() or part["criterion"].isna().any():
            continue
        best = part["criterion"].max()
        near = part[part["criterion"] >= best - tie]
        choice[strategy] = str(near.sort_values("site_cpu_s").iloc[0]["arm"])
    table["chosen"] = table["arm"].isin(choice.values())
    return table, choice


def cost_summary(costs: pd.DataFrame) -> pd.DataFrame:
    """Per cohort and arm, means over seeds of the run's costs: rounds, site voxel passes (giga), site seconds
    (wall and CPU), bytes up and down (whole run, all sites), server voxel passes and seconds."""
    columns = ["rounds", "site_voxel_passes", "site_s", "site_cpu_s", "bytes_up", "bytes_down",
               "bytes_up_per_client_round", "bytes_down_per_client_round", "server_voxel_passes", "server_s",
               "server_cpu_s", "wall_s", "cpu_s"]
    columns = [c for c in columns if c in costs]  # a run written by an older version lacks some
    table = costs.groupby(["cohort", "arm"], sort=False)[columns].mean().reset_index()
    table["site_gvox"] = table["site_voxel_passes"] / 1e9
    table["server_gvox"] = table["server_voxel_passes"] / 1e9
    table["seeds"] = costs.groupby(["cohort", "arm"], sort=False).size().to_numpy()
    return table


def _cell(mean: float, lo: float, hi: float) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.2f}" if not np.isfinite(lo) else f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"


def _bytes(value: float) -> str:
    if not np.isfinite(value) or value == 0:
        return "0"
    return f"{value / 1e6:.1f} MB" if value >= 1e5 else f"{value / 1e3:.1f} kB"


#: the metrics of the paired-differences table in ``table.md`` (``differences.csv`` has every metric)
DIFFERENCE_METRICS = ("auc_mean", "auc_mean_above_chance", "dice_WT", "dice_TC", "dice_ET")


def markdown(summary: pd.DataFrame, differences: pd.DataFrame, costs: pd.DataFrame, result: dict) -> str:
    """The tables for RESULTS.md: per cohort, every arm's mean [95 % t-interval over seeds] (true labels) with its
    costs, then the paired differences over seeds on :data:`DIFFERENCE_METRICS`."""
    lines = [f"Code {', '.join(c[:12] for c in result['code'])} (commit {', '.join(result['commits'])}); devices: "
             f"{'; '.join(result['devices'])}; runs finished {result['finished'][0]} – {result['finished'][1]}; "
             f"{result['done']} runs done, {len(result['missing'])} missing.", ""]
    for snapshot, arm in result.get("final_snapshots", {}).items():
        lines += [f"`{snapshot}` is `{arm}`'s final model (a snapshot at its last round): its comparisons are "
                  f"`{arm}`'s.", ""]
    for cohort in summary["cohort"].unique():
        part = summary[(summary["cohort"] == cohort) & (summary["labels"] == "truth")]
        seeds = int(part["n"].max()) if len(part) else 0
        lines += [f"**Cohort `{cohort}`** — true labels, fixed test cohort; mean over seeds [95 % t-interval over "
                  f"seeds, up to {seeds} seeds]:", ""]
        header = ["arm", *(LABELS[m] for m in METRICS), "site Gvox", "site CPU s", "up (run)", "down (run)",
                  "leakage TPR@1%FPR"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        cost = costs[costs["cohort"] == cohort].set_index("arm")
        for arm in part["arm"].unique():
            cells = [arm]
            for metric in METRICS:
                r = part[(part["arm"] == arm) & (part["metric"] == metric)].iloc[0]
                cells.append(_cell(r["mean"], r["lo"], r["hi"]))
            c = cost.loc[arm] if arm in cost.index else None
            cells += [f"{c['site_gvox']:.2f}" if c is not None else "–",
                      f"{c['site_cpu_s']:.0f}" if c is not None else "–",
                      _bytes(c["bytes_up"]) if c is not None else "–",
                      _bytes(c["bytes_down"]) if c is not None else "–",
                      f"{c['tpr_at_1pct_fpr']:.3f}" if c is not None and np.isfinite(c.get("tpr_at_1pct_fpr", np.nan))
                      else ""]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        diff = differences[(differences["cohort"] == cohort) & (differences["labels"] == "truth")
                           & differences["metric"].isin(DIFFERENCE_METRICS)] if len(differences) else differences
        if len(diff):
            booted = "boot_lo" in diff and np.isfinite(diff["boot_lo"].to_numpy(float)).any()
            lines += ["Paired differences over seeds (a − b, true labels): mean [95 % t-interval], paired t-test p; "
                      "ratio a / b with Fieller's interval; verdict by the preregistered rule"
                      + (f"; beside them, the two-level bootstrap's 95 % interval (seeds, then test cases; "
                         f"{result.get('n_boot', '?')} resamples; it decides nothing)" if booted else "") + ":", ""]
            header = ["a − b", "metric", "n", "difference", "p", "ratio [Fieller]", "verdict",
                      *(["bootstrap [seeds, cases]"] if booted else [])]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for _, r in diff.iterrows():
                ratio = (f"{r['ratio']:.3f} [{r['ratio_lo']:.3f}, {r['ratio_hi']:.3f}]" if r["ratio_bounded"]
                         else "unbounded")
                boot = ([f"[{r['boot_lo']:.2f}, {r['boot_hi']:.2f}]" if np.isfinite(r["boot_lo"]) else "–"]
                        if booted else [])
                lines.append("| " + " | ".join([f"{r['a']} − {r['b']}", LABELS[r["metric"]], str(int(r["n"])),
                                                _cell(r["diff"], r["lo"], r["hi"]), f"{r['p']:.3g}", ratio,
                                                r["verdict"], *boot]) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """The names of the points ``(name, cost, accuracy)`` that no other point dominates (another costs no more and is
    at least as accurate, and is strictly better in one of the two), cheapest first. Points with a non-finite value
    are left out."""
    finite = [p for p in points if np.isfinite(p[1]) and np.isfinite(p[2])]
    front = [p for p in finite if not any(q[1] <= p[1] and q[2] >= p[2] and (q[1] < p[1] or q[2] > p[2])
                                          for q in finite)]
    return [p[0] for p in sorted(front, key=lambda p: (p[1], -p[2]))]


def pareto_figure(summary: pd.DataFrame, costs: pd.DataFrame, path: Path):
    """Mean marker AUC and Dice WT (true labels; t-interval bars) against site CPU seconds, site voxel passes,
    bytes up and bytes up + down per run; one row of panels per cohort and metric; each panel's Pareto front
    (:func:`pareto_front`) joined by a dashed line. A cost of 0 (a probe computes or sends nothing) is drawn at a tenth
    of the panel's smallest positive cost, as the log axis has no 0. Each arm has one colour in every panel and one
    legend entry (and a marker shape, so that near colours differ). Writes offline HTML (plotly.js inline) and
    returns the figure."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    cohorts = list(summary["cohort"].unique())
    palette = qualitative.Dark24
    symbols = ("circle", "square", "diamond", "triangle-up", "x", "star", "triangle-down", "cross")
    ordered = sorted(summary["arm"].unique())
    colour = {arm: palette[i % len(palette)] for i, arm in enumerate(ordered)}
    symbol = {arm: symbols[i % len(symbols)] for i, arm in enumerate(ordered)}  # near colours, other shapes
    legend = set()  # each arm once in the legend, one colour in every panel
    xs = (("site_gvox", "site compute (Gvox passes)"), ("site_cpu_s", "site CPU seconds"),
          ("bytes_up", "bytes up (run)"), ("bytes_total", "bytes up + down (run)"))
    metrics = (("auc_mean", "mean marker AUC"), ("dice_WT", "Dice WT"))
    figure = make_subplots(rows=len(cohorts) * 2, cols=len(xs), vertical_spacing=0.12 / len(cohorts),
                           horizontal_spacing=0.05,
                           subplot_titles=[f"{c}: {m[1]}" for c in cohorts for m in metrics for _ in xs])
    costs = costs.assign(bytes_total=costs["bytes_up"] + costs["bytes_down"])
    for i, cohort in enumerate(cohorts):
        part = summary[(summary["cohort"] == cohort) & (summary["labels"] == "truth")]
        cost = costs[costs["cohort"] == cohort].set_index("arm")
        for j, (metric, metric_title) in enumerate(metrics):
            rows = part[(part["metric"] == metric) & part["arm"].isin(cost.index) & np.isfinite(part["mean"])]
            for k, (x_name, x_title) in enumerate(xs):
                position = dict(row=2 * i + j + 1, col=k + 1)
                values = {r["arm"]: float(cost.loc[r["arm"], x_name]) for _, r in rows.iterrows()}
                known = rows[[np.isfinite(values[a]) for a in rows["arm"]]]  # an unknown cost is not drawn
                positive = [v for v in values.values() if v > 0]
                floor = min(positive) / 10 if positive else 1.0
                points = [(r["arm"], values[r["arm"]] if values[r["arm"]] > 0 else floor, float(r["mean"]))
                          for _, r in known.iterrows()]
                for (arm, x, y), (_, r) in zip(points, known.iterrows()):
                    err = [r["hi"] - r["mean"]] if np.isfinite(r["hi"]) else None
                    figure.add_trace(go.Scatter(
                        x=[x], y=[y], mode="markers+text", text=[arm], textposition="top center",
                        textfont=dict(size=9, color=colour[arm]), name=arm, legendgroup=arm,
                        showlegend=arm not in legend, marker=dict(color=colour[arm], symbol=symbol[arm], size=9),
                        hovertext=f"{arm}: {y:.3f}, {x_title} {values[arm]:.3g}",
                        error_y=dict(type="data", array=err, arrayminus=[r["mean"] - r["lo"]] if err else None,
                                     visible=err is not None, color=colour[arm])), **position)
                    legend.add(arm)
                front = pareto_front(points)
                by_name = {arm: (x, y) for arm, x, y in points}
                if len(front) > 1:
                    figure.add_trace(go.Scatter(x=[by_name[a][0] for a in front], y=[by_name[a][1] for a in front],
                                                mode="lines", line=dict(dash="dash", color="grey", shape="hv"),
                                                showlegend=False, hoverinfo="skip"), **position)
                figure.update_xaxes(type="log", title_text=x_title, title_standoff=2, **position)
                if k == 0:
                    figure.update_yaxes(title_text=metric_title, **position)
    figure.update_layout(title="gliofed strategy comparison: accuracy against cost (log x; a cost of 0 is drawn at a "
                               "tenth of the smallest; dashed: the Pareto front; one colour per arm)",
                         height=520 * len(cohorts) * 2, width=1700, margin=dict(t=90))
    tmp = path.with_suffix(".tmp.html")
    figure.write_html(tmp, include_plotlyjs=True, full_html=True)
    tmp.replace(path)
    return figure


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def _shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not K/N (e.g. 0/2)") from None
    if not (n >= 1 and 0 <= k < n):
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= K < N")
    return k, n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--design", choices=sorted(DESIGNS), required=True)
    parser.add_argument("--out", required=True, help="output folder (cohorts, caches, runs, tables)")
    parser.add_argument("--cohorts", nargs="+", choices=sorted(COHORTS), help="only these cohort kinds")
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds of the design")
    parser.add_argument("--arms", nargs="+", help="only these arms of the design")
    parser.add_argument("--jobs", type=int, default=1,
                        help="tasks (and the merge's bootstrap pairs) in parallel processes (default 1)")
    parser.add_argument("--shard", type=_shard, default=(0, 1), help="K/N: run every N-th task from the K-th")
    parser.add_argument("--merge-only", action="store_true", help="run nothing; write the tables from done tasks")
    parser.add_argument("--allow-mixed-code", action="store_true", help="merge runs made by different code")
    parser.add_argument("--n-boot", type=int, default=0, help="two-level bootstrap resamples in the merge (0: none)")
    parser.add_argument("--leakage", type=Path, help="CSV of arm, tpr_at_1pct_fpr (issue 30) for the table's column")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: need at least 1")
    if args.n_boot < 0:
        parser.error(f"--n-boot {args.n_boot}: need 0 (no bootstrap) or more")
    design = DESIGNS[args.design]
    for name, chosen, known in (("seeds", args.seeds, design.seeds), ("arms", args.arms,
                                                                       [a.name for a in design.arms]),
                                ("cohorts", args.cohorts, design.cohorts)):
        unknown = sorted(set(chosen or ()) - set(known))
        if unknown:
            parser.error(f"--{name} {' '.join(map(str, unknown))}: not in design {args.design} "
                         f"({' '.join(map(str, known))})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    if not args.merge_only:
        fingerprint, commit = source_fingerprint(), git_commit()
        cohorts = tuple(args.cohorts or design.cohorts)
        seeds = tuple(args.seeds or design.seeds)
        arms = [a for a in design.arms if not args.arms or a.name in args.arms]
        keys = {(c, a.name): task_key(design, c, a, fingerprint) for c in cohorts for a in arms}
        # controls first (seconds), then the long ones first, so parallel workers finish together
        order = {"distill": 0, "local": 1, "centralized": 2}
        tasks = [(c, s, a.name) for c in cohorts for s in seeds for a in arms]
        tasks = tasks[args.shard[0]::args.shard[1]]
        pending = []
        for task in tasks:
            cost = done(out, *task, None)
            if cost is not None and cost.get("settings") != keys[(task[0], task[2])]:
                parser.error(f"{out / task[0] / f'run_{task[1]}_{task[2]}'}: made with other settings or code "
                             "than this run's; use another --out or delete that folder.")
            if cost is None:
                pending.append(task)
        pending.sort(key=lambda t: (not design.arm(t[2]).is_control, order.get(design.arm(t[2]).strategy, 3)))
        log(f"design {args.design}: {len(tasks)} task(s) in this shard, {len(tasks) - len(pending)} done, "
            f"{len(pending)} to run; commit {commit}")
        try:
            for cohort in sorted({t[0] for t in pending}):
                prepare(design, out, cohort, None, fingerprint)
            for cohort, seed in sorted({(t[0], t[1]) for t in pending}):
                prepare(design, out, cohort, seed, fingerprint)
        except ConfigError as error:
            parser.error(str(error))
        submit = [(design, c, s, a, str(out), keys[(c, a)], fingerprint, commit) for c, s, a in pending]
        if args.jobs > 1:
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(max_workers=args.jobs) as pool:
                futures = [pool.submit(run_task, *task) for task in submit]
                for future in as_completed(futures):
                    cost = future.result()
                    log(f"{cost['cohort']} seed {cost['seed']} {cost['arm']}: {cost['wall_s']:.0f} s")
        else:
            for task in submit:
                cost = run_task(*task)
                log(f"{cost['cohort']} seed {cost['seed']} {cost['arm']}: {cost['wall_s']:.0f} s")
    try:
        result = merge(design, out, args.allow_mixed_code, args.n_boot, args.leakage, jobs=args.jobs)
    except ConfigError as error:
        parser.error(str(error))
    log(f"merged {result['done']} run(s) into {out}; missing {len(result['missing'])}"
        + (f": {', '.join(result['missing'][:8])}{' ...' if len(result['missing']) > 8 else ''}"
           if result["missing"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
