"""Provenance in model.json (versions, commit, training-data fingerprint) and the model card built from it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from gliofed.provenance import cases_fingerprint, git_commit

ROOT = Path(__file__).resolve().parents[1]


def _rows():
    return [{"subject_id": f"s{i}", "site": "ab"[i % 2], "split": "train", "idh": i % 2, "codeletion": -1, "mgmt": 1,
             "grade": 2, "has_mask": True, "image_sha256": f"{i:064x}", "seg_sha256": ""} for i in range(6)]


def test_the_fingerprint_ignores_row_order_and_sees_any_changed_label_or_file():
    rows = _rows()
    first = cases_fingerprint(rows)
    assert cases_fingerprint(list(reversed(rows)))["sha256"] == first["sha256"]
    assert first["cases"] == 6 and first["sites"] == {"a": 3, "b": 3} and first["known_labels"]["codeletion"] == 0
    for key, value in (("idh", 1 - rows[0]["idh"]), ("image_sha256", "f" * 64)):
        changed = [dict(r) for r in rows]
        changed[0][key] = value
        assert cases_fingerprint(changed)["sha256"] != first["sha256"], key


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_the_commit_is_recorded_inside_a_checkout():
    commit = git_commit(ROOT / "gliofed")
    assert re.fullmatch(r"[0-9a-f]{40}", commit["sha"]) and isinstance(commit["dirty"], bool)


def test_no_commit_outside_a_checkout_and_no_failure(tmp_path):
    copy = tmp_path / "gliofed"
    copy.mkdir()
    (copy / "__init__.py").write_text("")
    assert git_commit(copy) is None


@pytest.fixture
def trained(tiny_fedavg_run):
    return tiny_fedavg_run


def test_model_json_records_versions_commit_and_the_training_data(trained, tiny_cache):
    import monai
    import torch

    from gliofed import __version__
    from gliofed.data import CaseDataset

    provenance = json.loads((trained / "model.json").read_text())["provenance"]
    versions = provenance["versions"]
    assert (versions["gliofed"], versions["torch"], versions["monai"]) == (__version__, torch.__version__,
                                                                            monai.__version__)
    assert "commit" in provenance  # a sha in a checkout, null elsewhere
    train = CaseDataset(tiny_cache, split="train", seed=0)
    assert provenance["training_data"] == cases_fingerprint(train.index.to_dict(orient="records"))


def test_the_card_shows_provenance_data_metrics_thresholds_use_and_limits(trained, capsys, tmp_path):
    from gliofed.cli import main

    out = tmp_path / "card.md"
    assert main(["card", str(trained), "--bootstrap", "20", "--out", str(out)]) == 0
    card = capsys.readouterr().out
    data = json.loads((trained / "model.json").read_text())["provenance"]["training_data"]
    for heading in ("## Model", "## Data", "## Metrics", "## Decision thresholds", "## Intended use", "## Limits"):
        assert heading in card
    assert "Not for clinical use" in card and data["sha256"] in card
    assert all(f"| {site} | {n} |" in card for site, n in data["sites"].items())
    assert re.search(r"\| IDH \| \d+ \| [0-9.]+ \([0-9.]+-[0-9.]+\)", card)  # a metric with its interval
    assert "the F1-optimal point on the train split" in card or "fixed 0.5" in card
    assert out.read_text().strip() == card.strip().removesuffix(f"wrote {out}").strip()


def test_the_sources_fingerprint_follows_the_extra_files_and_the_package_versions():
    from gliofed.provenance import sources_fingerprint

    script = Path(__file__).resolve().parent / "_fingerprint_probe.py"  # inside the checkout, like a benchmark script
    try:
        script.write_text("x = 1\n")
        first = sources_fingerprint([script])
        assert sources_fingerprint([script]) == first  # deterministic
        script.write_text("x = 2\n")
        assert sources_fingerprint([script]) != first  # another script's code, another fingerprint
    finally:
        script.unlink(missing_ok=True)
    assert sources_fingerprint(packages=("torch",)) != sources_fingerprint(packages=("torch", "no-such-package"))
