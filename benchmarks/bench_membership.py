"""Membership inference against every strategy's release and every distillation payload part (issue 30).

Design (LiRA over shadow runs, Carlini et al. 2022; :mod:`gliofed.experiments.membership`), per seed:

1. The benchmark's synthetic cohort of that seed (workshop preset, 24 subjects per site, cache 32 x 32). The
   candidate pool is the training cases of the first ``pool_sites`` sites (34 patients at the full setting); the
   other sites' training cases train theta, the global model every site works from (centralized, ``theta_epochs``
   epochs of the workshop recipe), and are the other sites of the one-round federations below.
2. ``runs`` runs (12, of which the first ``runs_used``, 8, are run): each takes a random half of the pool as the
   target site's data, every candidate being in exactly half of the 12 runs
   (:func:`~gliofed.experiments.membership.membership_matrix`). In each run the target site
   - condenses under theta with the benchmark's distillation settings (workshop effort, default payload);
   - trains one local epoch from theta (FedAvg) and one with FedProx's proximal term (mu 0.01);
   and the server forms each strategy's model after that round from the target site's reply and the other sites'
   (fixed per seed): the FedAvg / FedProx average and the distillation server's training.
3. Per run and candidate the attacker's statistics (:mod:`gliofed.experiments.leakage`): one per payload part, the
   loss drop under each update, minus the loss under each final model.
4. Leave-one-run-out attacks: online LiRA (the headline), offline LiRA and the global threshold; TPR at 1 % and
   0.1 % FPR and AUC per target, mean over seeds with a hierarchical bootstrap interval (seeds, then target runs).
   ``payload`` sums the parts' online-LiRA scores (log-likelihood ratios, as if independent).

What "final model" means here: the global model after one round from theta (the round that uses the target
site's data); later rounds would dilute it further. Centralized pools raw scans (membership is disclosed by
design) and local-only releases nothing: neither is attacked.

DP sweep (``--phase dp``): the same attack on the FedAvg update trained by DP-SGD (GroupNorm theta) at each noise
multiplier of ``dp_sigmas``, epsilon from the accountant; ``--phase gaussian``: the distillation payload, part by
part, with its summaries released through the Gaussian mechanism at each noise multiplier of ``gaussian_sigmas``
(the same runs as the default payload, the target site's condensation only); the privacy-utility curves come from
``bench_privacy_utility.py``.

Resumable: every run's statistics are saved as they are computed (``<out>/seed_<s>/run_<r>.npz``); rerun the same
command to continue. Logs go to stdout (run it niced in the background with a log file).

Outputs (``--out``, default ``runs/bench_membership``): ``scores.csv.gz`` (every attack score), ``summary.csv``
(one row per target and attack) and ``leakage.csv`` (benchmarks/results/leakage.csv's columns: strategy, target,
kind, tpr@0.01 with its interval, tpr@0.001, auc, seeds, device, date).

Usage:
  nice -n 10 python benchmarks/bench_membership.py > membership.log 2>&1 &      # 3 seeds x 8 runs
  python benchmarks/bench_membership.py --mode smoke                           # tiny cohort, seconds
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from gliofed.data.cache import preprocess  # noqa: E402
from gliofed.data.dataset import CaseDataset  # noqa: E402
from gliofed.data.synth import make_cohort  # noqa: E402
from gliofed.dp import DPSettings  # noqa: E402
from gliofed.engine import fit, seed_everything  # noqa: E402
from gliofed.experiments.leakage import PARTS, candidate_records, case_losses, part_statistics  # noqa: E402
from gliofed.experiments.membership import membership_matrix, run_attack, score_frame, summarise  # noqa: E402
from gliofed.fileio import atomic_write  # noqa: E402
from gliofed.model import build_model  # noqa: E402
from gliofed.presets import train_preset  # noqa: E402

MODES: dict[str, dict] = {
    # runs_used: the first runs of the 12-run design (the shared 2-core machine's budget); each candidate is then
    # in 2-6 of them rather than exactly half, which leave-one-run-out LiRA tolerates (fixed variance)
    "full": dict(preset="workshop", cases_per_site=24, size=32, seeds=(0, 1, 2), runs=12, runs_used=8,
                 theta_epochs=3, pool_sites=2, small_model=False,
                 distill={"steps": 5, "server_epochs": 10, "real_batch": 12},
                 dp_sigmas=(0.5, 2.0), dp_runs=6, gaussian_sigmas=(0.5, 2.0), n_boot=1000),
    "smoke": dict(preset="tiny", cases_per_site=6, size=24, seeds=(0,), runs=4, theta_epochs=1, pool_sites=2,
                  small_model=True, distill={"steps": 1, "server_epochs": 1, "real_batch": 3},
                  dp_sigmas=(1.0,), dp_runs=4, gaussian_sigmas=(1.0,), n_boot=50),
}
#: the model releases attacked: (strategy, target) -> statistic kind
MODEL_TARGETS = {("fedavg", "update"): "loss_drop", ("fedprox", "update"): "loss_drop",
                 ("fedavg", "final_model"): "negative_loss", ("fedprox", "final_model"): "negative_loss",
                 ("distill", "final_model"): "negative_loss"}
ATTACK_KINDS = ("lira", "offline", "threshold")


def log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", flush=True)


def stored_run(path: Path, compute: Callable[[], dict[str, np.ndarray]], label: str) -> None:
    """One resumable run: unless ``path`` already holds its statistics, ``compute()`` them and write them atomically
    (an interrupted run leaves no partial file), logging the time under ``label``."""
    if path.is_file():
        return
    started = time.perf_counter()
    stats = compute()
    atomic_write(path, lambda tmp: np.savez(tmp, **stats), keep_suffix=True)
    log(f"{label}: {time.perf_counter() - started:.0f} s")


class Subset:
    """A view of a :class:`CaseDataset` restricted to some of its rows (what a site holds in one run)."""

    def __new__(cls, dataset: CaseDataset, rows) -> CaseDataset:
        view = object.__new__(CaseDataset)
        view.__dict__.update(dataset.__dict__)
        view.index = dataset.index.iloc[np.asarray(rows)].reset_index(drop=True)
        return view


def prepare_cohort(seed: int, mode: dict, work: Path) -> Path:
    """The cohort of ``seed`` preprocessed (made once; a folder made with other settings is refused)."""
    cohort, cache = work / f"cohort_{seed}", work / f"cache_{seed}"
    stamp = json.dumps({k: mode[k] for k in ("preset", "cases_per_site", "size")} | {"seed": seed}, sort_keys=True)
    stamp_file = work / f"cohort_{seed}.json"
    if cache.exists() and stamp_file.is_file():
        if stamp_file.read_text() != stamp:
            raise SystemExit(f"{cache}: made with other settings ({stamp_file.read_text()}); use another --out.")
        return cache
    make_cohort(cohort, preset=mode["preset"], seed=seed, cases_per_site=mode["cases_per_site"], progress=False,
                verbose=False)
    preprocess(cohort / "manifest.csv", cache, size=mode["size"], workers=1, progress=False)
    stamp_file.write_text(stamp)
    return cache


def config_for(mode: dict, seed: int, norm: str = "batch"):
    model = {"features": (4, 8, 16, 32), "hidden": 8} if mode["small_model"] else {}
    return train_preset(mode["preset"], device="cpu", seed=seed, model={**model, "norm": norm})


def save_state(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))


def load_state(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))
    return model


def train_theta(train: CaseDataset, others: list[str], config, epochs: int, path: Path) -> torch.nn.Module:
    """theta: centralized training on the other sites' cases (made once per seed and norm)."""
    model = build_model(config)
    if path.is_file():
        return load_state(model, path).eval()
    data = Subset(train, np.flatnonzero(train.index["site"].isin(others).to_numpy()))
    seed_everything(config.seed)
    fit(model, data, config, epochs=epochs, progress=False)
    save_state(model.cpu(), path)
    return model.eval()


def local_update(theta: torch.nn.Module, data, config, seed: int, mu: float = 0.0,
                 dp: DPSettings | None = None) -> tuple[torch.nn.Module, list[dict]]:
    """One local epoch from theta, as a site's ``train`` answer does (FedProx's term when ``mu`` > 0)."""
    from gliofed.data.transforms import augment_pipeline

    model = copy.deepcopy(theta)
    extra = None
    if mu > 0:
        anchor = [p.detach().clone() for p in model.parameters()]

        def extra(net):
            return 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(net.parameters(), anchor))

    seed_everything(seed)
    data.transform = augment_pipeline(seed) if config.augment else None
    try:
        history = fit(model, data, config.replace(seed=seed), epochs=1, extra_loss=extra, progress=False, dp=dp)
    finally:
        data.transform = None
    return model.cpu().eval(), history


def fedavg_model(theta: torch.nn.Module, updates: list[tuple[torch.nn.Module, int]]) -> torch.nn.Module:
    """The FedAvg average of the updates (weighted by case counts; integer buffers: the maximum)."""
    from gliofed.federated.protocol import arrays_to_state, state_to_arrays
    from gliofed.federated.server.strategies import weighted_average

    arrays = [(state_to_arrays(model), float(n)) for model, n in updates]
    model = copy.deepcopy(theta)
    model.load_state_dict(arrays_to_state(weighted_average(arrays)))
    return model.eval()


def distill_model(theta: torch.nn.Module, payloads: dict, distill: dict, seed: int) -> torch.nn.Module:
    from gliofed.federated.server.strategies import DistillFederation

    model = copy.deepcopy(theta)
    seed_everything(seed)
    DistillFederation(distill, seed=seed).aggregate(model, payloads, 1)
    return model.eval()


def condense_site(theta, data, distill: dict, seed: int, site: str, dp: DPSettings | None = None):
    from gliofed.federated.protocol import DistillSettings
    from gliofed.federated.site.condense import condense

    seed_everything(seed)
    return condense(copy.deepcopy(theta).eval(), data, DistillSettings(**distill), seed, site, min_group=3, dp=dp)


def seed_setup(seed: int, mode: dict, work: Path, norm: str = "batch"):
    """Cohort, pool, theta, the attacker's records and the other sites' fixed replies of one seed."""
    cache = prepare_cohort(seed, mode, work)
    folder = work / f"seed_{seed}"
    folder.mkdir(exist_ok=True)
    config = config_for(mode, seed, norm)
    train = CaseDataset(cache, split="train", modalities=config.modalities, seed=seed)
    sites = train.sites
    pool_sites, others = sites[: mode["pool_sites"]], sites[mode["pool_sites"]:]
    pool = Subset(train, np.flatnonzero(train.index["site"].isin(pool_sites).to_numpy()))
    theta = train_theta(train, others, config, mode["theta_epochs"], folder / f"theta_{norm}.safetensors")
    records = candidate_records(theta, pool)
    return config, train, pool, others, theta, records, folder


def other_replies(seed: int, mode: dict, train, others, theta, config, folder: Path):
    """The other sites' FedAvg / FedProx updates and distilled sets (one round from theta; fixed per seed)."""
    from gliofed.federated.protocol import Payload

    replies = {"fedavg": [], "fedprox": [], "distill": {}}
    for index, site in enumerate(others):
        data = Subset(train, np.flatnonzero((train.index["site"] == site).to_numpy()))
        for name, mu in (("fedavg", 0.0), ("fedprox", 0.01)):
            path = folder / f"other_{site}_{name}.safetensors"
            model = copy.deepcopy(theta)
            if path.is_file():
                load_state(model, path)
            else:
                model, _ = local_update(theta, data, config, 1000 + index, mu)
                save_state(model, path)
            replies[name].append((model.eval(), len(data)))
        path = folder / f"other_{site}_distill.npz"
        if path.is_file():
            with np.load(path) as stored:
                arrays = {k: stored[k] for k in stored.files if k != "__meta__"}
                meta = json.loads(str(stored["__meta__"]))
            replies["distill"][site] = Payload("distilled_set", arrays, meta)
        else:
            payload = condense_site(theta, data, mode["distill"], 2000 + index, site)
            atomic_write(path, partial(np.savez, __meta__=json.dumps(payload.meta), **payload.arrays),
                         keep_suffix=True)
            replies["distill"][site] = payload
    return replies


def run_leakage(seed: int, mode: dict, work: Path) -> pd.DataFrame:
    """Every run of one seed (resumable), then the attacks; returns the score frame."""
    config, train, pool, others, theta, records, folder = seed_setup(seed, mode, work)
    runs = mode.get("runs_used", mode["runs"])
    membership = membership_matrix(len(pool), mode["runs"], seed=seed)[:runs]
    replies = other_replies(seed, mode, train, others, theta, config, folder)
    base_loss = case_losses(theta, records)

    def one_run(r: int) -> dict[str, np.ndarray]:
        data = Subset(pool, np.flatnonzero(membership[r]))
        payload = condense_site(theta, data, mode["distill"], 100 * seed + r, "target")
        stats = {f"distill/{part}": values for part, values in part_statistics(payload.arrays, records).items()}
        finals = {}
        for name, mu in (("fedavg", 0.0), ("fedprox", 0.01)):
            update, _ = local_update(theta, data, config, 100 * seed + r, mu)
            stats[f"{name}/update"] = base_loss - case_losses(update, records)
            finals[name] = fedavg_model(theta, [(update, len(data)), *replies[name]])
        finals["distill"] = distill_model(theta, {"target": payload, **replies["distill"]}, mode["distill"],
                                          100 * seed + r)
        for name, model in finals.items():
            stats[f"{name}/final_model"] = -case_losses(model, records)
        return stats

    for r in range(runs):
        stored_run(folder / f"run_{r}.npz", partial(one_run, r), f"seed {seed} run {r + 1}/{runs}")
    return attack_frames(folder, membership, pool, seed, runs)


def attack_frames(folder: Path, membership: np.ndarray, pool, seed: int, runs: int,
                  prefix: str = "run") -> pd.DataFrame:
    stored = [dict(np.load(folder / f"{prefix}_{r}.npz")) for r in range(runs)]
    candidates = list(pool.index["subject_id"])
    frames, lira_parts = [], []
    for key in stored[0]:
        statistic = np.stack([s[key] for s in stored])
        if not np.isfinite(statistic).any():
            continue
        strategy, target = key.split("/")
        kind = "payload_part" if strategy == "distill" and target in PARTS else "model"
        for attack in ATTACK_KINDS:
            scores, members = run_attack(statistic, membership, attack)
            frames.append(score_frame(scores, members, seed, candidates, strategy=strategy, target=target,
                                      kind=kind, attack=attack))
            if attack == "lira" and kind == "payload_part":
                lira_parts.append(np.nan_to_num(scores, nan=0.0))
    if lira_parts:
        frames.append(score_frame(np.sum(lira_parts, 0), membership, seed, candidates, strategy="distill",
                                  target="payload", kind="payload", attack="lira"))
    return pd.concat(frames, ignore_index=True)


def stored_pool(seed: int, work: Path) -> CaseDataset:
    """The candidate pool of a seed whose cohort is already prepared (reads only the cache index)."""
    mode = {"pool_sites": 2}
    train = CaseDataset(work / f"cache_{seed}", split="train", seed=seed)
    return Subset(train, np.flatnonzero(train.index["site"].isin(train.sites[: mode["pool_sites"]]).to_numpy()))


def report_frames(mode: dict, work: Path) -> tuple[list[pd.DataFrame], list[str]]:
    """The attacks over every seed whose runs are all stored (nothing is computed but the attacks); and one line
    per seed or setting that is missing runs."""
    frames, missing = [], []
    runs = mode.get("runs_used", mode["runs"])
    for seed in mode["seeds"]:
        folder = work / f"seed_{seed}"
        have = [r for r in range(runs) if (folder / f"run_{r}.npz").is_file()]
        if len(have) < runs:
            missing.append(f"seed {seed}: {len(have)} of {runs} leakage runs stored")
            continue
        pool = stored_pool(seed, work)
        membership = membership_matrix(len(pool), mode["runs"], seed=seed)[:runs]
        frames.append(attack_frames(folder, membership, pool, seed, runs))
    for seed in mode["seeds"]:
        folder = work / f"seed_{seed}"
        for sigma in (0.0, *mode["dp_sigmas"]):
            tag = f"dp_{sigma:g}"
            have = [r for r in range(mode["dp_runs"]) if (folder / f"{tag}_{r}.npz").is_file()]
            if len(have) < mode["dp_runs"]:
                missing.append(f"seed {seed}: {len(have)} of {mode['dp_runs']} DP-SGD runs at noise {sigma:g}")
                continue
            pool = stored_pool(seed, work)
            membership = membership_matrix(len(pool), mode["dp_runs"], seed=seed)
            stored = [dict(np.load(folder / f"{tag}_{r}.npz")) for r in range(mode["dp_runs"])]
            epsilon = float(np.max([s["epsilon"][0] for s in stored]))
            for attack in ATTACK_KINDS:
                scores, members = run_attack(np.stack([s["fedavg/update"] for s in stored]), membership, attack)
                frames.append(score_frame(scores, members, seed, list(pool.index["subject_id"]),
                                          strategy="fedavg_dp_sgd", target="update", kind="model", attack=attack,
                                          noise_multiplier=sigma, epsilon=epsilon))
    return frames, missing


def run_dp(seed: int, mode: dict, work: Path) -> pd.DataFrame:
    """The FedAvg update trained by DP-SGD (GroupNorm theta) at each noise multiplier; plus the same update
    without DP (GroupNorm, the reference). Returns the score frame with ``epsilon`` per noise multiplier."""
    config, train, pool, others, theta, records, folder = seed_setup(seed, mode, work, norm="group")
    runs = mode["dp_runs"]
    membership = membership_matrix(len(pool), runs, seed=seed)
    base_loss = case_losses(theta, records)

    def dp_run(sigma: float, r: int) -> dict[str, np.ndarray]:
        data = Subset(pool, np.flatnonzero(membership[r]))
        dp = DPSettings("dp_sgd", noise_multiplier=sigma, max_norm=1.0) if sigma > 0 else None
        update, history = local_update(theta, data, config, 100 * seed + r, 0.0, dp)
        epsilon = float(history[-1].get("epsilon", float("inf"))) if sigma > 0 else float("inf")
        return {"fedavg/update": base_loss - case_losses(update, records), "epsilon": np.array([epsilon])}

    frames = []
    for sigma in (0.0, *mode["dp_sigmas"]):
        tag = f"dp_{sigma:g}"
        epsilons = []
        for r in range(runs):
            path = folder / f"{tag}_{r}.npz"
            stored_run(path, partial(dp_run, sigma, r), f"seed {seed} {tag} run {r + 1}/{runs}")
            with np.load(path) as stored:
                epsilons.append(float(stored["epsilon"][0]))
        stored = [np.load(folder / f"{tag}_{r}.npz")["fedavg/update"] for r in range(runs)]
        for attack in ATTACK_KINDS:
            scores, members = run_attack(np.stack(stored), membership, attack)
            frame = score_frame(scores, members, seed, list(pool.index["subject_id"]), strategy="fedavg_dp_sgd",
                                target="update", kind="model", attack=attack, noise_multiplier=sigma,
                                epsilon=float(np.max(epsilons)))
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def gaussian_epsilon(sigma: float, delta: float = 1e-5) -> float:
    """Epsilon of one Gaussian release of the summaries (one step at sample rate 1: what a site's accountant books for
    one ``distill`` request under ``DPSettings("gaussian", sigma)``)."""
    from gliofed.dp import Accountant

    accountant = Accountant()
    accountant.step(sigma, 1.0, 1)
    return accountant.epsilon(delta)


def run_gaussian(seed: int, mode: dict, work: Path) -> pd.DataFrame:
    """The distillation payload with every summary released through the Gaussian mechanism (the DP dial's
    ``"gaussian"``, clipping norm 1) at each noise multiplier of ``gaussian_sigmas``: the same runs, memberships and
    part statistics as the default payload (:func:`run_leakage`), the target site's condensation only. Returns the
    score frame with ``noise_multiplier`` and ``epsilon`` (one request)."""
    config, train, pool, others, theta, records, folder = seed_setup(seed, mode, work)
    runs = mode.get("runs_used", mode["runs"])
    membership = membership_matrix(len(pool), mode["runs"], seed=seed)[:runs]

    def gaussian_run(sigma: float, r: int) -> dict[str, np.ndarray]:
        data = Subset(pool, np.flatnonzero(membership[r]))
        payload = condense_site(theta, data, mode["distill"], 100 * seed + r, "target",
                                dp=DPSettings("gaussian", noise_multiplier=sigma, max_norm=1.0))
        return {f"distill/{part}": values for part, values in part_statistics(payload.arrays, records).items()}

    frames = []
    for sigma in mode["gaussian_sigmas"]:
        tag = f"gaussian_{sigma:g}"
        for r in range(runs):
            stored_run(folder / f"{tag}_{r}.npz", partial(gaussian_run, sigma, r),
                       f"seed {seed} {tag} run {r + 1}/{runs}")
        frame = attack_frames(folder, membership, pool, seed, runs, prefix=tag)
        frame["strategy"] = "distill_gaussian"
        frames.append(frame.assign(noise_multiplier=sigma, epsilon=gaussian_epsilon(sigma)))
    return pd.concat(frames, ignore_index=True)


def leakage_table(summary: pd.DataFrame, device: str, date: str) -> pd.DataFrame:
    """The leakage column per strategy and target (online LiRA): the CSV benchmark tables join on ``strategy``."""
    lira = summary[summary["attack"] == "lira"].copy()
    columns = ["strategy", "target", "kind", "tpr@0.01", "tpr@0.01_lo", "tpr@0.01_hi", "tpr@0.001", "tpr@0.001_lo",
               "tpr@0.001_hi", "auc", "auc_lo", "auc_hi", "seeds", "runs", "n_members", "n_nonmembers"]
    extra = [c for c in ("noise_multiplier", "epsilon") if c in lira.columns]
    table = lira[columns[:3] + extra + columns[3:]].copy()
    table["chance_tpr@0.01"] = 0.01
    table["device"], table["date"] = device, date
    return table


def _cell(row, metric: str) -> str:
    value, lo, hi = row[metric], row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and np.isfinite(lo) else f"{value:.3f}"


def markdown(table: pd.DataFrame, mode_name: str, mode: dict, device: str, date: str) -> str:
    """The RESULTS.md table: one row per attacked release (online LiRA), mean over seeds [95 % interval]."""
    lines = [f"Mode `{mode_name}`: {len(mode['seeds'])} seeds ({', '.join(map(str, mode['seeds']))}), "
             f"{mode.get('runs_used', mode['runs'])} runs per seed, online LiRA leave-one-run-out; {device}; {date}.",
             "", "| strategy | what is attacked | noise multiplier | epsilon (delta 1e-5) | TPR at 1 % FPR | "
             "TPR at 0.1 % FPR | AUC | non-member pairs per seed |", "|---|---|---|---|---|---|---|---|"]
    for _, row in table.iterrows():
        sigma = row.get("noise_multiplier", -1)
        sigma = "off" if sigma is None or not np.isfinite(sigma) or sigma <= 0 else f"{sigma:g}"
        eps = row.get("epsilon", np.inf)
        eps = f"{eps:.1f}" if eps is not None and np.isfinite(eps) else "inf (no DP)"
        lines.append(f"| {row['strategy']} | {row['target'].replace('_', ' ')} | {sigma} | {eps} | "
                     f"{_cell(row, 'tpr@0.01')} | {_cell(row, 'tpr@0.001')} | {_cell(row, 'auc')} | "
                     f"{int(row['n_nonmembers'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="full")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_membership")
    parser.add_argument("--phase", choices=("leakage", "dp", "gaussian", "all"), default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the mode's seeds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    parser.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples (default: the mode's)")
    parser.add_argument("--report", action="store_true",
                        help="compute nothing but the attacks over the stored runs (seeds with every run stored)")
    args = parser.parse_args(argv)
    mode = dict(MODES[args.mode])
    if args.seeds:
        mode["seeds"] = tuple(args.seeds)
    if args.n_boot:
        mode["n_boot"] = args.n_boot
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    frames = []
    if args.report:
        frames, missing = report_frames(mode, args.out)
        for line in missing:
            log(f"not in this report: {line}")
        args.phase = "report"
    if args.phase in ("leakage", "all"):  # every seed's default-setting runs first: the headline
        for seed in mode["seeds"]:
            log(f"seed {seed}: leakage runs")
            frames.append(run_leakage(seed, mode, args.out))
    if args.phase in ("dp", "all") and not args.report:
        for seed in mode["seeds"]:
            log(f"seed {seed}: DP-SGD runs")
            frames.append(run_dp(seed, mode, args.out))
    if args.phase in ("gaussian", "all") and not args.report:
        for seed in mode["seeds"]:
            log(f"seed {seed}: Gaussian-release distillation runs")
            frames.append(run_gaussian(seed, mode, args.out))
    scores = pd.concat(frames, ignore_index=True)
    scores.to_csv(args.out / f"scores_{args.phase}.csv.gz", index=False)
    by = ["strategy", "target", "kind", "attack"] + [c for c in ("noise_multiplier",) if c in scores.columns]
    scores[by] = scores[by].fillna(-1) if "noise_multiplier" in by else scores[by]
    summary = summarise(scores, by=by, n_boot=mode["n_boot"])
    if "epsilon" in scores.columns:
        eps = scores.groupby(by)["epsilon"].max().rename("epsilon").reset_index()
        summary = summary.merge(eps, on=by, how="left")
    summary.to_csv(args.out / f"summary_{args.phase}.csv", index=False)
    device = f"CPU ({platform.processor() or platform.machine()}), {args.threads} thread(s), shared 2-core machine"
    table = leakage_table(summary, device, dt.date.today().isoformat())
    table.to_csv(args.out / f"leakage_{args.phase}.csv", index=False)
    (args.out / f"table_{args.phase}.md").write_text(markdown(table, args.mode, mode, device, table["date"].iloc[0]))
    pd.set_option("display.width", 220)
    show = table[["strategy", "target"] + [c for c in ("noise_multiplier", "epsilon") if c in table.columns] +
                 ["tpr@0.01", "tpr@0.01_lo", "tpr@0.01_hi", "tpr@0.001", "auc", "seeds", "n_nonmembers"]]
    print(show.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    log(f"done in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
