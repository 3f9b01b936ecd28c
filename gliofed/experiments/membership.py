"""Membership inference: can an attacker tell whether a patient's data was behind a model or a payload?

The design follows Carlini et al. (IEEE S&P 2022, "Membership inference attacks from first principles", LiRA):

1. **Members and non-members** (:func:`membership_matrix`): ``n_models`` runs (trained models, condensations,
   local updates) over a pool of candidate patients; each run takes a random half of the pool, and every candidate
   is in exactly half of the runs, so each one has as many runs with it as without it.
2. **A statistic per (run, candidate)**: what the attacker can compute from the released object and the candidate's
   own record, e.g. the logit-scaled confidence of the model on the candidate's label (:func:`logit_confidence`),
   the drop of its loss under an update, or the similarity of a payload part to its record.
3. **The attack**, leave-one-run-out: each run in turn is the target, the others are the attacker's shadow runs.
   - ``"lira"`` (online LiRA): a Gaussian fit per candidate to its statistics in the shadow runs with it (IN) and
     without it (OUT); the score is the log-likelihood ratio IN/OUT of the target's statistic. Needs shadow runs
     with the candidate in: the attacker can rerun training or condensation with it.
   - ``"offline"`` (offline LiRA): OUT runs only; the score is how far above its OUT distribution the target's
     statistic lies (one-sided). For when the attacker can only run shadows without the candidate.
   - ``"threshold"`` (the calibrated global threshold, Yeom et al. 2018 / loss attack): the statistic itself,
     the same threshold for every candidate; its false-positive rate is set on shadow non-members
     (:func:`calibrated_tpr`). The cheapest: no per-candidate shadows at all.
   Variances are pooled over candidates (``fixed_variance``, Carlini et al.'s choice for few shadows).
4. **Metrics** (:func:`attack_metrics`): the true-positive rate at 1 % and 0.1 % false-positive rate (the
   low-FPR regime that matters for a patient) and the AUC; chance is TPR = FPR. A run's pairs are pooled;
   :func:`summarise` gives the mean over seeds with a hierarchical bootstrap interval (seeds, then target runs
   within a seed). With fewer than 1,000 non-member pairs the 0.1 % point equals "above every non-member": the
   count of non-members is reported beside it.

Nothing here knows what a run is: :func:`run_attack` takes the statistic matrix and the membership matrix. The
benchmarks build them (``benchmarks/bench_membership.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats
from sklearn.metrics import roc_auc_score, roc_curve

from gliofed.errors import ConfigError

__all__ = ["ATTACKS", "membership_matrix", "logit_confidence", "attack_scores", "run_attack", "tpr_at_fpr",
           "attack_metrics", "calibrated_tpr", "summarise", "score_frame", "FPRS"]

#: the attacks :func:`attack_scores` knows (see the module docstring)
ATTACKS = ("lira", "offline", "threshold")
#: false-positive rates the metrics report (1 % and 0.1 %)
FPRS = (0.01, 0.001)


def membership_matrix(n_candidates: int, n_models: int, seed: int = 0) -> np.ndarray:
    """(n_models, n_candidates) bool: which candidates each run takes. Every candidate is in exactly
    ``n_models // 2`` runs (drawn independently per candidate), so each has as many runs with it as without it.

    Args:
        n_candidates: size of the candidate pool (>= 2).
        n_models: number of runs (even, >= 2; at least 4 for the online attack to have an IN and an OUT shadow).
        seed: seeds the draw.
    """
    if n_models < 2 or n_models % 2:
        raise ConfigError(f"n_models must be an even number >= 2, not {n_models!r}.")
    if n_candidates < 2:
        raise ConfigError(f"the candidate pool needs at least 2 patients, not {n_candidates!r}.")
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((n_models, n_candidates)), axis=0)  # a random permutation of runs per candidate
    return order < n_models // 2


def logit_confidence(probabilities: np.ndarray, labels: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``log p_y - log(1 - p_y)``: the logit-scaled confidence on the true label (Carlini et al.'s statistic; close
    to Gaussian across runs). Rows with an unknown label (< 0) are NaN.

    Args:
        probabilities: (..., K) class probabilities.
        labels: (...) true class, -1 unknown.
    """
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels)
    known = labels >= 0
    picked = np.take_along_axis(probabilities, np.where(known, labels, 0)[..., None], axis=-1)[..., 0]
    picked = np.clip(picked, eps, 1 - eps)
    return np.where(known, np.log(picked) - np.log1p(-picked), np.nan)


def _pooled_std(values: np.ndarray, mask: np.ndarray) -> float:
    centred = np.where(mask, values - _masked_mean(values, mask), np.nan)
    return float(np.nanstd(centred)) + 1e-12 if np.isfinite(centred).any() else 1.0


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    count = mask.sum(0)
    total = np.where(mask, values, 0.0).sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _masked_std(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    mean = _masked_mean(values, mask)
    count = mask.sum(0)
    squares = np.where(mask, (values - mean) ** 2, 0.0).sum(0)
    return np.sqrt(squares / np.maximum(count - 1, 1)) + 1e-12


def attack_scores(target: np.ndarray, shadow: np.ndarray, shadow_in: np.ndarray, attack: str = "lira",
                  fixed_variance: bool = True) -> np.ndarray:
    """Membership scores of one target run's candidates (higher = more likely a member).

    Args:
        target: (n_candidates,) the statistic of each candidate on the target run (NaN: no statistic).
        shadow: (n_shadows, n_candidates) the same statistic on the shadow runs.
        shadow_in: (n_shadows, n_candidates) bool, which candidates each shadow run took.
        attack: ``"lira"``, ``"offline"`` or ``"threshold"`` (module docstring).
        fixed_variance: one variance pooled over candidates (default True) instead of one per candidate.

    Returns:
        (n_candidates,) scores; NaN where the target statistic is NaN.
    """
    if attack not in ATTACKS:
        raise ConfigError(f"attack {attack!r} is not one of {', '.join(ATTACKS)}.")
    target = np.asarray(target, np.float64)
    shadow = np.asarray(shadow, np.float64)
    shadow_in = np.asarray(shadow_in, bool)
    if attack == "threshold":
        return target.copy()
    valid = np.isfinite(shadow)
    out_mask, in_mask = valid & ~shadow_in, valid & shadow_in
    mu_out = _masked_mean(shadow, out_mask)
    sd_out = np.full_like(mu_out, _pooled_std(shadow, out_mask)) if fixed_variance else _masked_std(shadow, out_mask)
    if attack == "offline":
        return scipy_stats.norm.logcdf(target, mu_out, sd_out) - scipy_stats.norm.logsf(target, mu_out, sd_out)
    mu_in = _masked_mean(shadow, in_mask)
    sd_in = np.full_like(mu_in, _pooled_std(shadow, in_mask)) if fixed_variance else _masked_std(shadow, in_mask)
    return scipy_stats.norm.logpdf(target, mu_in, sd_in) - scipy_stats.norm.logpdf(target, mu_out, sd_out)


def run_attack(statistic: np.ndarray, membership: np.ndarray, attack: str = "lira",
               fixed_variance: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-run-out: each run in turn is the target and the others its shadows.

    Args:
        statistic: (n_models, n_candidates) the statistic of every candidate on every run.
        membership: (n_models, n_candidates) bool (:func:`membership_matrix`).
        attack, fixed_variance: as in :func:`attack_scores`.

    Returns:
        (scores, is_member), both (n_models, n_candidates): row i scores run i as the target.
    """
    statistic = np.asarray(statistic, np.float64)
    membership = np.asarray(membership, bool)
    if statistic.shape != membership.shape or statistic.ndim != 2 or len(statistic) < 2:
        raise ConfigError(f"statistic {statistic.shape} and membership {membership.shape} must be the same "
                          "(n_models >= 2, n_candidates) shape.")
    scores = np.empty_like(statistic)
    for i in range(len(statistic)):
        others = np.arange(len(statistic)) != i
        scores[i] = attack_scores(statistic[i], statistic[others], membership[others], attack, fixed_variance)
    return scores, membership.copy()


def tpr_at_fpr(scores: np.ndarray, is_member: np.ndarray, fpr: float) -> float:
    """The highest true-positive rate at a false-positive rate of at most ``fpr`` (on the ROC curve of
    ``scores``); NaN without both members and non-members."""
    scores, is_member = _finite(scores, is_member)
    if is_member.all() or not is_member.any():
        return float("nan")
    false_pos, true_pos, _ = roc_curve(is_member, scores)
    return float(true_pos[false_pos <= fpr].max())


def _finite(scores, is_member):
    scores = np.asarray(scores, np.float64).ravel()
    is_member = np.asarray(is_member, bool).ravel()
    keep = np.isfinite(scores)
    return scores[keep], is_member[keep]


def attack_metrics(scores: np.ndarray, is_member: np.ndarray, fprs: Sequence[float] = FPRS) -> dict:
    """``auc``, ``tpr@<fpr>`` for every ``fprs`` entry (e.g. ``tpr@0.01``), ``n_members``, ``n_nonmembers`` of
    pooled scores (NaN scores are left out)."""
    scores, is_member = _finite(scores, is_member)
    both = is_member.any() and not is_member.all()
    row = {"auc": float(roc_auc_score(is_member, scores)) if both else float("nan")}
    if both:  # one ROC curve for every operating point
        false_pos, true_pos, _ = roc_curve(is_member, scores)
    for fpr in fprs:
        row[f"tpr@{fpr:g}"] = float(true_pos[false_pos <= fpr].max()) if both else float("nan")
    row.update(n_members=int(is_member.sum()), n_nonmembers=int((~is_member).sum()))
    return row


def calibrated_tpr(target: np.ndarray, target_in: np.ndarray, shadow: np.ndarray, shadow_in: np.ndarray,
                   fpr: float = 0.01) -> tuple[float, float]:
    """The global threshold attack as an attacker runs it: the threshold is the ``1 - fpr`` quantile of the
    statistic over shadow non-members; returns its (TPR, realised FPR) on the target run."""
    shadow = np.asarray(shadow, np.float64)
    out = shadow[~np.asarray(shadow_in, bool) & np.isfinite(shadow)]
    threshold = float(np.quantile(out, 1 - fpr)) if out.size else float("inf")
    target, target_in = _finite(target, target_in)
    flagged = target > threshold
    tpr = float(flagged[target_in].mean()) if target_in.any() else float("nan")
    realised = float(flagged[~target_in].mean()) if (~target_in).any() else float("nan")
    return tpr, realised


def summarise(scores: pd.DataFrame, by: Sequence[str] = (), n_boot: int = 1000, seed: int = 0,
              fprs: Sequence[float] = FPRS) -> pd.DataFrame:
    """Attack metrics per group, mean over seeds, with 95 % intervals from a hierarchical bootstrap.

    Args:
        scores: one row per (seed, target run, candidate): columns ``seed``, ``run`` (the target run),
            ``score``, ``member`` (bool) and the ``by`` columns.
        by: grouping columns (e.g. ``["strategy", "part", "attack"]``).
        n_boot: bootstrap resamples: seeds with replacement, then target runs with replacement within each seed;
            the metric of each resample is that of its pooled pairs.
        seed: seeds the bootstrap.
        fprs: false-positive rates (default 1 % and 0.1 %).

    Returns:
        one row per group: for each metric ``m`` (``auc``, ``tpr@0.01``, ``tpr@0.001``) its mean over seeds ``m``,
        the interval ``m_lo``, ``m_hi``, and the per-seed values ``m_seeds`` (``;``-joined); ``seeds``,
        ``runs`` (target runs per seed), ``n_members``, ``n_nonmembers`` (pairs per seed).
    """
    rng = np.random.default_rng(seed)
    metrics = ["auc"] + [f"tpr@{fpr:g}" for fpr in fprs]
    rows = []
    groups = scores.groupby(list(by), sort=False) if by else [((), scores)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        per_seed = {s: frame for s, frame in group.groupby("seed", sort=True)}
        seed_values = {s: attack_metrics(f["score"], f["member"], fprs) for s, f in per_seed.items()}
        row = dict(zip(by, key))
        for metric in metrics:
            values = [seed_values[s][metric] for s in per_seed]
            row[metric] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
            row[f"{metric}_seeds"] = ";".join(f"{v:.3f}" for v in values)
        draws = {metric: [] for metric in metrics}
        seeds = list(per_seed)
        by_target = {s: [(t["score"].to_numpy(float), t["member"].to_numpy(bool))
                         for _, t in f.groupby("run", sort=True)] for s, f in per_seed.items()}
        for _ in range(n_boot):
            values = {metric: [] for metric in metrics}
            for s in rng.choice(len(seeds), len(seeds)):
                targets = by_target[seeds[s]]
                picked = [targets[t] for t in rng.choice(len(targets), len(targets))]
                picked_scores = np.concatenate([score for score, _ in picked])
                picked_members = np.concatenate([member for _, member in picked])
                for metric, value in attack_metrics(picked_scores, picked_members, fprs).items():
                    if metric in values:
                        values[metric].append(value)
            for metric in metrics:
                draws[metric].append(np.nanmean(values[metric]) if np.isfinite(values[metric]).any() else np.nan)
        for metric in metrics:
            finite = np.asarray(draws[metric], float)
            finite = finite[np.isfinite(finite)]
            row[f"{metric}_lo"] = float(np.quantile(finite, 0.025)) if finite.size else float("nan")
            row[f"{metric}_hi"] = float(np.quantile(finite, 0.975)) if finite.size else float("nan")
        first = next(iter(per_seed.values()))
        row.update(seeds=len(per_seed), runs=int(first["run"].nunique()),
                   n_members=int(first["member"].sum()), n_nonmembers=int((~first["member"].astype(bool)).sum()))
        rows.append(row)
    return pd.DataFrame(rows)


def score_frame(scores: np.ndarray, is_member: np.ndarray, seed: int, candidates: Sequence[str] | None = None,
                **labels) -> pd.DataFrame:
    """Long table of :func:`run_attack`'s output for :func:`summarise`: one row per (target run, candidate) with
    ``seed``, ``run`` (the target run), ``candidate``, ``score``, ``member`` and the constant ``labels`` columns
    (which may not be named ``seed``, ``run``, ``candidate``, ``score`` or ``member``)."""
    n_models, n_candidates = np.shape(scores)
    names = list(candidates) if candidates is not None else [str(j) for j in range(n_candidates)]
    clash = sorted(set(labels) & {"seed", "run", "candidate", "score", "member"})
    if clash:
        raise ConfigError(f"score_frame labels may not be named {', '.join(clash)}.")
    frame = pd.DataFrame({"seed": seed, "run": np.repeat(np.arange(n_models), n_candidates),
                          "candidate": np.tile(names, n_models), "score": np.asarray(scores, float).ravel(),
                          "member": np.asarray(is_member, bool).ravel()})
    for name, value in labels.items():
        frame[name] = value
    return frame
