"""The loopback federation works from a Jupyter kernel (notebook 05): the kernel's FORCE_COLOR would make `flwr`
answer in colour codes that its JSON parser cannot read."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr")

from gliofed.federated.flower.launcher import LocalFederation  # noqa: E402


def test_the_processes_it_starts_print_plain_text(tmp_path, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # what ipykernel sets
    monkeypatch.setenv("CLICOLOR_FORCE", "1")
    env = LocalFederation(tmp_path, tmp_path / "work").env
    assert "FORCE_COLOR" not in env and "CLICOLOR_FORCE" not in env and env["NO_COLOR"] == "1"
