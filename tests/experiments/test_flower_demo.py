"""Notebook 05's Flower app folder for the installed gliofed: the same apps and run config as the repository's."""

from __future__ import annotations

from pathlib import Path

import tomllib

from gliofed.experiments.flower_demo import bytes_per_round, flower_app

ROOT = Path(__file__).resolve().parents[2]


def test_the_app_folder_names_the_repositorys_apps_and_run_config(tmp_path):
    written = tomllib.loads((flower_app(tmp_path / "app") / "pyproject.toml").read_text())
    repository = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert written["tool"]["flwr"]["app"] == repository["tool"]["flwr"]["app"]
    assert {"name", "version"} <= set(written["project"])


def test_the_app_folder_passes_flowers_own_validation(tmp_path):
    import pytest

    pytest.importorskip("flwr")
    from flwr.common.config import validate_fields_in_config

    ok, errors, _ = validate_fields_in_config(tomllib.loads((flower_app(tmp_path) / "pyproject.toml").read_text()))
    assert ok, errors


def test_bytes_per_round_has_one_row_per_round_and_site():
    history = {"strategy": "fedavg", "rounds": [
        {"round": 1, "bytes_up": {"a": 5, "b": 6}, "bytes_down": {"a": 7, "b": 7}, "excluded": {}},
        {"round": 2, "bytes_up": {"a": 5, "b": 0}, "bytes_down": {"a": 7, "b": 7}, "excluded": {"b": "refused"}}]}
    table = bytes_per_round(history)
    assert list(table["site"]) == ["a", "b", "a", "b"] and table["bytes_up"].sum() == 16
    assert list(table["excluded"]) == ["", "", "", "refused"] and set(table["strategy"]) == {"fedavg"}
