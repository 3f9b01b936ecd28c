"""The strategy comparison: one strategy trained over the sites of a cache and scored on the common test split,
and the final models and test predictions that the evaluation notebooks read back from the run folders."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from gliofed.config import TrainConfig
from gliofed.data.dataset import CaseDataset
from gliofed.engine import predict
from gliofed.federated.server.strategies import LocalOnly, Strategy, make_strategy
from gliofed.federated.simulate import History, simulate
from gliofed.federated.site import Site
from gliofed.federated.site.policy import SitePolicy
from gliofed.inference import preprocessing_of_cache
from gliofed.metrics import choose_thresholds
from gliofed.model import build_model
from gliofed.runs import TrainingRun

__all__ = ["build_sites", "run_experiment", "train_and_save", "trained_model", "strategy_predictions",
           "training_thresholds", "strategy_thresholds", "training_provenance", "training_postprocessing",
           "training_choices", "data_record"]


def data_record(cache_dir: str | Path, external_site: str | None = None, manifest: str | Path | None = None) -> dict:
    """What a run trains and tests on, recorded with its state so that a resume on other data is refused
    (:func:`~gliofed.federated.simulate.check_resume`): the cached cases' fingerprint
    (:func:`~gliofed.data.cache.cache_fingerprint`), the cache's in-plane size and preprocessing version, the site
    held out and, when given, the manifest's fingerprint.

    Args:
        cache_dir: the cache the run reads.
        external_site: the site held out of training (None: none).
        manifest: the manifest the cache was made from (None: not recorded).
    """
    from gliofed.data.cache import cache_fingerprint, read_settings
    from gliofed.data.manifest import manifest_fingerprint

    settings = read_settings(cache_dir) or {}
    record = {"cases": cache_fingerprint(cache_dir), "size": settings.get("size"),
              "preprocess_version": settings.get("preprocess_version"), "external_site": external_site}
    if manifest is not None:
        record["manifest"] = manifest_fingerprint(manifest)
    return record


def build_sites(cache_dir: str | Path, strategy: Strategy, config: TrainConfig,
                external_site: str | None = None, policy: SitePolicy | None = None) -> list[Site]:
    """One :class:`Site` per participant the strategy asks for (:meth:`Strategy.participants`) over the sites with
    training cases in ``cache_dir``, each answering under ``policy`` (default :class:`SitePolicy` ()): in the
    simulator the experimenter is every site's operator."""
    train = CaseDataset(cache_dir, split="train", modalities=config.modalities, seed=config.seed,
                        external_site=external_site)
    return [Site(name, cache_dir, config.modalities, config.seed, external_site, members=members, policy=policy)
            for name, members in strategy.participants(train.sites).items()]


def run_experiment(cache_dir: str | Path, strategy: str, config: TrainConfig, rounds: int, local_epochs: int = 1,
                   mu: float = 0.01, distill: dict | None = None, external_site: str | None = None,
                   min_sites: int = 1, checkpoint_dir: str | Path | None = None, resume: bool = False,
                   progress: bool = True, policy: SitePolicy | None = None, dp=None, aggregation: str = "mean",
                   manifest: str | Path | None = None) -> tuple[torch.nn.Module, History]:
    """Train ``strategy`` (a name of :data:`~gliofed.federated.server.strategies.STRATEGIES`) for ``rounds`` rounds over
    the sites of ``cache_dir`` and score it on the common test split (:func:`~gliofed.federated.simulate.simulate`).
    ``policy``: every site's :class:`SitePolicy` (default: the default policy). ``dp``: the strategy's
    differential-privacy dial (:class:`~gliofed.dp.DPSettings` or its dict; default off); each round's history
    ``info["dp"]`` records every site's epsilon, and so does the run folder's state. ``aggregation``: FedAvg's and
    FedProx's (``mean``, ``median``, ``trimmed-mean``). ``manifest``: the cache's manifest, whose fingerprint the
    run's :func:`data_record` keeps (a resume on other data is refused)."""
    chosen = make_strategy(strategy, local_epochs, mu, distill, config.seed, aggregation=aggregation, dp=dp)
    sites = build_sites(cache_dir, chosen, config, external_site, policy)
    test = CaseDataset(cache_dir, split="test", modalities=config.modalities, seed=config.seed,
                       external_site=external_site)
    return simulate(chosen, sites, test, config, rounds, min_sites=min_sites, checkpoint_dir=checkpoint_dir,
                    resume=resume, progress=progress, data=data_record(cache_dir, external_site, manifest))


def training_thresholds(model: torch.nn.Module, cache_dir: str | Path, config: TrainConfig, method: str = "youden",
                        external_site: str | None = None, sites: list[str] | None = None) -> dict:
    """Each binary marker's decision threshold chosen on the training split
    (:func:`~gliofed.metrics.choose_thresholds`), from ``model``'s predictions of those cases (without augmentation).

    Where: in the simulator the experimenter is every site's operator (as when it scores the test split each round),
    so it predicts the pooled training cases of the sites (``sites``, default all) with the final model. The server
    never sees them: thresholds are chosen after training, outside the round loop, and only the numbers are stored.

    Args:
        model: the trained model.
        cache_dir: the cache.
        config: its training config (modalities, seed, device).
        method: ``"youden"`` (default) or ``"f1"``.
        external_site: the site held out of training (its cases are not used).
        sites: only these sites' training cases (local-only: a site model's own site).

    Returns:
        the thresholds record (``method``, ``split``, ``markers``, ``n``).
    """
    train = CaseDataset(cache_dir, split="train", modalities=config.modalities, seed=config.seed,
                        external_site=external_site, sites=sites)
    predictions = predict(model, train, device=config.device, progress=False, hd95=False)
    return choose_thresholds(predictions, method, split="train")


def training_choices(model: torch.nn.Module, cache_dir: str | Path, config: TrainConfig, method: str = "youden",
                     external_site: str | None = None) -> tuple[dict, dict]:
    """:func:`training_thresholds` and :func:`training_postprocessing` from one prediction of the training split
    (each case is predicted once, as :func:`~gliofed.engine.predict` predicts it; the same choices as the two calls,
    at half the cost).

    Returns:
        (the thresholds record, the post-processing record).
    """
    from gliofed.segmentation import PostprocessingChoice

    train = CaseDataset(cache_dir, split="train", modalities=config.modalities, seed=config.seed,
                        external_site=external_site)
    choice = PostprocessingChoice()
    predictions = predict(model, train, device=config.device, progress=False, hd95=False, on_class_map=choice.add)
    model.cpu()
    return choose_thresholds(predictions, method, split="train"), _postprocessing_record(choice.result())


def training_provenance(cache_dir: str | Path, config: TrainConfig, external_site: str | None = None,
                        manifest: str | Path | None = None) -> dict:
    """What a model was trained on, for ``model.json``: the fingerprint of its training cases
    (:func:`~gliofed.provenance.cases_fingerprint` of the cache index rows of the training split) and, when given, the
    SHA-256 of the manifest they came from."""
    from gliofed.provenance import cases_fingerprint, file_sha256

    train = CaseDataset(cache_dir, split="train", modalities=config.modalities, seed=config.seed,
                        external_site=external_site)
    record = {"training_data": cases_fingerprint(train.index.to_dict(orient="records"))}
    if manifest is not None and Path(manifest).is_file():
        record["training_data"]["manifest"] = {"path": str(manifest), "sha256": file_sha256(manifest)}
    return record


def train_and_save(run_dir: str | Path, cache_dir: str | Path, strategy: str, config: TrainConfig, rounds: int,
                   threshold_method: str = "youden", manifest: str | Path | None = None,
                   **kwargs) -> tuple[torch.nn.Module, History]:
    """:func:`run_experiment` into the run folder ``run_dir``, then save its final model, history tables and config
    there (:class:`~gliofed.runs.TrainingRun`), holding the folder's lock throughout (another live writer is a
    :class:`~gliofed.errors.RunLockedError`), with each marker's decision threshold chosen on the training split
    (:func:`training_thresholds`; local-only: each site model's on its own site's cases), the post-processing chosen
    on it (:func:`training_postprocessing`) and the training data's fingerprint (:func:`training_provenance`).

    Args:
        run_dir, cache_dir, strategy, config, rounds: see :func:`run_experiment`.
        threshold_method: ``"youden"`` (default) or ``"f1"``.
        manifest: the manifest the cache was made from, fingerprinted into ``model.json`` and the resume record
            (optional).
        kwargs: passed to :func:`run_experiment`.
    """
    run = TrainingRun(run_dir)
    with run.lock():  # one writer per run folder (re-entrant: `gliofed train` already holds it)
        model, history = run_experiment(cache_dir, strategy, config, rounds, checkpoint_dir=run_dir,
                                        manifest=manifest, **kwargs)
        external_site = kwargs.get("external_site")
        extra = {"history": history.rounds, "strategy": strategy, "cache": str(cache_dir),
                 "training": {"strategy": strategy, "rounds": rounds, "local_epochs": kwargs.get("local_epochs", 1),
                              "mu": kwargs.get("mu", 0.01) if strategy == "fedprox" else None,
                              "distill": kwargs.get("distill") if strategy == "distill" else None,
                              "external_site": external_site}}
        if strategy == "local":  # the checkpoint's model is never trained: each site keeps its own
            extra["postprocessing"] = training_postprocessing(model, cache_dir, config, external_site)
            site_models = LocalOnly.from_checkpoint(run_dir).site_models
            thresholds = {}
            extra["site_thresholds"] = {}
            for site, arrays in site_models.items():
                site_model = build_model(config)
                LocalOnly.load(site_model, arrays)
                extra["site_thresholds"][site] = training_thresholds(site_model, cache_dir, config, threshold_method,
                                                                     external_site, sites=[site])
        else:  # one prediction of the training split chooses both
            thresholds, extra["postprocessing"] = training_choices(model, cache_dir, config, threshold_method,
                                                                   external_site)
        run.save_model(model, config, epoch=rounds, extra=extra,
                       preprocessing=preprocessing_of_cache(cache_dir, config.modalities), thresholds=thresholds,
                       provenance=training_provenance(cache_dir, config, external_site, manifest))
        run.save_history(history)
        run.save_config(config)
    return model, history


def strategy_thresholds(run_dir: str | Path, cache_dir: str | Path, strategy: str, config: TrainConfig) -> dict:
    """The decision thresholds stored with a strategy's run (:func:`train_and_save`): the model's, or for local-only
    the largest site's model's (the one :func:`strategy_predictions` scores). Empty (0.5 everywhere) for a run saved
    before thresholds were stored."""
    run = TrainingRun(run_dir)
    if not run.has_model:
        return {}
    _, _, state = run.load_model()
    if strategy != "local":
        return state.get("thresholds") or {}
    per_site = (state.get("extra") or {}).get("site_thresholds") or {}
    return per_site.get(_largest_site(Path(cache_dir), config.seed, per_site), {}) if per_site else {}


def training_postprocessing(model: torch.nn.Module, cache_dir: str | Path, config: TrainConfig,
                            external_site: str | None = None) -> dict:
    """The post-processing of a trained model, chosen on the training split of ``cache_dir``
    (:func:`~gliofed.engine.postprocessing_for`: the smallest tumour component to keep, by mean region Dice), as the
    checkpoint records it; ``evaluate`` and ``predict`` apply it unless told otherwise. (In the simulator the
    experimenter holds every site's cases; a Flower run has no pooled training cases and records none.)"""
    from gliofed.engine import postprocessing_for

    train = CaseDataset(cache_dir, split="train", modalities=config.modalities, seed=config.seed,
                        external_site=external_site)
    chosen = postprocessing_for(model, train, device=config.device)
    model.cpu()
    return _postprocessing_record(chosen)


def _postprocessing_record(chosen: dict) -> dict:
    return {"min_voxels": chosen["min_voxels"], "keep_largest": chosen["keep_largest"], "cases": chosen["cases"],
            "chosen_on": "training split", "scores": chosen["scores"]}


def _largest_site(cache_dir: Path, seed: int, candidates) -> str:
    sizes = CaseDataset(cache_dir, split="train", seed=seed).index["site"].value_counts()
    return next(site for site in sizes.index if site in candidates)


def trained_model(run_dir: str | Path, cache_dir: str | Path, strategy: str, config: TrainConfig, rounds: int = 1,
                  local_epochs: int = 1, distill: dict | None = None, device: str = "cpu"):
    """The final model of ``strategy`` saved in ``run_dir``; when the run has none, it is trained first (with a
    message saying so) and saved there. For local-only: the model of the largest training site.

    Returns:
        (model, training config).
    """
    run = TrainingRun(run_dir)
    if not run.has_model:
        print(f"{run.path(TrainingRun.MODEL)} not found: training {strategy} for {rounds} round(s) now "
              "(notebook 02 trains every strategy for the full comparison)")
        train_and_save(run_dir, cache_dir, strategy, config, rounds, local_epochs=local_epochs, distill=distill,
                       progress=False)
    model, trained_config, _ = run.load_model(device)
    if strategy == "local":
        strategy_state = LocalOnly()
        strategy_state.load_state_dict(run.load_state()["strategy"])
        site_models = strategy_state.site_models
        LocalOnly.load(model, site_models[_largest_site(Path(cache_dir), trained_config.seed, site_models)])
    return model, trained_config


def strategy_predictions(run_dir: str | Path, cache_dir: str | Path, strategy: str, config: TrainConfig, test_set,
                         **train_kwargs) -> pd.DataFrame:
    """Test-split predictions of a strategy's final model: the ones its training run saved when they cover exactly
    ``test_set``'s cases, else predicted now (training first if needed, see :func:`trained_model`).
    Local-only: the largest site's model."""
    run = TrainingRun(run_dir)
    saved = run.load_predictions() if run.has_model else None
    if saved is not None:
        name = "global" if set(saved["model"]) == {"global"} else _largest_site(Path(cache_dir), config.seed,
                                                                                 set(saved["model"]))
        chosen = saved[saved["model"] == name].drop(columns="model").reset_index(drop=True)
        if list(chosen["subject"]) == list(test_set.index["subject_id"]):
            return chosen
    model, _ = trained_model(run_dir, cache_dir, strategy, config, **train_kwargs)
    return predict(model, test_set, device=config.device, progress=False)
