"""Site-side half of distillation federation: the condensation of one site's real cases into a ``distilled_set``.

Runs inside a :class:`~gliofed.federated.site.Site` on its real cases. What it returns (:func:`condense`) is a
``distilled_set`` payload — synthetic volumes stored at low resolution, their label vectors and masks, the soft-label
tables, label counts and the BatchNorm statistics of the site's real data — and nothing else. Four jobs, one module
each:

- :mod:`~gliofed.federated.site.condense.grouping`: which real cases any released summary may pool (the privacy
  rules: blocks and groups of at least ``min_group`` patients);
- :mod:`~gliofed.federated.site.condense.init`: the synthetic volumes and masks a condensation starts from;
- :mod:`~gliofed.federated.site.condense.matching`: the distribution-matching loss that moves them;
- :mod:`~gliofed.federated.site.condense.packing`: soft labels, BatchNorm statistics and the payload.

``min_group`` is always the site operator's ``SitePolicy.min_group``, passed explicitly: no function here has a
default for it.
"""

from __future__ import annotations

import numpy as np
import torch

from gliofed.federated.protocol import DistillSettings, Payload
from gliofed.federated.protocol.synthetic import upsample_synthetic
from gliofed.federated.site.condense.grouping import (
    RELAX_ORDER,
    group_for,
    group_labels,
    joint_labels,
    real_blocks,
    real_subset,
    summary_groups,
)
from gliofed.federated.site.condense.init import (
    case_statistics,
    class_fractions,
    init_synthetic,
    lesion_centres,
    reference_shape,
    site_template,
    synthetic_masks,
)
from gliofed.federated.site.condense.matching import matching_loss, perturbed, real_targets
from gliofed.federated.site.condense.packing import build_payload, real_bn_statistics, soft_labels

__all__ = ["soft_labels", "joint_labels", "group_labels", "real_blocks", "real_subset", "summary_groups",
           "group_for", "real_bn_statistics", "site_template", "init_synthetic", "real_targets", "matching_loss",
           "build_payload", "condense", "RELAX_ORDER"]


def condense(model: torch.nn.Module, dataset, settings: DistillSettings, seed: int, site: str,
             *, min_group: int, dp=None) -> Payload:
    """Soft labels + BatchNorm statistics + condensed synthetic set of one site's real cases under the global
    ``model``.

    ``min_group``: fewest real cases any released summary may pool, and the size of the blocks the real cases
    are averaged in (see the module docstring) — the site operator's ``SitePolicy.min_group``, never the
    server's.

    ``dp``: a :class:`~gliofed.dp.DPSettings` with the ``"gaussian"`` mechanism releases every summary of the cases
    through one Gaussian mechanism first (:func:`~gliofed.federated.site.condense.private.condense_private`).

    Returns:
        ``distilled_set`` payload (:func:`build_payload`); meta ``site``, ``n_cases``, ``shape``
        (full-resolution D, H, W), ``scale``, ``init``, ``temperature``.
    """
    if dp is not None and dp.enabled:
        from gliofed.federated.site.condense.private import condense_private

        return condense_private(model, dataset, settings, seed, site, min_group=min_group, dp=dp)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    model = model.eval()
    tables, counts = soft_labels(model, dataset, settings.temperature, min_group)
    shape, low = reference_shape(dataset, settings.scale)
    all_indices = np.arange(len(dataset))
    # whole fixed blocks of >= min_group cases: the server's seed picks blocks, never single cases
    real = real_subset(len(dataset), settings.real_batch, min_group, rng)
    bn_stats = real_bn_statistics(model, dataset, real)
    # label vectors of the cases whose class means are the targets (as their groups' shared vectors)
    labels = joint_labels(group_labels(dataset.labels, min_group)[real], settings.n_synthetic, rng)
    # each volume's lesion and intensities follow the group of real cases its labels pick (summaries of at least
    # min_group patients, never voxels), over all masked cases of the site: the server's seed and real_batch
    # cannot choose the cases whose summaries are released
    cases = case_statistics(dataset, all_indices)
    fractions = class_fractions(cases, labels, min_group)
    shared = site_template(dataset, all_indices, shape, low, min_group) if settings.init == "class_stats" else None
    template, brain = shared if shared is not None else (None, None)
    masks = torch.from_numpy(synthetic_masks(low, fractions, settings.n_synthetic, rng,
                                              centres=lesion_centres(cases, labels, min_group),
                                              brain=None if brain is None else brain.numpy()))
    images = init_synthetic(dataset, settings.init, masks, low, rng, generator, labels=labels, cases=cases,
                            min_group=min_group, template=template).clone().requires_grad_(True)
    syn_labels = torch.from_numpy(labels)
    full_masks = upsample_synthetic(images.detach(), masks, shape)[1]

    if settings.steps > 0:
        # theta_r and perturbed copies; real targets once per copy (over up to real_batch cases)
        nets = [perturbed(model, settings.perturb if k else 0.0, generator) for k in range(max(1, settings.models))]
        targets = [real_targets(net, dataset, real, min_group) for net in nets]
        optimizer = torch.optim.Adam([images], lr=settings.lr)
        for step in range(settings.steps):
            k = step % len(nets)
            loss = matching_loss(nets[k], images, full_masks, syn_labels, shape, targets[k])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    meta = {"site": site, "n_cases": len(dataset), "shape": list(shape), "scale": settings.scale,
            "init": settings.init, "temperature": settings.temperature}
    return build_payload(images, masks, labels, tables, counts, bn_stats, meta)
