import numpy as np
import pandas as pd
import pytest

from gliofed.data.dataset import CaseDataset
from gliofed.experiments import run_experiment
from gliofed.federated.protocol.payload import Payload
from gliofed.federated.server.strategies import FedAvg, FederationError
from gliofed.federated.simulate import simulate
from gliofed.federated.site import Site
from tests.federated.helpers import small_config


class _FaultySite:
    """A site stand-in that fails in a chosen way."""

    def __init__(self, name, mode):
        self.name, self.mode = name, mode

    def handle(self, task, model, settings):
        if self.mode == "raises":
            raise RuntimeError("disk on fire")
        arrays = dict(model.arrays)
        if self.mode == "nan":
            first = next(k for k, v in arrays.items() if v.dtype.kind == "f")
            arrays[first] = np.full_like(arrays[first], np.nan)
        if self.mode == "oversized":
            arrays["w:padding"] = np.zeros(20_000_000, np.uint8)
        return Payload("weights_update", arrays, {"site": self.name, "n_cases": 3, "loss": 0.0})

    def raw_bytes(self):
        return 0


def test_failing_sites_are_left_out_with_reasons_and_the_round_proceeds(tiny_cache):
    sites = [Site("brats21", tiny_cache), Site("upenn", tiny_cache), _FaultySite("broken", "raises"),
             _FaultySite("nan", "nan"), _FaultySite("huge", "oversized")]
    test = CaseDataset(tiny_cache, split="test")
    _, history = simulate(FedAvg(1), sites, test, small_config(), rounds=1, min_sites=2,
                          max_payload_bytes=10_000_000, progress=False)
    excluded = history.rounds[0]["excluded"]
    assert excluded["broken"] == "RuntimeError: disk on fire"
    assert "NaN or Inf" in excluded["nan"]
    assert "exceeds the limit of 10,000,000 bytes" in excluded["huge"]
    assert set(excluded) == {"broken", "nan", "huge"}
    assert history.to_frame()["sites_answered"].iloc[0] == 2


def test_too_few_sites_stop_the_run_with_a_clear_error(tiny_cache):
    sites = [Site("brats21", tiny_cache), _FaultySite("broken", "raises")]
    with pytest.raises(FederationError, match="round 1: only 1 of 2 sites answered \\(min_sites=2\\)"):
        simulate(FedAvg(1), sites, CaseDataset(tiny_cache, split="test"), small_config(), rounds=1, min_sites=2,
                 progress=False)


def test_resume_ends_with_exactly_the_metrics_of_an_uninterrupted_run(tiny_cache, tmp_path):
    config = small_config(seed=3)
    _, full = run_experiment(tiny_cache, "fedavg", config, rounds=2, progress=False)
    run_experiment(tiny_cache, "fedavg", config, rounds=1, checkpoint_dir=tmp_path, progress=False)
    _, resumed = run_experiment(tiny_cache, "fedavg", config, rounds=2, checkpoint_dir=tmp_path, resume=True,
                                progress=False)
    metrics = [c for c in full.to_frame().columns if c.startswith(("dice_", "auc_", "bytes_"))]
    assert len(resumed.rounds) == 2
    pd.testing.assert_frame_equal(resumed.to_frame()[metrics], full.to_frame()[metrics], check_exact=True)


@pytest.mark.parametrize("strategy", ["centralized", "local", "fedavg", "fedprox", "distill"])
def test_every_strategy_records_metrics_and_bytes_per_site(tiny_cache, strategy):
    _, history = run_experiment(tiny_cache, strategy, small_config(), rounds=1,
                                distill={"steps": 1, "server_epochs": 1}, progress=False)
    frame, sites = history.to_frame(), history.site_frame()
    assert len(frame) == 1 and {"dice_WT", "auc_idh", "auc_grade", "wall_s"} <= set(frame.columns)
    assert set(sites["site"]) >= {"brats21", "upenn", "tcga_gbm", "tcga_lgg", "rembrandt"}
    up = frame["bytes_up"].iloc[0]
    if strategy == "local":
        assert up == 0 and frame["bytes_down"].iloc[0] == 0
    elif strategy == "centralized":
        assert up > 0 and frame["bytes_down"].iloc[0] == 0
    else:
        assert up > 0 and frame["bytes_down"].iloc[0] > 0


def test_distillation_uploads_less_than_fedavg_on_the_same_sites(tiny_cache):
    _, fedavg = run_experiment(tiny_cache, "fedavg", small_config(), rounds=1, progress=False)
    _, distill = run_experiment(tiny_cache, "distill", small_config(), rounds=1,
                                distill={"steps": 1, "server_epochs": 1}, progress=False)
    assert distill.to_frame()["bytes_up"].iloc[0] < fedavg.to_frame()["bytes_up"].iloc[0]


def test_a_run_saved_before_a_setting_existed_resumes_with_that_settings_default():
    from gliofed.config import TrainConfig
    from gliofed.errors import ConfigError
    from gliofed.federated.simulate import check_resume

    strategy = FedAvg()
    older = {key: value for key, value in small_config().to_dict().items() if key not in ("augment_on", "eval_batch")}
    state = {"config": older, "strategy": {"identity": strategy.identity()}}
    check_resume(state, strategy, small_config(), "run")  # the defaults are what that older gliofed did
    with pytest.raises(ConfigError, match="augment_on 'auto' \\(now 'device'\\)"):
        check_resume(state, strategy, small_config(augment_on="device"), "run")
    assert TrainConfig().eval_batch == "auto"
