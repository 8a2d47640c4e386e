import json

import pytest

from lth.core.errors import LthError
from lth.report.tables import verdict_table as format_verdict_table
from lth.run.verdict import SINGLE_SEED_NOTE, lower_is_better, summarize, verdict, winning_sparsity


def runs(metric, *values):
    return [{metric: v} for v in values]


FULL = runs("acc", 0.80, 0.82, 0.84)  # mean 0.82, sample std 0.02: the 1σ bar is 0.80


def table(levels, full=FULL):
    return {"full": full, "levels": levels}


def test_summarize_mean_and_sample_std():
    s = summarize([{"acc": 0.80, "f1": 0.5}, {"acc": 0.82, "f1": 0.7}, {"acc": 0.84, "f1": 0.6}])
    assert s["acc"]["mean"] == pytest.approx(0.82) and s["acc"]["std"] == pytest.approx(0.02)
    assert s["acc"]["n"] == 3
    assert s["f1"]["mean"] == pytest.approx(0.6) and s["f1"]["std"] == pytest.approx(0.1)


def test_summarize_single_run_has_undefined_std_not_zero():
    assert summarize([{"acc": 0.7}]) == {"acc": {"mean": 0.7, "std": None, "n": 1}}
    assert summarize([]) == {}


def test_1sigma_is_more_lenient_than_strict():
    t = table({0.5: {"imp": runs("acc", 0.82, 0.83)},    # 0.825 >= 0.82: strict win
               0.6: {"imp": runs("acc", 0.805, 0.815)},  # 0.81: within 1σ only
               0.7: {"imp": runs("acc", 0.78, 0.79)}})   # below the 1σ bar
    assert winning_sparsity(t, "acc", "1sigma") == 0.6
    assert winning_sparsity(t, "acc", "strict") == 0.5


def test_exact_tie_with_the_full_mean_wins_strictly():
    t = table({0.4: {"imp": runs("acc", 0.84, 0.82, 0.80)}, 0.5: {"imp": runs("acc", 0.81)}})
    assert winning_sparsity(t, "acc", "strict") == 0.4


def test_tie_with_the_1sigma_bar_wins():
    t = table({0.5: {"imp": runs("acc", 0.80)}})
    assert winning_sparsity(t, "acc", "1sigma") == 0.5


def test_no_winning_level_is_none_for_both_rules():
    t = table({0.2: {"imp": runs("acc", 0.70, 0.71)}, 0.4: {"imp": runs("acc", 0.60, 0.65)}})
    assert winning_sparsity(t, "acc", "1sigma") is None
    assert winning_sparsity(t, "acc", "strict") is None


def test_non_monotone_grid_takes_the_highest_winning_level():
    # As in the paper: the highest winning sparsity, not the last one before the first loss.
    t = table({0.5: {"imp": runs("acc", 0.83)}, 0.6: {"imp": runs("acc", 0.70)}, 0.7: {"imp": runs("acc", 0.83)}})
    assert winning_sparsity(t, "acc", "strict") == 0.7
    notes = verdict(t, ["acc"], "acc")["notes"]
    assert any("loses at 60% but wins at 70%" in n for n in notes)


def test_single_full_seed_disables_1sigma_with_a_note_but_strict_still_works():
    t = table({0.5: {"imp": runs("acc", 0.9)}, 0.6: {"imp": runs("acc", 0.7)}}, full=runs("acc", 0.8))
    assert winning_sparsity(t, "acc", "1sigma") is None
    v = verdict(t, ["acc"], "acc")
    assert v["winning"]["acc"] == {"1sigma": None, "strict": 0.5}
    assert SINGLE_SEED_NOTE in v["notes"]
    assert "--seeds 2" in SINGLE_SEED_NOTE


def test_loss_and_perplexity_are_lower_is_better():
    assert lower_is_better("eval_loss") and lower_is_better("Perplexity") and not lower_is_better("accuracy")
    t = table({0.3: {"imp": runs("loss", 0.9, 0.9)},    # below the full mean: strict win
               0.5: {"imp": runs("loss", 1.05)},         # within mean + std (1.1)
               0.7: {"imp": runs("loss", 1.5)}},         # far above
              full=runs("loss", 0.9, 1.0, 1.1))
    assert winning_sparsity(t, "loss", "strict") == 0.3
    assert winning_sparsity(t, "loss", "1sigma") == 0.5
    assert verdict(t, ["loss"], "loss")["direction"] == {"loss": "lower"}


def test_gaps_are_imp_minus_each_baseline_on_the_primary_metric():
    t = table({0.6: {"imp": runs("acc", 0.80, 0.82),
                     "random-prune": runs("acc", 0.60, 0.64), "random-reinit": runs("acc", 0.55)},
               0.7: {"imp": runs("acc", 0.75)}})
    v = verdict(t, ["acc"], "acc")
    assert v["primary"] == "acc"
    assert v["gaps"] == {0.6: {"random-prune": pytest.approx(0.19), "random-reinit": pytest.approx(0.26)}}


def test_every_metric_gets_both_rules_and_primary_is_included():
    full = [{"acc": 0.80, "f1": 0.70}, {"acc": 0.84, "f1": 0.72}]
    t = table({0.5: {"imp": [{"acc": 0.83, "f1": 0.70}, {"acc": 0.83, "f1": 0.70}]}}, full=full)
    v = verdict(t, ["f1"], "acc")
    assert v["winning"] == {"f1": {"1sigma": 0.5, "strict": None}, "acc": {"1sigma": 0.5, "strict": 0.5}}


def test_json_round_trip_with_string_sparsity_keys():
    t = json.loads(json.dumps(table({0.5: {"imp": runs("acc", 0.83)}, 0.6: {"imp": runs("acc", 0.81)}})))
    assert winning_sparsity(t, "acc", "1sigma") == 0.6


def test_unknown_metric_missing_full_model_and_unknown_rule_fail_clearly():
    t = table({0.5: {"imp": runs("acc", 0.83)}})
    with pytest.raises(LthError, match="no metric 'f1'.*acc"):
        winning_sparsity(t, "f1", "strict")
    with pytest.raises(LthError, match="no run of the full model"):
        winning_sparsity(table({}, full=[]), "acc", "strict")
    with pytest.raises(LthError, match="unknown rule"):
        winning_sparsity(t, "acc", "2sigma")


def test_format_verdict_table_rows_marks_and_single_seed_std():
    t = table({0.5: {"imp": runs("acc", 0.82, 0.83), "random-prune": runs("acc", 0.70, 0.72)},
               0.6: {"imp": runs("acc", 0.805, 0.815), "random-prune": runs("acc", 0.65)},
               0.7: {"imp": runs("acc", 0.78, 0.79)}})
    text = format_verdict_table(t, ["acc"], "acc")
    lines = text.splitlines()
    assert "full model: 0.8200 ±0.0200 over 3 seeds" in lines[0]
    header = next(line for line in lines if line.startswith("sparsity"))
    assert header.split() == ["sparsity", "imp", "win", "random-prune"]
    row = {line.split()[0]: line for line in lines if line[:1].isdigit() and "%" in line.split()[0]}
    assert row["50%"].split()[:4] == ["50%", "0.8250", "±0.0071", "**"]
    assert row["60%"].split()[3] == "*" and "0.6500 ±n/a" in row["60%"]
    assert "*" not in row["70%"] and row["70%"].rstrip().endswith("-")
    assert "winning sparsity (within 1σ): acc 60%" in text
    assert "winning sparsity (strict): acc 50%" in text
    assert header.index("random-prune") == row["50%"].index("0.7100") == row["60%"].index("0.6500")


def test_format_verdict_table_says_none_and_explains_a_single_full_seed():
    t = table({0.5: {"imp": runs("acc", 0.5)}}, full=runs("acc", 0.8))
    text = format_verdict_table(t, ["acc"], "acc")
    assert "over 1 seed" in text and "0.8000 ±n/a" in text
    assert "winning sparsity (within 1σ): acc none" in text and "winning sparsity (strict): acc none" in text
    assert "note: " + SINGLE_SEED_NOTE in text
