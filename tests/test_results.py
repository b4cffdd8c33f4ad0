import pytest

from gemma_helpers import results


def test_save_is_atomic_and_round_trips(tmp_path):
    path = results.save("03_x", {"heldout_recall_after": 1.0, "seed_recipe": {"heldout_recall_after": 0.8}}, tmp_path)
    assert path == tmp_path / "03_x.json"
    assert results.load("03_x", tmp_path)["seed_recipe"]["heldout_recall_after"] == 0.8
    assert [p.name for p in tmp_path.iterdir()] == ["03_x.json"]


def test_summary_table_puts_runs_side_by_side():
    table = results.summary_table({"ppl_after": 16.1, "merged_matches_adapter": True, "answers": ["a"],
                           "seed_recipe": {"ppl_after": 26.3}})
    lines = table.splitlines()
    assert lines[0].split() == ["result", "seed_recipe"]
    assert lines[1].split() == ["ppl_after", "16.100", "26.300"]
    assert lines[2].split() == ["merged_matches_adapter", "True"]
    assert "answers" not in table


def test_fact_summary_counts_only_controls_known_before():
    from gemma_helpers.evaluate import fact_summary

    controls = [("The capital of Japan is", "Tokyo"), ("A week has seven", "days"), ("Two plus two equals", "four")]
    before = {"recall": 0.0, "answers": ["x", "y"], "ended": [False, False], "answer_tokens": [24, 24],
              "control_ok": [False, True, True], "perplexity": 10.0}
    after = {"recall": 0.8, "answers": ["Crystalburg", "Crystalburg and"], "ended": [True, False],
             "answer_tokens": [9, 24], "control_ok": [True, False, True], "perplexity": 11.0}
    s = fact_summary(before, after, controls)
    assert s["control_retained"] == 0.5  # Japan was never known; "days" was lost
    assert s["controls_lost"] == ["A week has seven"] and s["controls_known_before"] == 2
    assert s["heldout_recall_before"] == 0.0 and s["heldout_recall_after"] == 0.8
    assert abs(s["ppl_change"] - 0.1) < 1e-12
    assert s["heldout_answers_ended_before"] == 0.0 and s["heldout_answers_ended"] == 0.5
    assert s["heldout_answer_tokens"] == [9, 24]


def test_recorded_keeps_a_failed_blocks_error_as_its_result_and_goes_on(capsys):
    from gemma_helpers import results

    figures = {"peft": {"loss": 1.0}}
    with results.recorded(figures, "keras"):
        figures["keras"] = {"partial": True}
        raise ImportError("keras_hub is not installed")
    assert figures == {"peft": {"loss": 1.0}, "keras": {"error": "ImportError: keras_hub is not installed"}}
    assert "keras could not run: ImportError" in capsys.readouterr().out
    with results.recorded(figures, "ok"):
        figures["ok"] = {"loss": 0.5}
    assert figures["ok"] == {"loss": 0.5}
    with pytest.raises(KeyboardInterrupt), results.recorded(figures, "stopped"):
        raise KeyboardInterrupt
