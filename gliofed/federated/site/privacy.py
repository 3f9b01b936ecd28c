"""Privacy audit of what left a site: is any uploaded synthetic volume a near-copy of a real patient?

For every uploaded synthetic volume: its highest Pearson correlation with any of the site's real volumes
(nearest neighbour), compared with the real-to-real distribution (each real volume's highest correlation
with another real volume of the same site). A synthetic volume closer to a real patient than real
patients typically are to each other (above the real-to-real ``quantile``, default the 95th percentile)
is flagged; the threshold never drops below ``min_corr`` (default 0.5), because with few real cases the
mean-centred real-to-real correlations are biased low (n = 3 residuals sum to zero).

Comparison space: the payload's own low-resolution grid (real volumes are area-downsampled to it, as an
attacker holding the payload would), after subtracting the site's mean real volume, so that the anatomy
all patients share does not dominate the correlation and what is compared is patient-specific.

The audit needs the real volumes, so it runs inside the site (:meth:`Site.privacy_audit`); only its
report leaves.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

__all__ = ["volume_vectors", "nearest_neighbour_audit", "payload_audit", "outgoing_decision", "PART_RULES", "DP_RULE",
           "DP_PARTS"]


def volume_vectors(images: torch.Tensor, grid: tuple[int, int, int]) -> np.ndarray:
    """(N, C, D, H, W) volumes -> (N, C * prod(grid)) vectors, area-resampled to ``grid``."""
    small = F.interpolate(images.float(), size=tuple(grid), mode="area")
    return small.reshape(small.shape[0], -1).numpy()


def _correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = (a - a.mean(1, keepdims=True)) / (a.std(1, keepdims=True) + 1e-8)
    b = (b - b.mean(1, keepdims=True)) / (b.std(1, keepdims=True) + 1e-8)
    return a @ b.T / a.shape[1]


def nearest_neighbour_audit(synthetic: np.ndarray, real: np.ndarray, real_ids: list[str], site: str,
                            quantile: float = 0.95, min_corr: float = 0.5) -> pd.DataFrame:
    """One row per synthetic volume: ``site``, ``synthetic``, ``nn_corr`` (highest correlation with a real
    volume), ``nn_subject``, ``real_to_real_q`` (the real-to-real quantile), ``threshold``
    (max(real_to_real_q, min_corr)), ``percentile`` (where nn_corr falls in the real-to-real distribution)
    and ``flagged`` (nn_corr >= threshold)."""
    mean = real.mean(0, keepdims=True)  # shared anatomy out: compare what is patient-specific
    synthetic, real = synthetic - mean, real - mean
    cross = _correlations(synthetic, real)
    if len(real) > 1:
        within = _correlations(real, real)
        np.fill_diagonal(within, -np.inf)
        real_nn = within.max(1)
    else:
        real_nn = np.array([1.0])
    real_q = float(np.quantile(real_nn, quantile))
    threshold = max(real_q, min_corr)
    rows = []
    for i in range(len(synthetic)):
        j = int(cross[i].argmax())
        value = float(cross[i, j])
        rows.append({"site": site, "synthetic": i, "nn_corr": value, "nn_subject": real_ids[j],
                     "real_to_real_q": real_q, "threshold": threshold,
                     "percentile": float((real_nn < value).mean() * 100),
                     "flagged": bool(value >= threshold)})
    return pd.DataFrame(rows)


#: every payload part the outgoing audit judges, with its pass/fail rule (see :func:`payload_audit`)
PART_RULES: dict[str, str] = {
    "synthetic_volume": "nearest-neighbour correlation below the threshold (per volume; a failing volume is withheld)",
    "template": "the mean background of the volumes is no nearer any patient than the volumes' threshold",
    "label_vectors": "every known marker value is shared by at least min_group of the site's cases",
    "soft_labels": "every non-empty soft-label row pools at least min_group cases",
    "label_counts": "every class count is 0 or at least min_group",
    "bn_statistics": "averaged over whole blocks of at least min_group cases (the site has at least min_group)",
    "weights": "every value finite",
    "dp": "epsilon spent within the policy's maximum (when the request used DP)",
}
#: the rule of a summary released through the Gaussian mechanism (its bound is epsilon, not a group size)
DP_RULE = "released through the Gaussian mechanism with per-case clipping (epsilon accounted)"
#: the parts a Gaussian release covers (their k-anonymity rules do not apply: noised counts may be small)
DP_PARTS = ("label_vectors", "soft_labels", "label_counts", "bn_statistics")


def _row(part: str, item, value: float, limit: float, passed: bool) -> dict:
    return {"part": part, "item": item, "rule": PART_RULES[part], "value": float(value), "limit": float(limit),
            "passed": bool(passed)}


def payload_audit(arrays: dict[str, np.ndarray], kind: str, real: np.ndarray | None, real_labels: np.ndarray | None,
                  site: str, min_group: int, quantile: float = 0.95, min_corr: float = 0.5,
                  epsilon: tuple[float, float] | None = None, dp_released: bool = False) -> pd.DataFrame:
    """The outgoing audit of every part of a payload, one row per part (per volume for synthetic volumes):
    ``part``, ``item``, ``rule``, ``value``, ``limit``, ``passed``.

    Args:
        arrays: the payload's arrays.
        kind: ``"distilled_set"`` or ``"weights_update"``.
        real: (N, F) the site's real volumes as :func:`volume_vectors` on the payload's grid (distilled sets).
        real_labels: (N, 4) the site's real label vectors, -1 unknown (distilled sets).
        site: the site's name.
        min_group: the site's ``SitePolicy.min_group``.
        quantile, min_corr: as in :func:`nearest_neighbour_audit`.
        epsilon: (epsilon spent after this reply, the policy's maximum), or None without DP.
        dp_released: the summaries went through the Gaussian mechanism: the parts of :data:`DP_PARTS` pass by
            that rule (their counts are noised, so group sizes no longer bound them; epsilon does).
    """
    rows: list[dict] = []
    if kind == "distilled_set":
        images = arrays["syn_images"].astype(np.float32)
        report = nearest_neighbour_audit(images.reshape(len(images), -1), real, [str(i) for i in range(len(real))],
                                         site, quantile, min_corr)
        threshold = float(report["threshold"].iloc[0])
        rows += [_row("synthetic_volume", int(r.synthetic), r.nn_corr, r.threshold, not r.flagged)
                 for r in report.itertuples()]
        background = np.broadcast_to((arrays["syn_masks"] == 0)[:, None], images.shape)
        counts = background.sum(0)
        if counts.any():
            mean_background = np.where(counts > 0, np.where(background, images, 0).sum(0) / np.maximum(counts, 1), 0)
            # only where every volume has background: elsewhere the lesions, not the template, are compared
            inside = (counts == len(images)).reshape(-1)
            template = nearest_neighbour_audit(mean_background.reshape(1, -1)[:, inside], real[:, inside],
                                               ["template"] * len(real), site, quantile, min_corr)
            rows.append(_row("template", 0, template["nn_corr"].iloc[0], threshold,
                             template["nn_corr"].iloc[0] < threshold))
        labels = np.asarray(real_labels, np.int64)
        for i, vector in enumerate(np.asarray(arrays["syn_labels"], np.int64)):
            shared = [int((labels[:, j] == v).sum()) for j, v in enumerate(vector) if v >= 0]
            fewest = min(shared) if shared else min_group
            rows.append(_row("label_vectors", i, fewest, min_group, fewest >= min_group))
        for name in sorted(k for k in arrays if k.startswith("counts:")):
            marker = name.split(":", 1)[1]
            class_counts = np.asarray(arrays[name])
            table = np.asarray(arrays.get(f"soft:{marker}", np.zeros((len(class_counts), 1))))
            small = class_counts[(class_counts > 0) & (class_counts < min_group)]
            rows.append(_row("label_counts", marker, small.min() if small.size else min_group, min_group,
                             not small.size))
            filled = np.abs(table).sum(1) > 0
            pooled = class_counts[filled]
            rows.append(_row("soft_labels", marker, pooled.min() if pooled.size else min_group, min_group,
                             bool((pooled >= min_group).all())))
        if any(k.startswith("bn:") for k in arrays):
            rows.append(_row("bn_statistics", "all layers", len(real), min_group, len(real) >= min_group))
    else:
        finite = all(np.isfinite(np.asarray(a, np.float64)).all() for a in arrays.values()
                     if np.asarray(a).dtype.kind in "fc")
        rows.append(_row("weights", "all", float(finite), 1.0, finite))
    if epsilon is not None:
        rows.append(_row("dp", "epsilon", epsilon[0], epsilon[1], epsilon[0] <= epsilon[1]))
    if dp_released:
        rows = [{**row, "rule": DP_RULE, "passed": True} if row["part"] in DP_PARTS else row for row in rows]
    frame = pd.DataFrame(rows)
    frame.insert(0, "site", site)
    return frame


def outgoing_decision(site: str, kind: str, report: pd.DataFrame) -> tuple[np.ndarray, str | None, str | None]:
    """What leaves, given the outgoing audit (:func:`payload_audit`): (indices of the synthetic volumes sent, the
    one sentence saying which were withheld or None, the one-sentence refusal or None).

    A synthetic volume that fails its rule is withheld; any other part that fails, or every volume failing, stops
    the whole reply (the refusal)."""
    volumes = report[report["part"] == "synthetic_volume"]
    failed = report[~report["passed"] & (report["part"] != "synthetic_volume")]
    if len(failed):
        first = failed.iloc[0]
        return np.zeros(0, np.int64), None, (
            f"site {site} refuses to send its {kind.replace('_', ' ')}: the privacy audit fails its "
            f"{first['part'].replace('_', ' ')} ({first['rule']}; value {first['value']:.3g}, limit "
            f"{first['limit']:.3g}).")
    flagged = volumes[~volumes["passed"]]
    everything = np.arange(len(volumes))
    if not len(flagged):
        return everything, None, None
    worst = flagged.loc[flagged["value"].idxmax()]
    closeness = (f"as near-copies of patients (nearest-neighbour correlation up to {worst['value']:.3f} >= "
                 f"threshold {worst['limit']:.3f})")
    if len(flagged) == len(volumes):
        return np.zeros(0, np.int64), None, (
            f"site {site} refuses to send its distilled set: the privacy audit flags {len(flagged)} of "
            f"{len(volumes)} synthetic volume(s) {closeness}.")
    keep = np.setdiff1d(everything, flagged["item"].astype(int).to_numpy())
    return keep, (f"site {site} withholds {len(flagged)} of {len(volumes)} synthetic volume(s) that the privacy "
                  f"audit flags {closeness}; they are not uploaded."), None
