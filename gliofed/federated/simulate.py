"""In-process federated simulation: the round loop that drives any strategy over in-memory sites.

The simulator plays three roles that a real deployment separates: it carries payloads between sites and
server (measuring their bytes), it runs the strategy (server side), and, as the experimenter, it scores
the resulting models on the common test split after every round.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from gliofed.config import TrainConfig
from gliofed.data.dataset import CaseDataset
from gliofed.data.transforms import augment_pipeline
from gliofed.engine import build_model, fit, predict, resolve_device, seed_everything
from gliofed.errors import GliofedError
from gliofed.federated.rounds import (
    STRATEGIES,
    FederationError,
    federated_round,
    make_strategy,
    round_seed,
)
from gliofed.federated.site import Site
from gliofed.federated.strategy import Strategy
from gliofed.metrics import quick_metrics
from gliofed.model import MultiTaskUNet

__all__ = ["FederationError", "History", "PREDICTIONS_FILE", "STRATEGIES", "make_strategy", "quick_metrics", "simulate",
           "run_experiment", "privacy_audit"]

log = logging.getLogger("gliofed.federated")

@dataclass
class History:
    """Per-round record of a simulation.

    Each round: ``round``, ``wall_s``, ``metrics`` (test metrics of the global model, or the mean over
    site models for local-only), ``site_metrics`` (per site: metrics on that site's test cases; for
    local-only, each site model on the whole test split), ``bytes_up`` / ``bytes_down`` per site,
    ``excluded`` (site -> reason) and ``info`` (strategy-specific, e.g. losses).
    """

    strategy: str
    rounds: list[dict] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """One row per round: round, wall time, total bytes up/down, and every global metric."""
        rows = []
        for r in self.rounds:
            rows.append({"strategy": self.strategy, "round": r["round"], "wall_s": r["wall_s"],
                         "bytes_up": sum(r["bytes_up"].values()), "bytes_down": sum(r["bytes_down"].values()),
                         "sites_answered": len(r["bytes_up"]) - len(r["excluded"]), **r["metrics"]})
        return pd.DataFrame(rows)

    def site_frame(self) -> pd.DataFrame:
        """One row per (round, site): bytes and that site's metrics."""
        rows = []
        for r in self.rounds:
            for site in sorted(set(r["bytes_up"]) | set(r["site_metrics"])):
                rows.append({"strategy": self.strategy, "round": r["round"], "site": site,
                             "bytes_up": r["bytes_up"].get(site, 0), "bytes_down": r["bytes_down"].get(site, 0),
                             "excluded": r["excluded"].get(site, ""), **r["site_metrics"].get(site, {})})
        return pd.DataFrame(rows)


#: the last round's test predictions of every evaluated model (column ``model``: ``global`` or a site's name),
#: written next to ``state.pt`` so that evaluation notebooks need not predict again
PREDICTIONS_FILE = "predictions_test.csv"


def _evaluate(strategy: Strategy, model: torch.nn.Module, test_set, device,
              hd95: bool = True) -> tuple[dict, dict, pd.DataFrame]:
    models = strategy.models_to_evaluate(model)
    scored = {}
    for name, arrays in models.items():
        net = MultiTaskUNet(**model.config)
        strategy.load(net, arrays)
        scored[name] = predict(net, test_set, device=device, progress=False, hd95=hd95)
    table = pd.concat([p.assign(model=name) for name, p in scored.items()], ignore_index=True)
    if list(models) == ["global"]:
        predictions = scored["global"]
        site_metrics = {site: quick_metrics(group) for site, group in predictions.groupby("site")}
        return quick_metrics(predictions), site_metrics, table
    site_metrics = {name: quick_metrics(p) for name, p in scored.items()}
    frame = pd.DataFrame(site_metrics.values())
    return {k: float(frame[k].mean()) for k in frame.columns}, site_metrics, table


def in_process_exchange(sites: list[Site]):
    """The simulator's transport: each :class:`Site` answers in turn, in this process."""
    by_name = {site.name: site for site in sites}

    def exchange(requests: dict) -> dict:
        answers = {}
        for name, (task, outgoing, settings) in requests.items():
            try:
                answers[name] = by_name[name].handle(task, outgoing, settings)
            except Exception as error:  # reported by federated_round
                answers[name] = error
        return answers

    return exchange


def simulate(strategy: Strategy, sites: list[Site], test_set, config: TrainConfig, rounds: int,
             pooled_set=None, min_sites: int = 1, max_payload_bytes: int | None = 256 * 2**20,
             checkpoint_dir: str | Path | None = None, resume: bool = False, progress: bool = True) -> tuple[torch.nn.Module, History]:
    """Run ``rounds`` rounds of ``strategy`` over ``sites`` and score every round on ``test_set``.

    Args:
        strategy: a :class:`Strategy` (see :func:`make_strategy`).
        sites: the participating :class:`Site` objects.
        test_set: the common test split (a :class:`CaseDataset`).
        config: training settings (optimizer, batch size, seed, device ...) used by every site.
        rounds: number of rounds.
        pooled_set: all sites' training cases, needed only by the centralized baseline.
        min_sites: a round proceeds only if at least this many sites answered validly.
        max_payload_bytes: a reply larger than this is refused (that site is left out of the round).
        checkpoint_dir: if given, ``state.pt`` is written after every round.
        resume: continue from ``checkpoint_dir/state.pt``; ends with exactly the metrics of an
            uninterrupted run (same seed, CPU).

    Returns:
        (final global model, :class:`History`).
    """
    device = resolve_device(config.device)
    seed_everything(config.seed)
    model = build_model(config)
    history = History(strategy.name)
    start_round = 1
    state_path = Path(checkpoint_dir) / "state.pt" if checkpoint_dir is not None else None
    if resume:
        if state_path is None or not state_path.is_file():
            raise GliofedError(f"cannot resume: no checkpoint at {state_path}.")
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        strategy.load_state_dict(state["strategy"])
        history.rounds = state["history"]
        start_round = state["round"] + 1
    bar = tqdm(range(start_round, rounds + 1), desc=strategy.name, unit="round", disable=not progress)
    for rnd in bar:
        started = time.perf_counter()
        bytes_up, bytes_down, excluded = {}, {}, {}
        if strategy.task == "pooled":
            if pooled_set is None:
                raise GliofedError("the centralized baseline needs pooled_set (all sites' training cases).")
            round_config = config.replace(seed=round_seed(config.seed, rnd, 0))
            seed_everything(round_config.seed)
            pooled_set.transform = augment_pipeline(round_config.seed) if config.augment else None
            model.to(device)
            losses = fit(model, pooled_set, round_config, epochs=strategy.local_epochs, progress=False)
            pooled_set.transform = None
            model.cpu()
            for site in sites:
                bytes_up[site.name] = site.raw_bytes() if rnd == 1 else 0
                bytes_down[site.name] = 0
            info = {"loss": losses[-1]["total"] if losses else float("nan")}
        else:
            bytes_up, bytes_down, excluded, info = federated_round(
                strategy, model, rnd, [site.name for site in sites], config, in_process_exchange(sites),
                min_sites=min_sites, max_payload_bytes=max_payload_bytes)
        if strategy.evaluate_each_round or rnd == rounds:
            # per-round curves need no HD95 (quick_metrics); the last round's predictions are kept whole
            metrics, site_metrics, predictions = _evaluate(strategy, model, test_set, device, hd95=rnd == rounds)
            if rnd == rounds and state_path is not None:
                state_path.parent.mkdir(parents=True, exist_ok=True)
                predictions.to_csv(state_path.parent / PREDICTIONS_FILE, index=False)
        else:
            metrics, site_metrics = {}, {}
        history.rounds.append({"round": rnd, "wall_s": time.perf_counter() - started, "metrics": metrics,
                               "site_metrics": site_metrics, "bytes_up": bytes_up, "bytes_down": bytes_down,
                               "excluded": excluded, "info": info})
        bar.set_postfix(dice_WT=f"{metrics.get('dice_WT', float('nan')):.2f}",
                        auc_idh=f"{metrics.get('auc_idh', float('nan')):.2f}")
        if state_path is not None:
            state_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"round": rnd, "model": model.state_dict(), "strategy": strategy.state_dict(),
                        "history": history.rounds, "config": config.to_dict()}, state_path)
    return model, history


def run_experiment(cache_dir: str | Path, strategy: str, config: TrainConfig, rounds: int, local_epochs: int = 1,
                   mu: float = 0.01, distill: dict | None = None, external_site: str | None = None,
                   min_sites: int = 1, checkpoint_dir: str | Path | None = None, resume: bool = False,
                   progress: bool = True) -> tuple[torch.nn.Module, History]:
    """Everything :func:`simulate` needs, built from a cache: one :class:`Site` per site with training
    cases, the common test split, and (for ``centralized``) the pooled training set."""
    train = CaseDataset(cache_dir, split="train", modalities=config.modalities, seed=config.seed,
                        external_site=external_site)
    sites = [Site(name, cache_dir, config.modalities, config.seed, external_site) for name in train.sites]
    test = CaseDataset(cache_dir, split="test", modalities=config.modalities, seed=config.seed,
                       external_site=external_site)
    chosen = make_strategy(strategy, local_epochs, mu, distill, config.seed)
    return simulate(chosen, sites, test, config, rounds, pooled_set=train if strategy == "centralized" else None,
                    min_sites=min_sites, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress)


def privacy_audit(cache_dir: str | Path, model: torch.nn.Module, config: TrainConfig, distill: dict | None = None,
                  inits: tuple[str, ...] = ("class_stats",), seed: int = 0) -> pd.DataFrame:
    """Ask every site to condense under ``model`` with each initialisation in ``inits`` and to audit its own
    upload (:meth:`Site.privacy_audit`, inside the site); return all reports stacked.

    Pass ``inits=("class_stats", "real_unsafe")`` to show what the audit flags."""
    from gliofed.federated.payload import Payload, state_to_arrays

    train = CaseDataset(cache_dir, split="train", modalities=config.modalities, seed=config.seed)
    outgoing = Payload("model", state_to_arrays(model), {"round": 0, "strategy": "audit"})
    reports = []
    for index, name in enumerate(train.sites):
        site = Site(name, cache_dir, config.modalities, config.seed)
        for init in inits:
            settings = {"train": config.to_dict(), "model_config": model.config, "seed": round_seed(seed, 0, index),
                        "distill": {**(distill or {}), "init": init}}
            reports.append(site.privacy_audit(site.handle("distill", outgoing, settings)))
    return pd.concat(reports, ignore_index=True)
