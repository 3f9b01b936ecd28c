"""gliofed.experiments.claims: claim sentences from results files, and the README's block generated from them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from gliofed.experiments import claims

ROOT = Path(__file__).resolve().parents[2]


def _row(diff, lo, hi, **extra):
    return {"a": "distill", "b": "fedavg", "metric": "dice_WT", "diff": diff, "lo": lo, "hi": hi, "p": 0.01, "n": 10,
            **extra}


def test_a_difference_is_claimed_only_where_its_seed_level_interval_excludes_zero():
    assert claims.difference_sentence(_row(0.05, 0.01, 0.09)).endswith("distillation is higher.")
    assert claims.difference_sentence(_row(-0.05, -0.09, -0.01)).endswith("distillation is lower.")
    straddling = claims.difference_sentence(_row(0.05, -0.01, 0.11))
    assert straddling.endswith("not shown.") and "[−0.01, +0.11]" in straddling and "10 seeds" in straddling
    assert claims.difference_sentence(_row(0.05, float("nan"), float("nan"), n=1)).endswith("not shown.")


def test_ratio_sentences_follow_the_preregistered_rule():
    row = _row(0, 0, 0, ratio=1.01, ratio_lo=0.96, ratio_hi=1.07, ratio_bounded=True)
    assert "target is met" in claims.ratio_sentence(row, 0.95) and "96–107 %" in claims.ratio_sentence(row, 0.95)
    assert "target is not shown" in claims.ratio_sentence(row, 0.98)
    assert "target is missed" in claims.ratio_sentence(row, 1.10)
    assert "not shown" in claims.ratio_sentence({**row, "ratio_bounded": False}, 0.95)


def test_the_readme_comparison_block_is_generated_from_the_results_csv():
    assert claims.main(["--root", str(ROOT), "--check"]) == 0
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert claims.readme_block(ROOT) in readme


def test_a_changed_results_csv_makes_the_readme_block_stale_and_the_generator_rewrites_it(tmp_path):
    source = Path(claims.README_SOURCE["per_seed"])
    (tmp_path / source.parent).mkdir(parents=True)
    frame = pd.read_csv(ROOT / source)
    frame.loc[frame["strategy"] == "distill", "dice_WT"] += 0.2  # another result
    frame.to_csv(tmp_path / source, index=False)
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    assert claims.main(["--root", str(tmp_path), "--check"]) == 1
    assert claims.main(["--root", str(tmp_path)]) == 0
    assert claims.main(["--root", str(tmp_path), "--check"]) == 0
    assert "distillation − FedAvg, Dice WT: +0.17" in (tmp_path / "README.md").read_text(encoding="utf-8")


def test_replace_block_needs_exactly_one_block():
    block = f"{claims.BLOCK_BEGIN}\nnew\n{claims.BLOCK_END}"
    assert claims.replace_block(f"a\n{claims.BLOCK_BEGIN}\nold\n{claims.BLOCK_END}\nb", block) == f"a\n{block}\nb"
    with pytest.raises(ValueError, match="exactly one"):
        claims.replace_block("no block here", block)
