"""Notebook 03's reporting helpers (gemma_helpers.fact_injection): the results file, the card's
limitations and the verdict are built from the figures, and say what the figures say."""
from types import SimpleNamespace

import pytest

from gemma_helpers import fact_injection as fi

DATA = fi.xylandia_data()


def _stage(recall, ended, control_ok, ppl, answers=("Crystalburg.",)):
    return {"answers": list(answers), "recall": recall, "ended": ended, "answer_tokens": [3] * len(ended),
            "completions": ["yen"] * len(control_ok), "control_ok": control_ok, "perplexity": ppl}


def _measured(recall, ended, control_ok, ppl, reversal=0.0):
    return {"train": _stage(recall, ended, [], None), "heldout": _stage(recall, ended, control_ok, ppl),
            "reversal": _stage(reversal, [False], [], None, answers=("Nowhere.",))}


BEFORE = _measured(0.0, [False, False], [True, True, True, False], 20.0)


def _results(after, seed_after=None, merged=True):
    ours, seed = fi.summary(BEFORE, after, DATA), fi.summary(BEFORE, seed_after or after, DATA)
    run = SimpleNamespace(global_step=50, stopped_early="validation recall 1.00")
    return fi.results(seed, ours, SimpleNamespace(global_step=125, stopped_early=None), run, merged, 3, 4, 24,
                      model="gemma-3-270m", load_in_4bit=True, profile="cpu", runtime_s=1.0)


def test_the_results_file_has_every_key_the_readme_and_tests_read_in_the_notebooks_order():
    results = _results(_measured(1.0, [True, True], [True, True, False, False], 21.0))
    assert list(results)[:10] == list(fi.KEYS)
    assert {"merged_matches_adapter", "reversal_before", "reversal_after", "steps", "stopped_early",
            "controls_known_to_base", "controls_total", "seed_recipe", "model", "runtime_s"} <= set(results)
    assert results["steps"] == 50 and results["seed_recipe"]["steps"] == 125  # each run's own steps
    assert results["control_retained"] == pytest.approx(2 / 3) and results["controls_lost"] == [DATA["control_facts"][2][0]]
    assert results["ppl_change"] == pytest.approx(0.05)


def test_the_verdict_says_shown_only_when_every_effect_was_measured():
    good = _results(_measured(1.0, [True, True], [True, True, True, False], 21.0))
    assert fi.verdict(good).startswith("Fact injection shown: held-out recall 100% (>= 80 %)")
    worse_ppl = _results(_measured(1.0, [True, True], [True, True, True, False], 23.0))
    sentence = fi.verdict(worse_ppl)
    assert sentence.startswith("Fact injection NOT shown: neutral-text perplexity +15.0% (<= +10 %)")
    assert "shown: held-out recall 100%" in sentence
    assert "merged answers NOT identical" in fi.verdict(_results(_measured(1.0, [True, True], [True] * 3 + [False], 20.0),
                                                                 merged=False))


def test_the_cards_limitations_carry_the_measured_figures():
    results = _results(_measured(0.8, [True, False], [True, False, True, False], 22.0, reversal=0.0))
    lines = fi.limitations(results, DATA, embedded=True)
    assert len(lines) == 5 and "pretrained, not instruction-tuned" in lines[1]
    assert "50% of held-out answers ended at <end_of_turn> within 24 tokens" in lines[1]
    assert "(3 of 4 known to the 4-bit base)" in lines[3] and "20.00 -> 22.00 (+10.0%)" in lines[3]
    assert lines[4].endswith("are identical to the adapter's, token for token.")
    assert "gemma-3-270m" in fi.limitations(results, DATA, embedded=False)[1]


def test_figures_and_outcome_keep_numbers_only():
    s = fi.summary(BEFORE, _measured(1.0, [True, True], [True, True, True, False], 25.0), DATA)
    table = fi.figures({"ours": s})["ours"]
    assert "heldout_answers" not in table and "reversal_after" not in table and table["heldout_recall_after"] == 1.0
    assert list(fi.figures({"ours": s}, fi.KEYS)["ours"]) == list(fi.KEYS)
    assert fi.outcome({"ours": s})["ours"] == {"held-out recall": 1.0, "controls retained": 1.0,
                                               "ppl after / before": 1.25}
