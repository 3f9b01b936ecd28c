"""The comparison's read-back: notebooks reuse the predictions a training run saved, and only when they fit the
test split."""

import pandas as pd
import pytest

from gliofed.data import CaseDataset
from gliofed.experiments import comparison
from gliofed.presets import train_preset
from gliofed.runs import TrainingRun
from gliofed.workspace import Workspace


@pytest.fixture
def workspace(tiny_cache, tmp_path):
    (tmp_path / "cache_32").symlink_to(tiny_cache)
    return Workspace(tmp_path, "tiny", 32)


def save_predictions(ws, strategy, subjects, models=("global",)):
    folder = ws.runs / strategy
    folder.mkdir(parents=True)
    (folder / TrainingRun.MODEL).write_bytes(b"placeholder")
    rows = [{"subject": s, "site": "x", "model": m, "p_idh_1": k + i / 1000}  # the integer part names the model
            for k, m in enumerate(models) for i, s in enumerate(subjects)]
    pd.DataFrame(rows).to_csv(folder / TrainingRun.PREDICTIONS, index=False)


class Retrained(Exception):
    pass


def refuse_training(*args, **kwargs):
    raise Retrained


def test_saved_predictions_are_reused(workspace, monkeypatch):
    test = CaseDataset(workspace.cache, split="test")
    save_predictions(workspace, "fedavg", list(test.index["subject_id"]))
    monkeypatch.setattr(comparison, "trained_model", refuse_training)
    table = comparison.strategy_predictions(workspace.runs / "fedavg", workspace.cache, "fedavg",
                                         train_preset("tiny"), test)
    assert list(table["subject"]) == list(test.index["subject_id"]) and "model" not in table


def test_local_only_uses_the_largest_site(workspace, monkeypatch):
    test = CaseDataset(workspace.cache, split="test")
    train = CaseDataset(workspace.cache, split="train")
    largest = train.index["site"].value_counts().idxmax()
    save_predictions(workspace, "local", list(test.index["subject_id"]), models=sorted(train.sites))
    monkeypatch.setattr(comparison, "trained_model", refuse_training)
    table = comparison.strategy_predictions(workspace.runs / "local", workspace.cache, "local",
                                         train_preset("tiny"), test)
    assert len(table) == len(test)
    assert set(table["p_idh_1"].astype(int)) == {sorted(train.sites).index(largest)}


def test_predictions_for_another_split_are_not_reused(workspace, monkeypatch):
    test = CaseDataset(workspace.cache, split="test")
    save_predictions(workspace, "fedavg", list(test.index["subject_id"])[:-1])
    monkeypatch.setattr(comparison, "trained_model", refuse_training)
    with pytest.raises(Retrained):
        comparison.strategy_predictions(workspace.runs / "fedavg", workspace.cache, "fedavg",
                                         train_preset("tiny"), test)


def test_prepare_readies_cohort_and_cache_and_returns_the_presets_training_config(workspace, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(Workspace, "ensure_cohort", lambda self, seed: calls.append(("cohort", seed)))
    monkeypatch.setattr(Workspace, "ensure_cache", lambda self: calls.append(("cache", self.size)) or "cache report")
    ws, config = Workspace.prepare(workspace.data_dir, "tiny", seed=3, device="cpu")
    assert calls == [("cohort", 3), ("cache", 32)] and "cache report" in capsys.readouterr().out
    assert ws.cache == workspace.cache and ws.distill == {"steps": 2, "server_epochs": 2}
    assert config == train_preset("tiny", seed=3, device="cpu")


def test_an_unknown_preset_is_an_error_not_a_fallback(tmp_path):
    from gliofed.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        Workspace.resolve(tmp_path, "huge")
