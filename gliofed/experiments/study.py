"""The strategy benchmark's parts that do not depend on one script: arms, compute metering, cohorts, one run of an
arm, scoring, and the seed-level tables (``benchmarks/bench_comparison.py`` and ``benchmarks/bench_strategies.py``
call them; notebooks read the tables they write).

**Compute is counted, not only timed.** A :class:`ComputeMeter` counts the voxels that pass through the network
(:class:`~gliofed.model.MultiTaskUNet`): a forward pass of a (C, D, H, W) volume counts D x H x W, and a forward
pass under autograd (a training or condensation step) counts three times that (forward + backward, the backward
taken as twice the forward; for condensation, whose backward only reaches the synthetic voxels, this overstates
the site's cost, which gives the baselines matched against it more compute, not less). Sites' counts are a
deterministic measure of their work (same settings, same count on any machine), unlike seconds on a shared one;
site seconds are recorded too, as wall clock and as CPU time of the process.

Column conventions of every table written here (long format):

* per-seed table: ``cohort, seed, arm, labels`` (``truth`` or ``manifest``), one column per :data:`METRICS`, then
  the arm's costs (:func:`run_arm`);
* summary: ``cohort, labels, arm, metric, n, mean, lo, hi`` (95 % t-interval over seeds);
* differences: ``cohort, labels, a, b, metric, n, diff, lo, hi, t, p, verdict`` (paired over seeds),
  ``ratio, ratio_lo, ratio_hi, ratio_bounded`` (Fieller), ``log_ratio, log_ratio_lo, log_ratio_hi`` (log-ratio
  t-interval) and ``boot_lo, boot_hi`` (two-level bootstrap, seeds then cases; NaN where not computed).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gliofed.experiments import stats
from gliofed.metrics import fast_auc
from gliofed.vocab import MARKERS

__all__ = ["METRICS", "LABELS", "HEADLINE_MARKERS", "Arm", "ComputeMeter", "TimedSite", "score", "score_models",
           "with_labels", "seed_summary", "seed_differences", "run_arm", "control_predictions", "prepare_cohort"]

#: the marker AUCs whose mean is the headline accuracy (MGMT is reported, but is by design a weak cue)
HEADLINE_MARKERS = ("idh", "codeletion", "grade")
METRICS = ("auc_idh", "auc_codeletion", "auc_mgmt", "auc_grade", "auc_mean", "auc_mean_above_chance", "dice_WT",
           "dice_TC", "dice_ET")
LABELS = {"auc_idh": "AUC IDH", "auc_codeletion": "AUC 1p/19q", "auc_mgmt": "AUC MGMT", "auc_grade": "AUC grade",
          "auc_mean": "mean marker AUC", "auc_mean_above_chance": "mean marker AUC above chance",
          "dice_WT": "Dice WT", "dice_TC": "Dice TC", "dice_ET": "Dice ET"}
#: arms that train nothing: they are scored from per-case summaries or the site alone
CONTROLS = ("probe_summary", "probe_means", "site_only")


@dataclass(frozen=True)
class Arm:
    """One configuration of the benchmark: a strategy with its settings, or a control that trains nothing.

    Attributes:
        name: the arm's name in tables (e.g. ``fedavg``, ``distill_0step``).
        strategy: a strategy name (:func:`gliofed.federated.server.strategies.make_strategy`), or one of
            :data:`CONTROLS`.
        rounds: rounds of federated training (ignored by controls).
        local_epochs: local epochs per round (weight-sharing strategies, local-only, centralized).
        mu: FedProx's proximal weight.
        distill: distillation settings (merged into the benchmark's).
        options: further strategy settings (server optimiser, learning-rate schedule ...), passed to the strategy.
        snapshots: ``(name, round)`` pairs: the model after that round is also scored, as arm ``<name>@<label>``
            (e.g. FedAvg at a second compute budget, from the same run; the run continues by resuming its
            checkpoint, which reproduces an uninterrupted run).
    """

    name: str
    strategy: str
    rounds: int = 1
    local_epochs: int = 1
    mu: float = 0.01
    distill: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    snapshots: tuple = ()

    @property
    def is_control(self) -> bool:
        return self.strategy in CONTROLS

    def as_dict(self) -> dict:
        return asdict(self)


class ComputeMeter:
    """Counts voxels through every :class:`~gliofed.model.MultiTaskUNet` forward pass while active (a global
    forward pre-hook): ``forward_voxels`` without autograd, ``grad_voxels`` under autograd (input or weights
    requiring gradients). :attr:`voxel_passes` = forward + 3 x grad (a backward taken as two forwards).

    >>> with ComputeMeter() as meter:  # doctest: +SKIP
    ...     model(torch.zeros(2, 4, 8, 32, 32))
    >>> meter.forward_voxels  # doctest: +SKIP
    16384
    """

    def __init__(self) -> None:
        self.forward_voxels = 0
        self.grad_voxels = 0
        self._handle = None

    @property
    def voxel_passes(self) -> int:
        return int(self.forward_voxels + 3 * self.grad_voxels)

    def _hook(self, module, args) -> None:
        from gliofed.model import MultiTaskUNet

        if not isinstance(module, MultiTaskUNet) or not args:
            return
        x = args[0]
        voxels = int(x.shape[0]) * int(math.prod(x.shape[2:]))
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters())):
            self.grad_voxels += voxels
        else:
            self.forward_voxels += voxels

    def __enter__(self) -> ComputeMeter:
        self._handle = torch.nn.modules.module.register_module_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


class TimedSite:
    """A :class:`~gliofed.federated.site.Site` whose ``train`` / ``distill`` answers are metered: wall seconds, CPU
    seconds of the process and voxel passes (``meter``); the simulator needs only ``name``, ``handle`` and
    ``raw_bytes``."""

    def __init__(self, site, meter: ComputeMeter | None = None) -> None:
        self.site, self.name, self.meter = site, site.name, meter
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []
        self.voxel_passes: list[int] = []

    def handle(self, task, model, settings):
        wall, cpu = time.perf_counter(), time.process_time()
        before = self.meter.voxel_passes if self.meter is not None else 0
        try:
            return self.site.handle(task, model, settings)
        finally:
            if task in ("train", "distill"):  # not the centralized baseline's size enquiry
                self.seconds.append(time.perf_counter() - wall)
                self.cpu_seconds.append(time.process_time() - cpu)
                self.voxel_passes.append((self.meter.voxel_passes if self.meter is not None else 0) - before)

    def raw_bytes(self) -> int:
        return self.site.raw_bytes()


# ---------------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------------


def _auc(y: np.ndarray, frame: pd.DataFrame, marker: str) -> float:
    known = y >= 0
    y, frame = y[known], frame[known]
    if len(np.unique(y)) < 2:
        return float("nan")
    if marker != "grade":
        return fast_auc(y == 1, frame[f"p_{marker}_1"].to_numpy())
    aucs = [fast_auc(y == k, frame[f"p_grade_{k}"].to_numpy()) for k in range(3) if 0 < (y == k).sum() < len(y)]
    return float(np.mean(aucs)) if aucs else float("nan")


def score(predictions: pd.DataFrame) -> dict[str, float]:
    """Metrics of one model's test predictions (label columns already chosen: truth or manifest): AUC per marker
    (grade: mean one-vs-rest), mean marker AUC (IDH, 1p/19q, grade) and that mean minus 0.5 (above chance: the
    quantity a ratio between two arms is taken of, as a ratio of AUCs near chance is near 1 whatever the arms learn),
    Dice per region (mean over masked cases)."""
    out = {f"auc_{m}": _auc(predictions[m].to_numpy(), predictions, m) for m in MARKERS}
    out["auc_mean"] = float(np.mean([out[f"auc_{m}"] for m in HEADLINE_MARKERS]))
    out["auc_mean_above_chance"] = out["auc_mean"] - 0.5
    masked = predictions[predictions["has_mask"].astype(bool)]
    for region in ("WT", "TC", "ET"):
        column = f"dice_{region}"
        out[column] = float(masked[column].mean()) if len(masked) and column in masked else float("nan")
    return out


def score_models(predictions: pd.DataFrame, rows: np.ndarray | None = None) -> dict[str, float]:
    """Mean over the evaluated models (one for global strategies, one per site for local-only) of :func:`score`,
    on test cases ``rows`` (positions within each model's predictions, sorted by subject; default all)."""
    return _mean_scores(_sorted_models(predictions), rows)


def _sorted_models(predictions: pd.DataFrame) -> list[pd.DataFrame]:
    """Each evaluated model's predictions sorted by subject (the order :func:`score_models`' ``rows`` index)."""
    return [group.sort_values("subject").reset_index(drop=True)
            for _, group in predictions.groupby("model", sort=True)]


def _mean_scores(models: list[pd.DataFrame], rows: np.ndarray | None = None) -> dict[str, float]:
    """:func:`score` of each presorted model frame on ``rows`` (default all), averaged over the models (NaN where
    no model has a finite value)."""
    scores = [score(group if rows is None else group.iloc[rows].reset_index(drop=True)) for group in models]
    return {k: float(np.nanmean([s[k] for s in scores])) if any(np.isfinite(s[k]) for s in scores) else float("nan")
            for k in scores[0]}


def with_labels(predictions: pd.DataFrame, truth: pd.DataFrame | None) -> pd.DataFrame:
    """The predictions with the manifest's labels (``truth=None``) or the cohort's true labels (``truth.csv``)."""
    if truth is None:
        return predictions
    table = truth.set_index("subject_id")
    frame = predictions.copy()
    for marker in MARKERS:
        frame[marker] = table.loc[frame["subject"], f"true_{marker}"].to_numpy()
    return frame


# ---------------------------------------------------------------------------------------------------------------
# Seed-level tables
# ---------------------------------------------------------------------------------------------------------------


def seed_summary(per_seed: pd.DataFrame, metrics: Sequence[str] = METRICS, confidence: float = 0.95) -> pd.DataFrame:
    """Per cohort, label source, arm and metric: the number of seeds, the mean over seeds and its t-interval.

    Args:
        per_seed: one row per (cohort, seed, arm, labels) with one column per metric (a missing ``cohort`` column
            counts as one cohort, ``""``).
        metrics: the metric columns to summarise.
    """
    frame = per_seed if "cohort" in per_seed else per_seed.assign(cohort="")
    rows = []
    for (cohort, labels, arm), group in frame.groupby(["cohort", "labels", "arm"], sort=False):
        for metric in metrics:
            interval = stats.t_interval(group[metric].to_numpy(float), confidence)
            rows.append({"cohort": cohort, "labels": labels, "arm": arm, "metric": metric, "n": interval.n,
                         "mean": interval.mean, "lo": interval.lo, "hi": interval.hi})
    return pd.DataFrame(rows, columns=["cohort", "labels", "arm", "metric", "n", "mean", "lo", "hi"])


def seed_differences(per_seed: pd.DataFrame, pairs: Iterable[tuple[str, str]], metrics: Sequence[str] = METRICS,
                     confidence: float = 0.95, bootstrap: dict | None = None) -> pd.DataFrame:
    """Paired comparisons over seeds of arm ``a`` against arm ``b`` for every pair, metric, cohort and label source:
    the paired t-interval and test (:func:`gliofed.experiments.stats.paired_test`) with its verdict, the ratio of
    means with Fieller's interval and the log-ratio t-interval (:func:`gliofed.experiments.stats.ratio_interval`;
    NaN where a value is not positive), and optionally a two-level bootstrap interval.

    Args:
        per_seed: as for :func:`seed_summary`; seeds are paired by the ``seed`` column.
        pairs: (a, b) arm names; a pair with an arm the table lacks is skipped.
        metrics: the metric columns to compare.
        bootstrap: ``{"predictions": {(cohort, seed, arm): predictions with the chosen labels}, "n_boot",
            "seed", "labels", "jobs"}``: adds ``boot_lo``, ``boot_hi`` (the mean over drawn seeds of ``a - b``, test
            cases redrawn in each; every metric of a pair from the same draws; pairs in ``jobs`` processes).
    """
    frame = per_seed if "cohort" in per_seed else per_seed.assign(cohort="")
    rows = []
    for (cohort, labels), part in frame.groupby(["cohort", "labels"], sort=False):
        arms = set(part["arm"])
        for a, b in pairs:
            if a not in arms or b not in arms:
                continue
            left = part[part["arm"] == a].set_index("seed")
            right = part[part["arm"] == b].set_index("seed")
            seeds = sorted(set(left.index) & set(right.index))
            for metric in metrics:
                x, y = left.loc[seeds, metric].to_numpy(float), right.loc[seeds, metric].to_numpy(float)
                test = stats.paired_test(x, y, confidence)
                fieller = stats.ratio_interval(x, y, confidence, "fieller")
                xs, ys = stats.finite_pairs(x, y)
                positive = len(xs) and (xs > 0).all() and (ys > 0).all()
                log = stats.ratio_interval(x, y, confidence, "log") if positive else None
                row = {"cohort": cohort, "labels": labels, "a": a, "b": b, "metric": metric,
                       **asdict(test), "verdict": stats.difference_verdict(test),
                       "ratio": fieller.ratio, "ratio_lo": fieller.lo, "ratio_hi": fieller.hi,
                       "ratio_bounded": fieller.bounded,
                       "log_ratio": log.ratio if log else float("nan"), "log_ratio_lo": log.lo if log else float("nan"),
                       "log_ratio_hi": log.hi if log else float("nan"),
                       "boot_lo": float("nan"), "boot_hi": float("nan")}
                rows.append(row)
    frame_out = pd.DataFrame(rows)
    if bootstrap is not None and len(frame_out):
        labels = bootstrap.get("labels", "truth")
        tasks = {}
        for (cohort, a, b), _ in frame_out[frame_out["labels"] == labels].groupby(["cohort", "a", "b"],
                                                                                     sort=False):
            scope = (frame["cohort"] == cohort) & (frame["labels"] == labels)
            seeds = sorted(set(frame["seed"][scope & (frame["arm"] == a)])
                           & set(frame["seed"][scope & (frame["arm"] == b)]))
            tasks[(cohort, a, b)] = seeds
        bounds = _bootstrap_differences(bootstrap, tasks, list(metrics))
        for index, row in frame_out.iterrows():
            key = (row["cohort"], row["a"], row["b"])
            if row["labels"] == labels and key in bounds:
                frame_out.loc[index, ["boot_lo", "boot_hi"]] = bounds[key][row["metric"]]
    return frame_out


def _bootstrap_pair(task: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The two-level bootstrap of ``a - b`` (mean over drawn seeds, cases redrawn in each) on every metric at once,
    from the same draws: ``task`` = (list of (a's frame, b's frame) per seed, metrics, n_boot, seed)."""
    frames, metrics, n_boot, seed = task
    models = [(_sorted_models(fa), _sorted_models(fb)) for fa, fb in frames]
    sizes = [fa["subject"].nunique() for fa, _ in frames]

    def statistic(draw) -> np.ndarray:
        values = []
        for index, rows in draw:
            a, b = (_mean_scores(side, rows) for side in models[index])
            values.append([a[metric] - b[metric] for metric in metrics])
        values = np.asarray(values, float)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a metric with no finite value in this draw: NaN
            return np.nanmean(values, axis=0)

    lo, hi, _ = stats.two_level_bootstrap(sizes, statistic, n_boot, seed=seed)
    return lo, hi


def _bootstrap_differences(bootstrap: dict, tasks: dict, metrics: list[str]) -> dict:
    """``{(cohort, a, b): {metric: (lo, hi)}}`` for every pair of ``tasks`` (``{(cohort, a, b): seeds}``), each pair's
    metrics from one set of draws; pairs run in ``bootstrap["jobs"]`` processes (default 1)."""
    predictions, n_boot = bootstrap["predictions"], int(bootstrap.get("n_boot", 200))
    work, keys = [], []
    if n_boot <= 0:
        return {}  # no resamples: no interval (boot_lo, boot_hi stay NaN)
    for (cohort, a, b), seeds in tasks.items():
        usable = [s for s in seeds if (cohort, s, a) in predictions and (cohort, s, b) in predictions]
        if not usable:
            continue
        frames = [(predictions[(cohort, s, a)], predictions[(cohort, s, b)]) for s in usable]
        work.append((frames, metrics, n_boot, bootstrap.get("seed", 0)))
        keys.append((cohort, a, b))
    jobs = int(bootstrap.get("jobs", 1))
    if jobs > 1 and len(work) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs) as pool:
            results = list(pool.map(_bootstrap_pair, work))
    else:
        results = [_bootstrap_pair(task) for task in work]
    return {key: {metric: (float(lo[k]), float(hi[k])) for k, metric in enumerate(metrics)}
            for key, (lo, hi) in zip(keys, results)}


# ---------------------------------------------------------------------------------------------------------------
# Cohorts and runs
# ---------------------------------------------------------------------------------------------------------------


def prepare_cohort(folder: Path, cache: Path, stamp: dict, size: int, **cohort) -> None:
    """Make the synthetic cohort ``cohort`` (keyword arguments of :func:`gliofed.data.synth.make_cohort`) in
    ``folder`` and preprocess it into ``cache`` at ``size``; both are kept when present and made with the same
    ``stamp`` (the settings and the code that made them: ``bench_cohort.json``). A cohort made otherwise is an
    error, never reused.

    Raises:
        ConfigError: ``folder`` holds a cohort made with another stamp, or by hand."""
    from gliofed.data.cache import preprocess
    from gliofed.data.synth import make_cohort
    from gliofed.errors import ConfigError

    text = json.dumps(stamp, sort_keys=True)
    stamp_file = folder / "bench_cohort.json"
    if folder.exists() or cache.exists():
        if not stamp_file.is_file() or stamp_file.read_text() != text:
            raise ConfigError(f"{folder}: made with other settings or other code than this run's (see "
                              f"{stamp_file.name}); use another --out, or delete {folder} and {cache}.")
    else:
        make_cohort(folder, progress=False, verbose=False, **cohort)
        stamp_file.write_text(text)
    preprocess(folder / "manifest.csv", cache, size=size, workers=1, progress=False)


def control_predictions(arm: Arm, train_cache: Path, test_cache: Path, seed: int,
                        summaries: dict | None = None) -> pd.DataFrame:
    """Test predictions of a control arm (``probe_summary``, ``probe_means``, ``site_only``) trained on the
    training split of ``train_cache`` and applied to every case of ``test_cache``. ``summaries``: a dict that
    caches :func:`~gliofed.experiments.controls.case_summaries` by cache path."""
    from gliofed.experiments import controls

    summaries = {} if summaries is None else summaries
    for key, split in ((train_cache, "train"), (test_cache, None)):
        if (key, split) not in summaries:
            summaries[(key, split)] = controls.case_summaries(key, split=split)
    train, test = summaries[(train_cache, "train")], summaries[(test_cache, None)]
    if arm.strategy == "site_only":
        return controls.site_only_predictions(train, test, seed)
    return controls.probe_predictions(train, test, arm.strategy.removeprefix("probe_"), seed)


def run_arm(arm: Arm, cache: Path, test_cache: Path, run_dir: Path, config, distill: dict,
            meter: ComputeMeter | None = None, strategy_factory=None) -> tuple[dict, pd.DataFrame, dict]:
    """Train ``arm`` over the sites of ``cache`` (its training split), then predict every case of ``test_cache``
    with each model the strategy evaluates (no HD95). The simulator also scores the cohort's own test split and
    saves those predictions in ``run_dir`` (``predictions.csv``).

    Args:
        arm: the :class:`Arm` (not a control).
        cache, test_cache: the training cohort's cache and the test cohort's cache.
        run_dir: the run folder (checkpoints, in-cohort predictions).
        config: the :class:`~gliofed.config.TrainConfig` every site trains with (its ``seed`` is the run's).
        distill: the benchmark's distillation settings (the arm's are merged in).
        meter: counts voxel passes (a new one when None).
        strategy_factory: ``f(arm, distill, seed) -> Strategy`` (default: :func:`make_strategy` with the arm's
            epochs, mu and distillation settings).

    A strategy whose model depends on the site (FedBN) scores each test case with its own site's model; the
    averaged-BatchNorm model's predictions are written beside, as ``test_predictions_avgbn.csv`` in ``run_dir``.

    Returns:
        (cost row, test-cohort predictions, ``{label: (cost row, predictions)}`` of the arm's snapshots). The cost
        row: ``rounds``, ``wall_s`` and ``cpu_s`` (training, the whole process), per client-round
        ``bytes_up_per_client_round`` / ``bytes_down_per_client_round``, totals ``bytes_up`` / ``bytes_down``
        (all sites, all rounds), site compute totals ``site_voxel_passes``, ``site_s`` (wall), ``site_cpu_s``,
        per site-round ``site_s_per_round``, the server's ``server_voxel_passes``, ``server_s`` and
        ``server_cpu_s`` (training on the server: distillation's aggregation; centralized's data centre counts as a
        site), and ``test_predict_s``.
    """
    from gliofed.data.dataset import CaseDataset
    from gliofed.federated.server.strategies import make_strategy
    from gliofed.federated.simulate import simulate

    meter = meter or ComputeMeter()
    settings = {**distill, **arm.distill}
    if strategy_factory is None:
        options = dict(arm.options)
        if options.get("lr_schedule", "constant") != "constant":
            options.setdefault("rounds", arm.rounds)  # the schedule runs over the arm's rounds
            config = config.replace(lr_schedule="constant")  # the strategy's schedule replaces the preset's
        strategy = make_strategy(arm.strategy, arm.local_epochs, arm.mu, settings, config.seed, options=options)
    else:
        strategy = strategy_factory(arm, settings, config.seed)
    strategy.evaluate_each_round = False  # score only the final model: the benchmark's cost is training
    own_test = CaseDataset(cache, split="test", modalities=config.modalities, seed=config.seed)
    test = CaseDataset(test_cache, split=None, modalities=config.modalities, seed=config.seed)
    sites = [TimedSite(site, meter) for site in build_sites_for(cache, strategy, config)]
    server = {"s": 0.0, "cpu_s": 0.0, "voxels": 0}
    original = strategy.aggregate

    def timed_aggregate(model, replies, rnd):
        started, cpu, before = time.perf_counter(), time.process_time(), meter.voxel_passes
        try:
            return original(model, replies, rnd)
        finally:
            server["s"] += time.perf_counter() - started
            server["cpu_s"] += time.process_time() - cpu
            server["voxels"] += meter.voxel_passes - before

    strategy.aggregate = timed_aggregate
    stops = sorted({int(r) for _, r in arm.snapshots if 0 < int(r) < arm.rounds}) + [arm.rounds]
    wall = cpu = 0.0
    results = {}
    for index, stop in enumerate(stops):
        started, cpu_started = time.perf_counter(), time.process_time()
        with meter:
            model, history = simulate(strategy, sites, own_test, config, stop, checkpoint_dir=run_dir,
                                      resume=index > 0, progress=False)
        wall += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
        predicted = time.perf_counter()
        predictions = _predict_models(strategy, model, test, config.device)
        results[stop] = (_cost_row(history, sites, server, wall, cpu, time.perf_counter() - predicted), predictions)
        if stop == arm.rounds and strategy.case_site_models(model):  # FedBN: the averaged BatchNorm too, no claim
            from gliofed.engine import predict
            from gliofed.model import build_model

            network = build_model(model.config)
            strategy.load(network, strategy.models_to_evaluate(model)["global"])
            averaged = predict(network, test, device=config.device, progress=False, hd95=False)
            averaged.insert(2, "model", "global")
            averaged.to_csv(Path(run_dir) / "test_predictions_avgbn.csv", index=False)
    snapshots = {label: results[int(r)] for label, r in arm.snapshots if int(r) in results and int(r) < arm.rounds}
    cost, predictions = results[arm.rounds]
    return cost, predictions, snapshots


def build_sites_for(cache: Path, strategy, config) -> list:
    """The sites a strategy asks for over ``cache`` (:func:`gliofed.experiments.comparison.build_sites`)."""
    from gliofed.experiments.comparison import build_sites

    return build_sites(cache, strategy, config)


def _predict_models(strategy, model, test, device) -> pd.DataFrame:
    """Test predictions of every model the strategy evaluates; where its model depends on the site (FedBN), each
    case scored by its own site's model (:func:`gliofed.federated.simulate.routed_predictions`)."""
    from gliofed.engine import predict
    from gliofed.federated.server.strategies import Strategy
    from gliofed.federated.simulate import routed_predictions
    from gliofed.model import build_model

    routed = routed_predictions(strategy, model, test, device, hd95=False)
    if routed is not None:
        routed.insert(2, "model", "global")
        return routed
    frames = []
    for name, arrays in strategy.models_to_evaluate(model).items():
        network = build_model(model.config)
        Strategy.load(network, arrays)
        frame = predict(network, test, device=device, progress=False, hd95=False)
        frame.insert(2, "model", name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _cost_row(history, sites: list[TimedSite], server: dict, wall: float, cpu: float, predict_s: float) -> dict:
    up = [sum(r["bytes_up"].values()) for r in history.rounds]
    down = [sum(r["bytes_down"].values()) for r in history.rounds]
    clients = [max(len(r["bytes_up"]), 1) for r in history.rounds]
    site_seconds = [t for s in sites for t in s.seconds]
    return {"rounds": len(history.rounds), "wall_s": wall, "cpu_s": cpu,
            "bytes_up_per_client_round": float(np.mean([u / c for u, c in zip(up, clients)])),
            "bytes_down_per_client_round": float(np.mean([d / c for d, c in zip(down, clients)])),
            "bytes_up": float(sum(up)), "bytes_down": float(sum(down)),
            "site_voxel_passes": int(sum(v for s in sites for v in s.voxel_passes)),
            "site_s": float(sum(site_seconds)), "site_cpu_s": float(sum(t for s in sites for t in s.cpu_seconds)),
            "site_s_per_round": float(np.mean(site_seconds)) if site_seconds else float("nan"),
            "server_voxel_passes": int(server["voxels"]), "server_s": float(server["s"]),
            "server_cpu_s": float(server["cpu_s"]), "test_predict_s": predict_s}
