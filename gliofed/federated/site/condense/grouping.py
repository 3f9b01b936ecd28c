"""Privacy grouping: which real cases any released summary may pool.

Nothing a distilled set carries summarises fewer than ``min_group`` real patients (the site operator's
``SitePolicy.min_group``; the server cannot lower it), and no two things it carries, in one round or across rounds
and requests, are averages over case sets that differ by fewer than ``min_group`` patients:

- every average over "the real cases" (BatchNorm statistics, matching targets) is over a union of fixed, disjoint
  **blocks** of at least ``min_group`` cases (:func:`real_blocks`, :func:`real_subset`), drawn from the site's own
  fixed order: the server's seed only picks which blocks, its ``real_batch`` only how many;
- image summaries come from fixed, disjoint **groups** of at least ``min_group`` cases sharing labels
  (:func:`summary_groups`), and a label value goes out only where at least ``min_group`` cases of a group share it
  (:func:`group_labels`); synthetic label vectors are drawn from those (:func:`joint_labels`).

This bounds what differencing can single out; it is not differential privacy (a server that crafts the model still
learns block-level averages of features it chooses).
"""

from __future__ import annotations

import numpy as np

from gliofed.vocab import MARKER_CLASSES, MARKERS

__all__ = ["real_blocks", "real_subset", "summary_groups", "group_for", "group_labels", "joint_labels",
           "RELAX_ORDER"]


#: the site's fixed order of its cases for :func:`real_blocks` (a constant: nothing a request sends changes it)
_BLOCK_ORDER_SEED = 20_231_118


def real_blocks(n_cases: int, min_group: int) -> list[np.ndarray]:
    """The site's cases ``0 .. n_cases - 1`` split into fixed, disjoint blocks of at least ``min_group`` (sizes
    differ by at most one), in an order fixed by the site alone: every average over real cases is over whole
    blocks, so that no two such averages, whatever seeds and sizes a server requests, differ by fewer than
    ``min_group`` patients. One block of all cases when there are fewer than ``2 * min_group``."""
    order = np.random.default_rng(_BLOCK_ORDER_SEED).permutation(int(n_cases))
    n_blocks = max(1, int(n_cases) // max(1, int(min_group)))
    return [np.sort(block) for block in np.array_split(order, n_blocks)]


def real_subset(n_cases: int, real_batch: int, min_group: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of the real cases one condensation averages over: whole :func:`real_blocks`, drawn in the
    order ``rng`` (the request's seed) gives until at least ``min(real_batch, n_cases)`` cases are in."""
    blocks = real_blocks(n_cases, min_group)
    want, chosen, total = min(int(real_batch), int(n_cases)), [], 0
    for b in rng.permutation(len(blocks)):
        if total >= want:
            break
        chosen.append(blocks[int(b)])
        total += len(blocks[int(b)])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


#: markers left out of the grouping key, weakest image cue first, while fewer than ``min_group`` cases share a key
RELAX_ORDER: tuple[str, ...] = ("mgmt", "codeletion", "grade", "idh")


#: markers by image cue, strongest first: how a synthetic volume's label vector picks its group
_CUE_ORDER: tuple[str, ...] = tuple(reversed(RELAX_ORDER))


def summary_groups(cases: list[dict], min_group: int) -> list[list[dict]]:
    """The site's masked cases split into disjoint groups of at least ``min_group`` that share labels, the only
    sets whose pooled summaries a synthetic volume may start from.

    Cases with the same whole label vector (an unknown marker, -1, is a value of its own) form a group when there
    are at least ``min_group`` of them; the rest are grouped again with MGMT left out of the key, then 1p/19q,
    grade and IDH (:data:`RELAX_ORDER`); any last few join the group their labels agree with most. The groups
    depend only on the cases given (the condensation passes all of the site's masked cases), never on a server's
    seed or ``real_batch``, and are disjoint: no two released averages can be subtracted to single a patient
    out. Empty when the site has fewer than ``min_group`` masked cases.
    """
    min_group = max(1, int(min_group))
    if len(cases) < min_group:
        return []
    groups: list[list[dict]] = []
    left, kept = list(cases), list(MARKERS)
    for dropped in (None, *RELAX_ORDER):
        if dropped is not None:
            kept.remove(dropped)
        columns = [MARKERS.index(m) for m in kept]
        buckets: dict[tuple, list[dict]] = {}
        for case in left:
            buckets.setdefault(tuple(int(v) for v in case["labels"][columns]), []).append(case)
        left = []
        for members in buckets.values():
            if len(members) >= min_group:
                groups.append(members)
            else:
                left += members
    for case in left:  # fewer than min_group left over: each joins the group it agrees with most
        group_for(groups, case["labels"]).append(case)
    return groups


def group_for(groups: list[list[dict]], labels: np.ndarray) -> list[dict]:
    """The group whose cases agree most with ``labels``: the largest share agreeing on IDH, then grade, 1p/19q,
    MGMT (an unknown marker in ``labels`` agrees with anything), then the larger group; ``[]`` without groups."""
    labels = np.asarray(labels, np.int64)

    def score(group: list[dict]) -> tuple:
        shares = []
        for marker in _CUE_ORDER:
            j = MARKERS.index(marker)
            shares.append(1.0 if labels[j] < 0 else float(np.mean([int(c["labels"][j]) == labels[j] for c in group])))
        return (*shares, len(group))

    return max(groups, key=score) if groups else []


def group_labels(labels: np.ndarray, min_group: int) -> np.ndarray:
    """(N, 4) the label vector each real case may be sent as: per marker, its own value where at least
    ``min_group`` cases of its :func:`summary_groups` group (over all ``labels``) have that value, else -1
    (unknown). No value is made up (a case is never sent with a label it does not have), and no value fewer than
    ``min_group`` cases of a fixed group share is sent; so a rare combination goes out with its rare markers
    unknown, indistinguishable from an unrecorded one. With ``min_group=1`` every case keeps its own vector;
    with fewer cases than ``min_group`` every vector is unknown."""
    labels = np.asarray(labels, np.int64)
    out = np.full_like(labels, -1)
    least = max(1, int(min_group))
    for group in summary_groups([{"labels": row, "index": i} for i, row in enumerate(labels)], min_group):
        members = np.array([case["index"] for case in group])
        for j in range(labels.shape[1]):
            column = labels[members, j]
            shared = (column >= 0) & (np.array([(column == v).sum() for v in column]) >= least)
            out[members[shared], j] = column[shared]
    return out


def joint_labels(labels: np.ndarray, n: int, rng: np.random.Generator, cover: bool = False) -> np.ndarray:
    """``n`` label vectors drawn from a site's real ones, so that synthetic labels follow its joint distribution.

    Each returned row is one real case's whole label vector, unknown markers included (-1), drawn uniformly
    without replacement (in further passes over all cases once every case is used). With ``cover=True`` the
    draw first takes, for every (marker, class) the site has seen, rarest first, one case of that class if none
    drawn so far has it: every class appears when ``n`` allows, at the price of over-representing rare classes
    (which, pooled on the server, confounds a marker with the sites where its rare class was drawn; off by
    default).

    Args:
        labels: (N, 4) real label vectors in :data:`MARKERS` order, -1 unknown.
        n: number of vectors to draw.
        rng: random generator.
        cover: draw every seen class first.

    Returns:
        (n, 4) int64 label vectors.
    """
    labels = np.asarray(labels, np.int64)
    chosen: list[int] = []
    if cover:
        pairs = [(j, c, int((labels[:, j] == c).sum())) for j, marker in enumerate(MARKERS)
                 for c in range(len(MARKER_CLASSES[marker])) if (labels[:, j] == c).any()]
        for j, c, _ in sorted(pairs, key=lambda pair: pair[2]):
            if len(chosen) >= n:
                break
            if not any(labels[i, j] == c for i in chosen):
                candidates = np.flatnonzero(labels[:, j] == c)
                unused = np.setdiff1d(candidates, chosen)
                chosen.append(int(rng.choice(unused if len(unused) else candidates)))
    passes = [i for i in rng.permutation(len(labels)) if i not in chosen]  # the rest of the first pass
    while len(chosen) + len(passes) < n:  # then further passes over every case
        passes += list(rng.permutation(len(labels)))
    chosen += [int(i) for i in passes[: n - len(chosen)]]
    return labels[np.array(chosen, np.int64)]
