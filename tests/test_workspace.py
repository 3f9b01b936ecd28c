"""Workspace: notebooks reuse the predictions a training run saved, and only when they fit the test split."""

import pandas as pd
import pytest

from gliofed.config import train_preset
from gliofed.data import CaseDataset
from gliofed.federated.simulate import PREDICTIONS_FILE
from gliofed.workspace import Workspace


@pytest.fixture
def workspace(tiny_cache, tmp_path):
    (tmp_path / "cache_32").symlink_to(tiny_cache)
    return Workspace(tmp_path, "tiny", 32)


def save_predictions(ws, strategy, subjects, models=("global",)):
    folder = ws.runs / strategy
    folder.mkdir(parents=True)
    (folder / "model.ckpt").write_bytes(b"placeholder")
    rows = [{"subject": s, "site": "x", "model": m, "p_idh_1": k + i / 1000}  # the integer part names the model
            for k, m in enumerate(models) for i, s in enumerate(subjects)]
    pd.DataFrame(rows).to_csv(folder / PREDICTIONS_FILE, index=False)


class Retrained(Exception):
    pass


def refuse_training(*args, **kwargs):
    raise Retrained


def test_saved_predictions_are_reused(workspace, monkeypatch):
    test = CaseDataset(workspace.cache, split="test")
    save_predictions(workspace, "fedavg", list(test.index["subject_id"]))
    monkeypatch.setattr(Workspace, "trained_model", refuse_training)
    table = workspace.test_predictions("fedavg", train_preset("tiny"), test)
    assert list(table["subject"]) == list(test.index["subject_id"]) and "model" not in table


def test_local_only_uses_the_largest_site(workspace, monkeypatch):
    test = CaseDataset(workspace.cache, split="test")
    train = CaseDataset(workspace.cache, split="train")
    largest = train.index["site"].value_counts().idxmax()
    save_predictions(workspace, "local", list(test.index["subject_id"]), models=sorted(train.sites))
    monkeypatch.setattr(Workspace, "trained_model", refuse_training)
    table = workspace.test_predictions("local", train_preset("tiny"), test)
    assert len(table) == len(test)
    assert set(table["p_idh_1"].astype(int)) == {sorted(train.sites).index(largest)}


def test_predictions_for_another_split_are_not_reused(workspace, monkeypatch):
    test = CaseDataset(workspace.cache, split="test")
    save_predictions(workspace, "fedavg", list(test.index["subject_id"])[:-1])
    monkeypatch.setattr(Workspace, "trained_model", refuse_training)
    with pytest.raises(Retrained):
        workspace.test_predictions("fedavg", train_preset("tiny"), test)
