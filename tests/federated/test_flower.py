"""Flower apps over a real SuperLink and SuperNodes on 127.0.0.1 (the session's shared ``loopback`` federation):
FedAvg and distillation federation for two rounds, the same payloads as the in-process simulator, every site's
validation metrics per round (federated evaluation, under each site's policy) and the device its node config names, a
SuperNode whose cache was made at another size refusing, a failing run, a node that drops out, and clean process
shutdown."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from gliofed.data import CaseDataset  # noqa: E402
from gliofed.experiments.flower_demo import wire_gap  # noqa: E402
from gliofed.federated.flower.launcher import FlowerRunError, LocalFederation  # noqa: E402
from gliofed.federated.server.strategies import make_strategy  # noqa: E402
from gliofed.federated.simulate import simulate  # noqa: E402
from gliofed.federated.site import Site  # noqa: E402
from gliofed.federated.site.policy import SitePolicy  # noqa: E402
from gliofed.model import MultiTaskUNet  # noqa: E402
from gliofed.presets import get_preset, train_preset  # noqa: E402
from gliofed.runs import load_checkpoint  # noqa: E402
from tests.conftest import LOOPBACK_NODES, restart_node  # noqa: E402

APP_DIR = Path(__file__).resolve().parents[2]  # the repository: its pyproject.toml carries [tool.flwr.app]
SITES = tuple(LOOPBACK_NODES)
os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
pytestmark = pytest.mark.flower


def simulated_rounds(cache, strategy: str, rounds: int = 2) -> list[dict]:
    """The round records of the same run in the in-process simulator, its sites under the SuperNodes' policies."""
    config = train_preset("tiny", seed=0, device="cpu")
    test = CaseDataset(cache, split="test", sites=list(SITES), seed=0)
    sites = [Site(name, cache, policy=SitePolicy.from_node_config(node)) for name, node in LOOPBACK_NODES.items()]
    _, history = simulate(make_strategy(strategy, distill=get_preset("tiny").distill, seed=0), sites, test, config,
                          rounds, progress=False)
    return history.rounds


def assert_same_wire(flower: list[dict], simulated: list[dict]) -> None:
    """The same payloads as the simulator's: the same model down, byte for byte; the same reply up, byte for byte
    except the mean training loss a FedAvg reply's meta.json carries as decimal text (two processes' float32 training
    may differ in its last bits on some CPUs, as on CI on 2026-12-05), so an upload differs by exactly the difference
    in length of that text; the losses themselves agree to 0.1 %."""
    gap = wire_gap(simulated, flower)
    assert len(gap) == 2 * len(SITES) * len(flower)  # every site, both directions, every round
    assert (gap.loc[gap["direction"] == "down", "difference"] == 0).all(), gap
    for mine, theirs in zip(simulated, flower):
        ours, over_flower = ((r.get("info") or {}).get("site_loss", {}) for r in (mine, theirs))
        assert ours.keys() == over_flower.keys()
        if ours:  # FedAvg's replies report a loss; a distilled set does not
            assert over_flower == pytest.approx(ours, rel=1e-3)
        up = gap[(gap["round"] == theirs["round"]) & (gap["direction"] == "up")].set_index("site")["difference"]
        for site in SITES:
            text = len(json.dumps(over_flower[site])) - len(json.dumps(ours[site])) if site in ours else 0
            assert up[site] == text, (theirs["round"], site, up[site], text)


def initial_model():
    torch.manual_seed(0)
    from monai.utils import set_determinism

    set_determinism(seed=0)
    return MultiTaskUNet(**train_preset("tiny").model)


@pytest.mark.parametrize("strategy", ["fedavg", "distill"])
def test_two_rounds_over_flower_match_the_simulator(loopback, tiny_cache, tmp_path, strategy):
    history = loopback.run({"strategy": strategy, "num-server-rounds": 2, "preset": "tiny", "min-nodes": 2,
                              "round-timeout": 300, "out-dir": str(tmp_path / strategy)}, timeout=480)
    assert [r["round"] for r in history["rounds"]] == [1, 2]
    assert all(not r["excluded"] for r in history["rounds"])
    assert_same_wire(history["rounds"], simulated_rounds(tiny_cache, strategy))
    held_out = CaseDataset(tiny_cache, split="test", sites=list(SITES), seed=0).index["site"].value_counts()
    for record in history["rounds"]:  # federated evaluation: each site's metrics on its own held-out cases
        # upenn's operator allows metrics of one case; brats21's default policy (3 at least) refuses them
        assert set(record["site_metrics"]) == {"upenn"} and list(record["evaluation_excluded"]) == ["brats21"]
        assert "refuses the 'evaluate' request" in record["evaluation_excluded"]["brats21"]
        assert record["site_metrics"]["upenn"]["n_cases"] == held_out["upenn"]
        assert 0 <= record["site_metrics"]["upenn"]["dice_WT"] <= 1
    assert {s: d["device"] for s, d in history["sites"].items()} == dict.fromkeys(SITES, "cpu")
    assert history["preprocessing"]["size"] == 32
    model, _, checkpoint = load_checkpoint(tmp_path / strategy / "model.safetensors")
    assert checkpoint["extra"]["engine"] == "flower"
    assert checkpoint["preprocessing"]["size"] == 32  # the sites' caches' record, not a run-config default
    before = initial_model().state_dict()
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert len(changed) > 10  # trained, not the initial weights
    assert np.all([torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()])


def test_supernodes_whose_caches_were_made_at_another_size_refuse_in_one_sentence(loopback, tmp_path):
    running = dict(loopback.processes)
    with pytest.raises(FlowerRunError) as failed:
        loopback.run({"strategy": "fedavg", "num-server-rounds": 1, "preset": "tiny", "min-nodes": 2, "size": 24,
                      "connect-timeout": 60, "out-dir": str(tmp_path / "out")}, timeout=240)
    assert "only 0 of 2 SuperNodes take part" in str(failed.value)
    assert "was preprocessed with 32x32 in-plane but this federation expects 24x24" in str(failed.value)
    assert not (tmp_path / "out" / "model.safetensors").exists()
    assert loopback.processes == running and all(p.poll() is None for p in running.values())


def test_a_failing_run_is_reported_and_the_federation_keeps_serving(loopback, tmp_path):
    running = dict(loopback.processes)
    with pytest.raises(FlowerRunError, match="failed"):  # centralized needs pooled scans: the ServerApp refuses it
        loopback.run({"strategy": "centralized", "num-server-rounds": 1, "preset": "tiny", "min-nodes": 1,
                      "out-dir": str(tmp_path / "out")}, timeout=120)
    assert loopback.processes == running and all(p.poll() is None for p in running.values())


def test_processes_are_stopped_when_the_block_fails(tmp_path):
    fed = LocalFederation(APP_DIR, tmp_path / "work")
    with pytest.raises(FlowerRunError, match="no such run"), fed:
        fed.start_superlink()
        started = list(fed.processes.values())
        raise FlowerRunError("no such run")
    assert started and all(p.poll() is not None for p in started) and not fed.processes


def test_a_node_that_disappears_mid_run_is_left_out_and_the_round_finishes(loopback, tiny_cache, tmp_path):
    pids = {name: p.pid for name, p in loopback.processes.items()}
    stopped = loopback.processes["supernode-upenn"]

    def drop_upenn_after_round_one(history):
        if len(history["rounds"]) == 1 and "supernode-upenn" in loopback.processes:
            loopback.stop_site("upenn")

    try:
        history = loopback.run({"strategy": "fedavg", "num-server-rounds": 2, "preset": "tiny", "min-nodes": 2,
                                "min-sites": 1, "round-timeout": 240, "out-dir": str(tmp_path / "out")},
                               timeout=480, on_poll=drop_upenn_after_round_one)
        logs = loopback.logs()
    finally:
        restart_node(loopback, "upenn", tiny_cache)  # the shared federation serves the next test whole
    assert "round 2: site upenn left out" in logs
    first, second = history["rounds"]
    assert not first["excluded"] and set(first["bytes_up"]) == set(SITES)
    assert set(second["excluded"]) == {"upenn"} and second["bytes_up"]["brats21"] > 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert stopped.poll() is not None  # the node we stopped is gone, not orphaned
    assert set(pids) == {"superlink", "supernode-brats21", "supernode-upenn"}


def test_flags_follow_the_installed_flower(tmp_path, monkeypatch):
    import gliofed.federated.flower.launcher as launcher

    monkeypatch.setattr(launcher, "flower_version", lambda: (1, 41))
    new = LocalFederation(APP_DIR, tmp_path / "new")
    assert new.superlink_args()[:5] == ["--insecure", "--host", "127.0.0.1", "--port", str(new.fleet)]
    assert "--port" in new.supernode_args('site="a"') and new.control == new.fleet
    monkeypatch.setattr(launcher, "flower_version", lambda: (1, 27))
    old = LocalFederation(APP_DIR, tmp_path / "old")
    assert "--fleet-api-address" in old.superlink_args() and "--clientappio-api-address" in old.supernode_args("")
    assert len({old.fleet, old.control, old.serverappio}) == 3
