"""Issue 29, points 3 and 4: a resume is a contract over the data, and a hostile site's weights cannot poison the
global model. Each test failed on ff76219 (the numbers are the issue's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gliofed.federated.protocol import Payload, PayloadError, state_to_arrays, validate_reply
from gliofed.federated.server.rounds import federated_round
from gliofed.federated.server.strategies import FedAvg, make_strategy
from tests.federated.helpers import small_config, small_model


def _update(start, delta, site, n_cases=4):
    arrays = {k: (v + delta).astype(v.dtype) if v.dtype.kind == "f" else v.copy() for k, v in start.items()}
    return Payload("weights_update", arrays, {"site": site, "n_cases": n_cases, "loss": 1.0})


def _round(model, replies, strategy=None):
    """One fedavg round in which each site answers with its prepared reply."""
    def exchange(requests):
        return {site: replies[site] for site in requests}

    return federated_round(strategy or make_strategy("fedavg"), model, 1, list(replies), small_config(), exchange)


@pytest.fixture
def start():
    torch.manual_seed(0)
    model = small_model()
    return model, state_to_arrays(model)


# 4. FedAvg accepts a negative variance, and weights of 1e30 -------------------------------------------------------
def test_a_weights_update_with_a_negative_running_variance_is_refused(start):
    _, arrays = start
    reply = _update(arrays, 0.1, "a")
    key = next(k for k in reply.arrays if k.endswith("running_var"))
    reply.arrays[key] = np.full_like(reply.arrays[key], -50.0)
    with pytest.raises(PayloadError, match=rf"'{key}' holds a negative variance"):
        validate_reply(reply, "weights_update", arrays)


def test_a_weights_update_far_beyond_the_sent_model_is_refused(start):
    _, arrays = start
    reply = _update(arrays, 0.1, "a")
    key = next(k for k, v in reply.arrays.items() if v.dtype.kind == "f" and v.ndim > 1)
    reply.arrays[key] = np.full_like(reply.arrays[key], 1e30)
    with pytest.raises(PayloadError, match=rf"'{key}' reaches 1e\+30, beyond"):
        validate_reply(reply, "weights_update", arrays)


def test_an_honest_update_passes_the_value_checks(start):
    _, arrays = start
    validate_reply(_update(arrays, 0.5, "a"), "weights_update", arrays)


@pytest.mark.parametrize("poison", ["negative_variance", "weights_1e30"])
def test_a_poisoned_site_cannot_make_the_default_global_model_non_finite(start, poison):
    model, arrays = start
    bad = _update(arrays, 0.0, "b_bad")
    for key, value in bad.arrays.items():
        if poison == "negative_variance" and key.endswith("running_var"):
            bad.arrays[key] = np.full_like(value, -50.0)
        if poison == "weights_1e30" and value.dtype.kind == "f":
            bad.arrays[key] = np.full_like(value, 1e30)
    result = _round(model, {"a_honest": _update(arrays, 0.5, "a_honest"), "b_bad": bad})
    assert list(result.excluded) == ["b_bad"]
    after = state_to_arrays(model)
    assert all(np.isfinite(v).all() for v in after.values() if v.dtype.kind == "f")
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, 4, 3, 8, 8) + 0.3)
    assert all(bool(torch.isfinite(v).all()) for v in out.values())
    key = next(k for k, v in arrays.items() if v.dtype.kind == "f")
    np.testing.assert_allclose(after[key], arrays[key] + 0.5, rtol=1e-6)  # the honest site's weights alone


def _scaled_round(start, aggregation, honest_deltas, scale=50.0):
    """Honest sites move every weight by a small delta; one site sends its update scaled ``scale`` times (within
    the validation bound, so only the aggregation can resist it). Returns (honest deltas' median, the result's)."""
    model, arrays = start
    replies = {f"h{i}": _update(arrays, delta, f"h{i}") for i, delta in enumerate(honest_deltas)}
    replies["z_scaled"] = _update(arrays, scale * max(honest_deltas), "z_scaled", n_cases=40)
    result = _round(model, replies, make_strategy("fedavg", aggregation=aggregation))
    assert not result.excluded  # a scaled update is a valid reply: the aggregation must deal with it
    key = next(k for k, v in arrays.items() if v.dtype.kind == "f" and not k.endswith(("running_mean", "running_var")))
    moved = state_to_arrays(model)[key] - arrays[key]
    return float(np.median(honest_deltas)), float(np.max(np.abs(moved)))


def test_the_weighted_mean_follows_a_site_that_sends_scaled_updates(start):
    honest, moved = _scaled_round(start, "mean", [0.01, 0.02, 0.03])
    assert moved > 0.5  # the scaled site pulls the mean towards its 1.5 (its claimed 40 cases weigh most)


def test_the_coordinate_median_resists_a_site_that_sends_scaled_updates(start):
    honest, moved = _scaled_round(start, "median", [0.01, 0.02, 0.03])
    assert moved == pytest.approx(0.025, abs=1e-6)  # the median of 0.01, 0.02, 0.03 and 1.5


def test_the_trimmed_mean_resists_a_site_that_sends_scaled_updates(start):
    honest, moved = _scaled_round(start, "trimmed-mean", [0.01, 0.02, 0.03, 0.04])
    assert moved == pytest.approx(0.03, abs=1e-6)  # 0.01 and 1.5 cut, mean of 0.02, 0.03, 0.04


def test_an_unknown_aggregation_or_one_for_another_strategy_is_refused():
    from gliofed.errors import ConfigError

    with pytest.raises(ConfigError, match="aggregation 'mode' is not one of mean, median, trimmed-mean"):
        FedAvg(aggregation="mode")
    with pytest.raises(ConfigError, match="applies to fedavg and fedprox, not distill"):
        make_strategy("distill", aggregation="median")


# 3. resume does not check the data ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """Two six-case cohorts of the same sites with different scans (seeds 0-5 and 10-15) and labels, and a fedavg
    run of one round on the first (``A``, treat as read-only: copy it)."""
    from tests.conftest import write_case, write_manifest_rows

    root = tmp_path_factory.mktemp("resume")
    manifests = []
    for name, offset in (("T", 0), ("T2", 10)):
        rows = []
        for i in range(6):
            subject = f"s{i}"
            rows.append({"subject_id": subject, "dataset": "fixture", "site": "ab"[i % 2],
                         **write_case(root / name / subject, subject, seed=i + offset),
                         "idh": str((i + offset // 10) % 2), "split": "test" if i >= 4 else "train"})
        manifests.append(write_manifest_rows(root / name / "manifest.csv", rows))
    assert _train(manifests[0], root / "A", "--rounds", "1") == 0
    return manifests[0], manifests[1], root / "A"


def _train(manifest, out, *extra, cache="cache"):
    """``gliofed train`` (fedavg, tiny preset, size 8 unless ``extra`` says otherwise) into ``out``, with the cache
    ``<manifest dir>/<cache>`` (None: the default, ``<manifest dir>/cache_<size>``)."""
    from gliofed.cli import main

    size = [] if "--size" in extra else ["--size", "8"]
    folder = [] if cache is None else ["--cache", str(manifest.parent / cache)]
    return main(["train", str(manifest), "--strategy", "fedavg", "--preset", "tiny", *size, "--out", str(out),
                 *folder, *extra])


def _copy(run, tmp_path):
    import shutil

    return shutil.copytree(run, tmp_path / "A")


def test_resume_on_another_cohort_is_refused_naming_what_changed(cohorts, tmp_path, capsys):
    _, second, trained = cohorts
    run = _copy(trained, tmp_path)
    history = (run / "history.csv").read_text()
    capsys.readouterr()
    code = _train(second, run, "--rounds", "2", "--resume")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"cannot resume {run}: it was started with manifest fingerprint" in err
    assert (run / "history.csv").read_text() == history  # one test set in one history


def test_resume_at_another_size_is_refused_naming_it(cohorts, tmp_path, capsys):
    first, _, trained = cohorts
    run = _copy(trained, tmp_path)
    capsys.readouterr()
    code = _train(first, run, "--rounds", "2", "--resume", "--size", "7", cache=None)  # its own cache_7
    assert code == 2 and "in-plane size 8 (now 7)" in capsys.readouterr().err
    assert not (first.parent / "cache_7").exists()  # refused before the cache


def test_resume_with_another_aggregation_is_refused(cohorts, tmp_path, capsys):
    first, _, trained = cohorts
    run = _copy(trained, tmp_path)
    capsys.readouterr()
    code = _train(first, run, "--rounds", "2", "--resume", "--aggregation", "median")
    assert code == 2 and "server aggregation mean (now {'aggregation': 'median'" in capsys.readouterr().err


def test_resume_on_the_same_data_goes_on(cohorts, tmp_path):
    first, _, trained = cohorts
    run = _copy(trained, tmp_path)
    assert _train(first, run, "--rounds", "2", "--resume") == 0
    assert len((run / "history.csv").read_text().strip().splitlines()) == 3  # header + two rounds


def test_other_scans_under_the_same_manifest_are_refused_by_the_cached_cases(cohorts, tmp_path):
    from gliofed.data.cache import preprocess
    from gliofed.errors import ConfigError
    from gliofed.experiments import run_experiment

    first, second, _ = cohorts
    caches = [tmp_path / "c1", tmp_path / "c2"]
    for manifest, cache in zip((first, second), caches):
        preprocess(manifest, cache, size=8, progress=False)
    config = small_config(epochs=1)
    run_experiment(caches[0], "fedavg", config, 1, checkpoint_dir=tmp_path / "R", progress=False)
    with pytest.raises(ConfigError, match=r"cached cases fingerprint '[0-9a-f]{16}' \(now '[0-9a-f]{16}'\)"):
        run_experiment(caches[1], "fedavg", config, 2, checkpoint_dir=tmp_path / "R", resume=True, progress=False)
