"""In-process federated simulation: the one round loop (:func:`~gliofed.federated.server.rounds.run_rounds`) over
sites in this process.

The simulator plays three roles that a real deployment separates: it carries payloads between sites and
server (:func:`in_process_exchange`, the transport), it runs the strategy (server side), and, as the experimenter,
it scores the resulting models on the common test split after every round.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gliofed.config import TrainConfig
from gliofed.engine import eval_batch_size, predict, resolve_device, seed_everything
from gliofed.errors import CacheError, ConfigError, FederationError, GliofedError
from gliofed.federated.protocol import MAX_PAYLOAD_BYTES
from gliofed.federated.server.rounds import History, run_rounds
from gliofed.federated.server.strategies import Strategy
from gliofed.federated.site import Site
from gliofed.metrics import quick_metrics
from gliofed.model import build_model
from gliofed.runs import TrainingRun

__all__ = ["FederationError", "History", "simulate", "in_process_exchange", "check_resume", "routed_predictions",
           "DATA_FIELDS"]

log = logging.getLogger("gliofed.federated")

#: training settings a resumed run may change (where it runs, not what it computes)
RESUMABLE_CHANGES = frozenset({"device", "num_workers", "device_cache"})
#: key of the strategy's identity inside the saved strategy state
IDENTITY = "identity"


def _plain(value):
    return json.loads(json.dumps(value, default=str))


#: what a run's data record holds (see :func:`gliofed.experiments.comparison.data_record`), as a message names it
DATA_FIELDS = {"manifest": "manifest fingerprint", "cases": "cached cases fingerprint", "size": "in-plane size",
               "preprocess_version": "preprocessing version", "external_site": "external site"}


def check_resume(state: dict, strategy: Strategy, config: TrainConfig, where: str, data: dict | None = None) -> None:
    """Refuse to resume a saved run (``state``, as :meth:`TrainingRun.load_state` returns it) with another strategy,
    strategy settings, server aggregation, training config or data than it was started with: one line naming what
    differs.

    Args:
        state: the saved run's state.
        strategy, config: the strategy and training config of the resume.
        where: the run folder (for the message).
        data: what the resume would train on (:data:`DATA_FIELDS`: manifest and cached-cases fingerprints, in-plane
            size, preprocessing version, external site); each field the saved run recorded too must be equal. None
            (or a run saved without a record) skips the comparison.

    Raises:
        ConfigError: the settings differ.
    """
    differences = []
    saved_identity = (state.get("strategy") or {}).get(IDENTITY)
    identity = strategy.identity()
    if saved_identity is not None:
        if saved_identity.get("name") != identity["name"]:
            differences.append(f"strategy {saved_identity.get('name')} (now {identity['name']})")
        elif _plain(saved_identity.get("settings")) != identity["settings"]:
            differences.append(f"strategy settings {saved_identity.get('settings')} (now {identity['settings']})")
        elif _plain(saved_identity.get("server")) != _plain(identity.get("server")):
            differences.append(f"server aggregation {saved_identity.get('server') or 'mean'} (now "
                               f"{identity.get('server') or 'mean'})")
    saved_data = state.get("data") or {}
    for key, label in DATA_FIELDS.items():
        if data is not None and key in saved_data and key in data and _plain(saved_data[key]) != _plain(data[key]):
            differences.append(f"{label} {saved_data[key]!r} (now {data[key]!r})")
    saved_config, current = _plain(state.get("config") or {}), _plain(config.to_dict())
    defaults = _plain(TrainConfig().to_dict())
    for key in sorted(set(saved_config) | set(current)):
        # a setting newer than the saved run counts as its default there (what that run's gliofed did)
        saved = saved_config.get(key, defaults.get(key))
        if key not in RESUMABLE_CHANGES and saved != current.get(key):
            differences.append(f"{key} {saved!r} (now {current.get(key)!r})")
    if differences:
        raise ConfigError(f"cannot resume {where}: it was started with {', '.join(differences)}; resume with the "
                          "same settings or train into a new folder.")


def routed_predictions(strategy: Strategy, model: torch.nn.Module, test_set, device, hd95: bool = True,
                       progress: bool = False, batch_size: int = 1) -> pd.DataFrame | None:
    """Predictions of a strategy whose model depends on the site (:meth:`Strategy.case_site_models`, FedBN): each
    test case scored by the model of its own site (a site without one: the global model); None when the strategy
    has no such models."""
    routed = strategy.case_site_models(model)
    if not routed:
        return None
    fallback = strategy.models_to_evaluate(model)["global"]
    frames = []
    for site in test_set.sites:
        net = build_model(model.config)
        strategy.load(net, routed.get(site, fallback))
        frames.append(predict(net, test_set.for_site(site), device=device, progress=progress, hd95=hd95,
                              batch_size=batch_size))
    order = {subject: i for i, subject in enumerate(test_set.index["subject_id"])}  # the test set's case order
    frame = pd.concat(frames, ignore_index=True)
    return frame.iloc[np.argsort(frame["subject"].map(order).to_numpy(), kind="stable")].reset_index(drop=True)


def _evaluate(strategy: Strategy, model: torch.nn.Module, test_set, device,
              hd95: bool = True, batch_size: int = 1) -> tuple[dict, dict, pd.DataFrame]:
    routed = routed_predictions(strategy, model, test_set, device, hd95, batch_size=batch_size)
    if routed is not None:  # one model per site (FedBN): each case scored by its own site's
        site_metrics = {site: quick_metrics(group) for site, group in routed.groupby("site")}
        return quick_metrics(routed), site_metrics, routed.assign(model="global")
    models = strategy.models_to_evaluate(model)
    scored = {}
    for name, arrays in models.items():
        net = build_model(model.config)
        strategy.load(net, arrays)
        scored[name] = predict(net, test_set, device=device, progress=False, hd95=hd95, batch_size=batch_size)
    table = pd.concat([p.assign(model=name) for name, p in scored.items()], ignore_index=True)
    if list(models) == ["global"]:
        predictions = scored["global"]
        site_metrics = {site: quick_metrics(group) for site, group in predictions.groupby("site")}
        return quick_metrics(predictions), site_metrics, table
    site_metrics = {name: quick_metrics(p) for name, p in scored.items()}
    frame = pd.DataFrame(site_metrics.values())
    return {k: float(frame[k].mean()) for k in frame.columns}, site_metrics, table


def in_process_exchange(sites: list[Site]):
    """The simulator's transport: each :class:`Site` answers in turn, in this process.

    A damaged cache (:class:`~gliofed.errors.CacheError`) stops the simulation with its one-line error: here the
    experimenter owns every site's cache, and a site silently left out of every round would hide it."""
    by_name = {site.name: site for site in sites}

    def exchange(requests: dict) -> dict:
        answers = {}
        for name, (task, outgoing, settings) in requests.items():
            try:
                answers[name] = by_name[name].handle(task, outgoing, settings)
            except CacheError:
                raise
            except Exception as error:  # reported by federated_round
                answers[name] = error
        return answers

    return exchange


def simulate(strategy: Strategy, sites: list[Site], test_set, config: TrainConfig, rounds: int, min_sites: int = 1,
             max_payload_bytes: int | None = MAX_PAYLOAD_BYTES, checkpoint_dir: str | Path | None = None,
             resume: bool = False, progress: bool = True, data: dict | None = None) -> tuple[torch.nn.Module, History]:
    """Run ``rounds`` rounds of ``strategy`` over ``sites`` and score every round on ``test_set``.

    Args:
        strategy: a :class:`Strategy` (see :func:`~gliofed.federated.server.strategies.make_strategy`).
        sites: the participating :class:`Site` objects (see :meth:`Strategy.participants`).
        test_set: the common test split (a :class:`CaseDataset`).
        config: training settings (optimizer, batch size, seed, device ...) used by every site.
        rounds: number of rounds.
        min_sites: a round proceeds only if at least this many sites answered validly.
        max_payload_bytes: a reply larger than this is refused (that site is left out of the round).
        checkpoint_dir: if given, a :class:`~gliofed.runs.TrainingRun` folder: ``state.safetensors`` after every
            round and the last round's test predictions.
        resume: continue from ``checkpoint_dir/state.safetensors``; ends with exactly the metrics of an
            uninterrupted run (same seed, CPU). Refused, naming what changed, when the strategy, its settings, the
            training config or ``data`` differ from the saved run's (:func:`check_resume`).
        data: what the run trains on (:data:`DATA_FIELDS`), saved with every round's state and compared on resume.

    Returns:
        (final global model, :class:`History`).
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be a positive integer, not {rounds!r}.")
    if isinstance(min_sites, bool) or not isinstance(min_sites, int) or not 1 <= min_sites <= len(sites):
        raise FederationError(f"min_sites={min_sites} must be between 1 and the {len(sites)} site(s) taking part.")
    device = resolve_device(config.device)
    seed_everything(config.seed)
    model = build_model(config)
    history = History(strategy.name)
    run = TrainingRun(checkpoint_dir) if checkpoint_dir is not None else None
    start_round = 1
    if resume:
        if run is None or not run.has_state:
            raise GliofedError(f"cannot resume: no checkpoint at {run.path(TrainingRun.STATE) if run else None}.")
        state = run.load_state()
        check_resume(state, strategy, config, str(run.out_dir), data)
        if state["round"] >= rounds:
            raise ConfigError(f"cannot resume {run.out_dir}: it already ran {state['round']} round(s); ask for more "
                              f"than {state['round']}.")
        model.load_state_dict(state["model"])
        strategy.load_state_dict(state["strategy"])
        history.rounds = state["history"]
        start_round = state["round"] + 1

    def evaluate(rnd: int, model: torch.nn.Module) -> dict:
        metrics, site_metrics = {}, {}
        if strategy.evaluate_each_round or rnd == rounds:
            # per-round curves need no HD95 (quick_metrics); the last round's predictions are kept whole
            metrics, site_metrics, predictions = _evaluate(strategy, model, test_set, device, hd95=rnd == rounds,
                                                           batch_size=eval_batch_size(config, device))
            if rnd == rounds and run is not None:
                run.save_predictions(predictions)
        return {"metrics": metrics, "site_metrics": site_metrics}

    def save(rnd: int, rounds_so_far: list[dict]) -> None:
        if run is not None:
            run.save_state(rnd, model, {**strategy.state_dict(), IDENTITY: strategy.identity()}, rounds_so_far,
                           config, data)

    exchange = in_process_exchange(sites)
    run_rounds(strategy, model, [site.name for site in sites], config, lambda rnd: exchange, rounds,
               start_round=start_round, history=history.rounds, min_sites=min_sites,
               max_payload_bytes=max_payload_bytes, evaluate=evaluate, after_round=save, progress=progress)
    return model, history
