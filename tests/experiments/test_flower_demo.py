"""Notebook 05's Flower app folder for the installed gliofed: the same apps and run config as the repository's."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from gliofed.experiments.flower_demo import bytes_per_round, flower_app, wire_gap

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


def test_wire_gap_lines_up_two_runs_by_round_site_and_direction():
    simulated = [{"round": 1, "bytes_up": {"a": 100, "b": 90}, "bytes_down": {"a": 50, "b": 50}},
                 {"round": 2, "bytes_up": {"a": 101, "b": 90}, "bytes_down": {"a": 50, "b": 50}}]
    flower = [{"round": 1, "bytes_up": {"a": 100, "b": 90}, "bytes_down": {"a": 50, "b": 50}},
              {"round": 2, "bytes_up": {"a": 100}, "bytes_down": {"a": 50, "b": 50}}]  # b left out of round 2
    gap = wire_gap(simulated, flower)
    assert list(gap.columns) == ["round", "site", "direction", "simulator", "flower", "difference"]
    assert len(gap) == 8
    up = gap[(gap["round"] == 2) & (gap["direction"] == "up")].set_index("site")
    assert up.loc["a", "difference"] == -1 and up.loc["b", "difference"] == -90 and up.loc["b", "flower"] == 0
    assert (gap.loc[gap["round"] == 1, "difference"] == 0).all()
    with pytest.raises(ValueError):  # runs of different lengths are not compared round by round
        wire_gap(simulated, flower[:1])
    with pytest.raises(ValueError, match="round 1 of one run lined up with round 2"):
        wire_gap(simulated[:1], flower[1:])
