"""What the teaching notebooks open up: the mechanisms that training hides behind one call.

- :func:`toy_sites` and :func:`library_average`: three sites' weights to average by hand, and the library's own
  FedAvg average of them to check the hand computation against.
- :func:`client_drift`: one real federated round from a given global model, keeping what each site sent back, so
  that a notebook can draw how far the local models drift from the global one (FedAvg against FedProx).
- :func:`distilled_sets`: what each site would upload under distillation (the synthetic volumes themselves), with
  the site's own privacy audit of them and the real-to-real distribution the audit compares against.
- :func:`flagged_upload`: what a site does with a distilled set its audit flags: it withholds the flagged volumes
  (all flagged: it refuses to send the set).

In the simulator the experimenter is every site's operator, so these functions read the sites' caches; the server
side of the federation never does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gliofed.config import TrainConfig
from gliofed.data.dataset import CaseDataset
from gliofed.errors import PolicyError
from gliofed.experiments.comparison import build_sites
from gliofed.experiments.privacy import condensation_request
from gliofed.federated.protocol import Payload, round_seed, site_request, state_to_arrays
from gliofed.federated.server.rounds import federated_round
from gliofed.federated.server.strategies import make_strategy, weighted_average
from gliofed.federated.simulate import in_process_exchange
from gliofed.federated.site import Site
from gliofed.federated.site.policy import SitePolicy
from gliofed.federated.site.privacy import volume_vectors

__all__ = ["toy_sites", "library_average", "Drift", "client_drift", "DistilledSets", "distilled_sets",
           "flagged_upload", "weight_vector"]


def toy_sites(seed: int = 0, sizes: tuple[int, ...] = (12, 30, 6)) -> dict[str, tuple[dict[str, np.ndarray], int]]:
    """Three sites' "models" small enough to average by hand: one 2 x 3 weight matrix and a bias each, with the
    number of training cases each site holds.

    Args:
        seed: draws the weights.
        sizes: cases per site (default 12, 30, 6: unequal, so a plain mean and FedAvg's weighted mean differ).

    Returns:
        ``{site: (arrays, n_cases)}`` with arrays named as the library names model weights (``w:...``).
    """
    rng = np.random.default_rng(seed)
    return {f"site {'ABC'[i]}": ({"w:layer.weight": rng.normal(size=(2, 3)).round(2).astype(np.float32),
                                 "w:layer.bias": rng.normal(size=2).round(2).astype(np.float32)}, n)
            for i, n in enumerate(sizes)}


def library_average(sites: dict[str, tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    """The library's FedAvg average (:func:`~gliofed.federated.server.strategies.base.weighted_average`, the
    function the FedAvg strategy aggregates with) of :func:`toy_sites`: each site weighted by its number of cases."""
    return weighted_average([(arrays, n) for arrays, n in sites.values()])


def weight_vector(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Every floating-point weight of a model's arrays (``w:`` names, in name order) as one vector."""
    return np.concatenate([np.asarray(arrays[k], np.float64).ravel() for k in sorted(arrays)
                           if k.startswith("w:") and np.asarray(arrays[k]).dtype.kind == "f"])


@dataclass
class Drift:
    """One federated round seen from inside (:func:`client_drift`).

    Attributes:
        table: one row per strategy and site: ``n_cases``, ``to_start`` (L2 distance of the site's model from the
            global model it started from), ``to_average`` (from the new global model), ``relative`` (to_average /
            the mean to_start).
        vectors: strategy -> ``{"start": ..., "average": ..., <site>: ...}`` flattened weights.
    """

    table: pd.DataFrame
    vectors: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def client_drift(cache_dir: str | Path, model: torch.nn.Module, config: TrainConfig,
                 strategies: tuple[str, ...] = ("fedavg", "fedprox"), local_epochs: int = 1, mu: float = 0.1,
                 rnd: int = 1) -> Drift:
    """Run one real federated round of each strategy from ``model`` (the round loop of
    :func:`~gliofed.federated.server.rounds.federated_round`, sites answering in this process) and keep each site's
    reply: the local models after their local training, before and after the server averages them.

    Args:
        cache_dir: the cache whose sites take part.
        model: the global model every site starts from (not changed).
        config: training settings (seed, device ...).
        strategies: weight-sharing strategies to compare (default FedAvg and FedProx).
        local_epochs: epochs each site trains (default 1).
        mu: FedProx's proximal weight (default 0.1: strong enough to see its pull in one round).
        rnd: the round number (seeds the sites' data order).

    Returns:
        :class:`Drift`.
    """
    rows, vectors = [], {}
    for name in strategies:
        strategy = make_strategy(name, local_epochs, mu, None, config.seed)
        sites = build_sites(cache_dir, strategy, config)
        replies: dict[str, Payload] = {}
        transport = in_process_exchange(sites)

        def recording(requests, transport=transport, replies=replies):
            answers = transport(requests)
            replies.update({site: answer for site, answer in answers.items() if isinstance(answer, Payload)})
            return answers

        start = copy.deepcopy(model).cpu()
        averaged = copy.deepcopy(start)
        federated_round(strategy, averaged, rnd, [site.name for site in sites], config, recording)
        start_vector, average_vector = weight_vector(state_to_arrays(start)), weight_vector(state_to_arrays(averaged))
        vectors[name] = {"start": start_vector, "average": average_vector}
        for site, reply in sorted(replies.items()):
            local = weight_vector(reply.arrays)
            vectors[name][site] = local
            rows.append({"strategy": name, "site": site, "n_cases": int(reply.meta["n_cases"]),
                         "to_start": float(np.linalg.norm(local - start_vector)),
                         "to_average": float(np.linalg.norm(local - average_vector))})
    table = pd.DataFrame(rows)
    table["relative"] = table["to_average"] / table.groupby("strategy")["to_start"].transform("mean")
    return Drift(table, vectors)


@dataclass
class DistilledSets:
    """What each site would upload under distillation, and its own audit of it (:func:`distilled_sets`).

    Attributes:
        payloads: ``(site, init)`` -> the ``distilled_set`` payload (synthetic volumes, masks, labels ...).
        audit: one row per synthetic volume (:func:`~gliofed.federated.site.privacy.nearest_neighbour_audit`'s
            columns, ``init`` and ``site``).
        real_to_real: one row per real training case: ``site``, ``subject``, ``nn_corr`` (its highest correlation
            with another real case of its site, on the same grid and after the same centring as the audit).
        request: what the sets were condensed under
            (:func:`~gliofed.experiments.privacy.condensation_request`: model digest, seed, settings).
    """

    payloads: dict[tuple[str, str], Payload]
    audit: pd.DataFrame
    real_to_real: pd.DataFrame
    request: dict = field(default_factory=dict)


def _real_to_real(cache_dir: Path, config: TrainConfig, site: str, grid: tuple[int, ...]) -> pd.DataFrame:
    """Each real training case's nearest-neighbour correlation with the other real cases of its site, computed as the
    site's audit computes it (payload grid, site mean removed)."""
    cases = CaseDataset(cache_dir, split="train", sites=[site], modalities=config.modalities, seed=config.seed)
    real = np.concatenate([volume_vectors(torch.as_tensor(cases[i]["image"])[None], grid) for i in range(len(cases))])
    real = real - real.mean(0, keepdims=True)
    if len(real) < 2:
        return pd.DataFrame({"site": [site], "subject": list(cases.index["subject_id"]), "nn_corr": [1.0]})
    within = np.corrcoef(real)
    np.fill_diagonal(within, -np.inf)
    return pd.DataFrame({"site": site, "subject": list(cases.index["subject_id"]), "nn_corr": within.max(1)})


def distilled_sets(cache_dir: str | Path, model: torch.nn.Module, config: TrainConfig, distill: dict | None = None,
                   inits: tuple[str, ...] | dict[str, list[str] | None] = ("class_stats",), seed: int = 0,
                   sites: list[str] | None = None) -> DistilledSets:
    """Ask every site (or those in ``sites``) to condense its training cases under ``model`` with each initialisation
    in ``inits`` and to audit the result (inside the site). The experimenter is every site's operator here and opts
    in locally (:meth:`SitePolicy.teaching`): ``real_unsafe`` is allowed and flagged sets are returned rather than
    refused, so that they can be shown. Each site gets the request seed it gets in
    :func:`~gliofed.experiments.privacy_audit` (its index among all sites).

    Args:
        cache_dir, model, config: the sites' cache, the model they condense under, the training settings.
        distill: distillation settings (the preset's).
        inits: initialisations to ask every site for, or ``{init: sites or None for every site}`` (e.g. the unsafe
            teaching option at one site only: ``{"class_stats": None, "real_unsafe": ["upenn"]}``).
        seed: the request seed.
        sites: only these sites (default all).

    Returns:
        :class:`DistilledSets`.
    """
    wanted = dict.fromkeys(inits) if not isinstance(inits, dict) else dict(inits)
    cache_dir = Path(cache_dir)
    train = CaseDataset(cache_dir, split="train", modalities=config.modalities, seed=config.seed)
    outgoing = Payload("model", state_to_arrays(model), {"round": 0, "strategy": "audit"})
    payloads, reports, real = {}, [], []
    for index, name in enumerate(train.sites):
        asked = [init for init, where in wanted.items() if where is None or name in where]
        if (sites is not None and name not in sites) or not asked:
            continue
        site = Site(name, cache_dir, config.modalities, config.seed, policy=SitePolicy.teaching())
        for init in asked:
            task, payload, settings = site_request(config, model, round_seed(seed, 0, index), "distill", outgoing,
                                                   {"distill": {**(distill or {}), "init": init}})
            payloads[(name, init)] = site.handle(task, payload, settings)
            reports.append(site.privacy_audit(payloads[(name, init)]))
        grid = tuple(payloads[(name, asked[0])].arrays["syn_images"].shape[2:])
        real.append(_real_to_real(cache_dir, config, name, grid))
    return DistilledSets(payloads, pd.concat(reports, ignore_index=True), pd.concat(real, ignore_index=True),
                         condensation_request(model, config, distill, seed))


def flagged_upload(cache_dir: str | Path, model: torch.nn.Module, config: TrainConfig, site: str,
                   distill: dict | None = None, seed: int = 0) -> str:
    """Ask ``site``, under its operator's ordinary policy (which withholds every synthetic volume its audit flags,
    and refuses the whole set when every volume or another part fails) but with ``real_unsafe`` allowed, to distil
    from copies of its patients; return, in one line, what the server gets: the refusal, or which volumes were
    withheld and how many the audit let through (a copy the audit does not flag leaves: it is a screen, not a
    guarantee; issue 30 measures what leaks).
    """
    cache_dir = Path(cache_dir)
    sites = CaseDataset(cache_dir, split="train", modalities=config.modalities, seed=config.seed).sites
    guard = Site(site, cache_dir, config.modalities, config.seed, policy=SitePolicy(allow_real_init=True))
    outgoing = Payload("model", state_to_arrays(model), {"round": 0, "strategy": "audit"})
    task, payload, settings = site_request(config, model, round_seed(seed, 0, sites.index(site)), "distill", outgoing,
                                           {"distill": {**(distill or {}), "init": "real_unsafe"}})
    try:
        reply = guard.handle(task, payload, settings)
    except PolicyError as refusal:
        return str(refusal)
    sent = len(reply.arrays["syn_images"])
    withheld = int(reply.meta.get("withheld", 0))
    return (f"site {site} withheld {withheld} flagged synthetic volume(s) and sent {sent} that its audit did not flag, "
            "although every one started as a copy of a patient: the audit is a screen, not a guarantee.")
