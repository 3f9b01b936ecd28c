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


def test_a_ratio_target_over_a_denominator_not_above_zero_is_not_shown():
    # both arms below chance: Fieller's interval is bounded and above 0.95, but "a >= 0.95 x b" means nothing
    row = _row(0, 0, 0, metric="auc_mean_above_chance", ratio=1.41, ratio_lo=1.1, ratio_hi=1.8, ratio_bounded=True)
    assert "target is met" in claims.ratio_sentence(row, 0.95)
    text = claims.ratio_sentence(row, 0.95, denominator=-0.08)
    assert text.endswith("target is not shown.") and "FedAvg's mean is -0.08, not above 0" in text


def test_ratio_sentences_follow_the_preregistered_rule():
    row = _row(0, 0, 0, ratio=1.01, ratio_lo=0.96, ratio_hi=1.07, ratio_bounded=True)
    assert "target is met" in claims.ratio_sentence(row, 0.95) and "96–107 %" in claims.ratio_sentence(row, 0.95)
    assert "target is not shown" in claims.ratio_sentence(row, 0.98)
    assert "target is missed" in claims.ratio_sentence(row, 1.10)
    assert "not shown" in claims.ratio_sentence({**row, "ratio_bounded": False}, 0.95)


def test_an_unbounded_ratio_gives_the_two_means_not_a_percentage():
    # FedAvg's mean above chance is positive but not told from 0: a ratio of -52 % would say nothing
    row = _row(-0.05, -0.10, -0.001, metric="auc_mean_above_chance", ratio=-0.519, ratio_lo=float("-inf"),
               ratio_hi=float("inf"), ratio_bounded=False)
    text = claims.ratio_sentence(row, 0.95, denominator=0.033, numerator=-0.017)
    assert text == ("distillation's mean marker AUC above chance is −0.02 against FedAvg's +0.03 over 10 seeds: the "
                    "ratio's Fieller interval is unbounded (FedAvg's mean cannot be told from 0), so the ≥ 95 % "
                    "target is not shown.")
    assert "%" not in text.split("≥")[0]


def test_the_readme_and_results_comparison_blocks_are_generated_from_the_results_csv():
    assert claims.main(["--root", str(ROOT), "--check"]) == 0
    for name in claims.BLOCK_FILES:
        assert claims.readme_block(ROOT) in (ROOT / name).read_text(encoding="utf-8")


def _prereg_rows(seeds, cohort="workshop", distill_wt=0.70):
    rows = []
    for seed in seeds:
        named = {"distill": (0.80, distill_wt), "fedavg": (0.70, 0.70), "distill_0step": (0.60, 0.70),
                 "centralized": (0.85, 0.80), "probe_summary": (0.84, float("nan"))}
        every = dict.fromkeys([*claims.PREREG_ARMS, *(x for pair in claims.PREREG_PAIRS for x in pair)], (0.6, 0.6))
        for arm, (auc, wt) in {**every, **named}.items():
            rows.append({"cohort": cohort, "seed": seed, "arm": arm, "labels": "truth",
                         "auc_mean": auc + 0.01 * seed, "auc_mean_above_chance": auc + 0.01 * seed - 0.5,
                         "dice_WT": wt + 0.01 * (seed % 2), "dice_TC": 0.3, "commit": "abc123",
                         "device": "CPU (test)", "finished": f"2026-12-05T08:{seed % 60:02d}:00+00:00"})
    frame = pd.DataFrame(rows)
    return frame.reindex(columns=[*frame.columns, "auc_idh", "auc_codeletion", "auc_mgmt", "auc_grade", "dice_ET"])


def test_a_changed_results_csv_makes_the_readme_block_stale_and_the_generator_rewrites_it(tmp_path):
    source = Path(claims.README_SOURCE["per_seed"])
    (tmp_path / source.parent).mkdir(parents=True)
    for name in claims.BLOCK_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    seeds = claims.README_SOURCE["seeds"]
    _prereg_rows(seeds).to_csv(tmp_path / source, index=False)
    assert claims.main(["--root", str(tmp_path), "--check"]) == 1
    assert claims.main(["--root", str(tmp_path)]) == 0
    assert claims.main(["--root", str(tmp_path), "--check"]) == 0
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "distillation − FedAvg, mean marker AUC: +0.10 [+0.10, +0.10]" in text and "Code commit abc123" in text
    assert "**Cohort `hard`**: no results yet" in text
    _prereg_rows(seeds, distill_wt=0.90).to_csv(tmp_path / source, index=False)  # another result
    assert claims.main(["--root", str(tmp_path), "--check"]) == 1
    assert claims.main(["--root", str(tmp_path)]) == 0
    for name in claims.BLOCK_FILES:
        assert "distillation − FedAvg, Dice WT: +0.20" in (tmp_path / name).read_text(encoding="utf-8")


def test_a_cohort_missing_a_preregistered_seed_is_reported_incomplete_and_claims_nothing():
    per_seed = pd.concat([_prereg_rows(range(200, 210)), _prereg_rows(range(200, 206), cohort="hard")])
    block = claims.front_door(per_seed, "Test.", cohort=("workshop", "hard"), arms=claims.PREREG_ARMS,
                              pairs=claims.PREREG_PAIRS, ratios=claims.PREREG_RATIOS, readings=True,
                              seeds_required=range(200, 210))
    workshop, hard = block.split("**Cohort `hard`**")
    assert "distillation − FedAvg" in workshop
    assert "probe, Dice WT" not in workshop  # a probe has no Dice: no sentence rather than "too few seeds"
    assert hard.startswith(": run incomplete (6 of 10 preregistered seeds finished with every arm); nothing is "
                           "claimed for it yet.")
    assert "distillation" not in hard
    # a seed where only some arms finished (the merge writes the finished ones) is not a finished seed
    partial = pd.concat([_prereg_rows(range(200, 209)), _prereg_rows([209]).query("arm == 'probe_summary'")])
    block = claims.front_door(partial, "Test.", cohort="workshop", arms=claims.PREREG_ARMS, pairs=claims.PREREG_PAIRS,
                              ratios=claims.PREREG_RATIOS, seeds_required=range(200, 210))
    assert "run incomplete (9 of 10 preregistered seeds finished with every arm)" in block and "target" not in block
    # rows of seeds outside the preregistered ones are ignored
    extra = pd.concat([_prereg_rows(range(200, 210)), _prereg_rows([5], distill_wt=0.1)])
    block = claims.front_door(extra, "Test.", cohort="workshop", arms=claims.PREREG_ARMS, pairs=claims.PREREG_PAIRS,
                              ratios=claims.PREREG_RATIOS, seeds_required=range(200, 210))
    assert "over 10 seeds" in block and "over 11 seeds" not in block


def test_the_generator_stops_with_one_line_when_a_text_lacks_its_block(tmp_path, capsys):
    for name in claims.BLOCK_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("no block\n")
    assert claims.main(["--root", str(tmp_path), "--check"]) == 2
    assert "README.md: the text must hold exactly one comparison block" in capsys.readouterr().err


def test_without_the_results_file_the_readme_block_claims_nothing(tmp_path):
    block = claims.readme_block(tmp_path)
    assert "no results yet, and nothing is claimed" in block and "|" not in block


def test_replace_block_needs_exactly_one_block():
    block = f"{claims.BLOCK_BEGIN}\nnew\n{claims.BLOCK_END}"
    assert claims.replace_block(f"a\n{claims.BLOCK_BEGIN}\nold\n{claims.BLOCK_END}\nb", block) == f"a\n{block}\nb"
    with pytest.raises(ValueError, match="exactly one"):
        claims.replace_block("no block here", block)


def _difference(a, b, metric, diff, lo, hi):
    return {"a": a, "b": b, "metric": metric, "diff": diff, "lo": lo, "hi": hi, "p": 0.01, "n": 10,
            "verdict": "a > b" if lo > 0 else "a < b" if hi < 0 else "not shown"}


def test_control_readings_follow_the_preregistered_rules():
    adds = pd.DataFrame([_difference("distill", "distill_0step", "auc_mean", 0.01, -0.02, 0.04),
                         _difference("distill", "distill_0step", "dice_WT", 0.05, 0.01, 0.09),
                         _difference("centralized", "probe_summary", "auc_mean", 0.01, -0.03, 0.05),
                         _difference("centralized_12", "probe_summary", "auc_mean", 0.15, 0.08, 0.22)])
    lines = claims.control_readings(adds, "hard")
    assert lines[0] == ("Condensation adds to its initialisation: distillation − its 0-step control, Dice WT +0.05 "
                        "[+0.01, +0.09]; not shown on mean marker AUC +0.01 [−0.02, +0.04].")
    assert "`hard` cohort is too easy" in lines[1] and "+0.01 [−0.03, +0.05]" in lines[1]
    assert "reference (centralized at 3× the budget) is above the probe" in lines[2] and "+0.15" in lines[2]
    worse = pd.DataFrame([_difference("distill", "distill_0step", "auc_mean", -0.05, -0.09, -0.01),
                          _difference("distill", "distill_0step", "dice_WT", 0.01, -0.02, 0.04)])
    assert claims.control_readings(worse, "workshop")[0] == (
        "Condensation is not shown to add to its initialisation, and takes from it: distillation − its 0-step "
        "control, mean marker AUC −0.05 [−0.09, −0.01]; not shown on Dice WT +0.01 [−0.02, +0.04].")
    # a comparison with no seed scored by both arms (n = 0) gives no reading, never "+nan [+nan, +nan]"
    empty = pd.DataFrame([{**_difference("distill", "distill_0step", "auc_mean", 0, 0, 0), "n": 0,
                           "diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "verdict": "not shown"}])
    assert claims.control_readings(empty, "workshop") == []
    at_chance = pd.DataFrame([{"arm": "probe_summary", "metric": "auc_mean", "n": 10, "mean": 0.52, "lo": 0.49,
                               "hi": 0.55}])
    easy = claims.control_readings(adds, "hard", at_chance)[1]
    assert easy.startswith("On the `hard` cohort the centralized CNN is not shown above per-case summary statistics")
    assert "the probe itself is not shown above chance (mean marker AUC 0.52 [0.49, 0.55])" in easy
    assert easy.endswith("deviation D1), the 'too easy' reading is not made.") and "cohort is too easy" not in easy
    assert "neither reads the markers" not in easy  # centralized's own level unknown: no claim that it is at chance
    cnn_at_chance = pd.concat([at_chance, at_chance.assign(arm="centralized", mean=0.54, lo=0.48, hi=0.60)])
    assert ("the centralized CNN is not shown above chance either (mean marker AUC 0.54 [0.48, 0.60]): at this "
            "budget neither reads the markers") in claims.control_readings(adds, "hard", cnn_at_chance)[1]
    cnn_learned = pd.concat([at_chance, at_chance.assign(arm="centralized", mean=0.60, lo=0.55, hi=0.65)])
    resolved = claims.control_readings(adds, "hard", cnn_learned)[1]
    assert "the centralized CNN is above chance (mean marker AUC 0.60 [0.55, 0.65]) but its lead over the probe is " \
           "not resolved" in resolved and "neither reads" not in resolved
    learned = at_chance.assign(mean=0.80, lo=0.75, hi=0.85)  # a probe above chance: the preregistered reading
    assert "The `hard` cohort is too easy a test" in claims.control_readings(adds, "hard", learned)[1]
    mixed = pd.DataFrame([_difference("distill", "distill_0step", "auc_mean", -0.03, -0.05, -0.01),
                          _difference("distill", "distill_0step", "dice_WT", 0.05, 0.01, 0.09)])
    assert claims.control_readings(mixed, "hard")[0] == (
        "Condensation adds to its initialisation: distillation − its 0-step control, Dice WT +0.05 [+0.01, +0.09]; "
        "but it takes from it on mean marker AUC −0.03 [−0.05, −0.01].")
    same = pd.DataFrame([_difference("distill", "distill_0step", "auc_mean", 0.01, -0.02, 0.04),
                         _difference("centralized", "probe_summary", "auc_mean", 0.2, 0.1, 0.3)])
    lines = claims.control_readings(same, "workshop")
    assert lines[0] == ("Condensation's value is not shown: distillation cannot be told from its 0-step control "
                        "(the synthetic sets' start): mean marker AUC +0.01 [−0.02, +0.04].")
    assert "CNN reads more than per-case summary statistics" in lines[1] and len(lines) == 2
    assert claims.control_readings(same.iloc[:0], "workshop") == []


def test_front_door_reports_each_cohort_and_says_when_one_has_no_results():
    rows = []
    for seed in range(5):
        for arm, auc, wt in (("distill", 0.80, 0.70), ("fedavg", 0.70, 0.70), ("distill_0step", 0.60, 0.70)):
            rows.append({"cohort": "workshop", "seed": seed, "arm": arm, "labels": "truth",
                         "auc_mean": auc + 0.01 * seed, "auc_mean_above_chance": auc + 0.01 * seed - 0.5,
                         "dice_WT": wt + 0.01 * (seed % 2),
                         "dice_TC": 0.3})
    per_seed = pd.DataFrame(rows).reindex(columns=[*pd.DataFrame(rows).columns, "auc_idh", "auc_codeletion",
                                                   "auc_mgmt", "auc_grade", "dice_ET"])
    block = claims.front_door(per_seed, "Test.", cohort=("workshop", "hard"), arms=claims.PREREG_ARMS,
                              pairs=claims.PREREG_PAIRS, ratios=claims.PREREG_RATIOS, readings=True)
    assert "**Cohort `workshop`**: seeds 0, 1, 2, 3, 4." in block
    assert "**Cohort `hard`**: no results yet; nothing is claimed for it." in block
    assert "distillation − FedAvg, mean marker AUC: +0.10 [+0.10, +0.10]" in block  # a constant difference
    assert "distillation's mean marker AUC above chance is 145.5 % of FedAvg's" in block  # 0.32 / 0.22
    assert "Condensation adds to its initialisation" in block
    assert block.startswith(claims.BLOCK_BEGIN) and block.endswith(claims.BLOCK_END)


def test_front_door_gives_an_unbounded_primary_ratio_as_the_two_arms_means():
    rows = []
    for seed in range(6):
        wobble = (-1) ** seed * 0.04  # FedAvg's mean above chance +0.01, its interval across 0
        for arm, above in (("distill", -0.02 + 0.005 * seed), ("fedavg", 0.01 + wobble)):
            rows.append({"cohort": "hard", "seed": seed, "arm": arm, "labels": "truth", "auc_mean": 0.5 + above,
                         "auc_mean_above_chance": above, "dice_WT": 0.5, "dice_TC": 0.3})
    per_seed = pd.DataFrame(rows).reindex(columns=[*pd.DataFrame(rows).columns, "auc_idh", "auc_codeletion",
                                                   "auc_mgmt", "auc_grade", "dice_ET"])
    block = claims.front_door(per_seed, "Test.", cohort="hard", arms=("distill", "fedavg"),
                              pairs=(("distill", "fedavg"),),
                              ratios=(("distill", "fedavg", "auc_mean_above_chance", 0.95),))
    assert ("distillation's mean marker AUC above chance is −0.01 against FedAvg's +0.01 over 6 seeds: the ratio's "
            "Fieller interval is unbounded") in block  # a's mean first, b's second
