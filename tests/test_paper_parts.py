"""Notebook 01's reporting helpers (gemma_helpers.paper_parts): the results file, its tables and the
profile's paper source, built from hand-made scores whose right figures are known."""
import urllib.request
from types import SimpleNamespace

import pytest

from gemma_helpers import paper_parts
from gemma_helpers.data import papers as gp

BOOTSTRAP = {"level": 0.95, "resamples": 200, "seed": 0}
RESULT_KEYS = ["accuracy", "accuracy_ci", "holdout_gain_ci", "gain_ci", "trivial_baseline", "scores", "task", "bootstrap",
               "max_new_tokens", "holdout_confusion", "metric", "val_loss_baseline", "val_loss_tuned", "eval_history",
               "stopped_early", "download_report", "papers", "splits", "rows", "holdout_examples", "memory", "steps",
               "train_runtime_s", "loss_first", "loss_last", "trainable_parameters", "model", "runtime_s"]


def _scores(predictions, references, threshold=0.5):
    """A mixed_accuracy-shaped result: an exact answer scores 1, any other 0."""
    items = [{"prediction": p, "reference": r, "mixed": float(p == r), "paper": f"paper{i % 2}"}
             for i, (p, r) in enumerate(zip(predictions, references))]
    n, right = len(items), sum(i["mixed"] for i in items)
    return {"accuracy": right / n, "mixed": right / n, "overlap": right / n, "relevance": right / n, "n": n,
            "threshold": threshold, "items": items}


REFS = ["method", "results", "method", "abstract", "method", "conclusion"] * 2
BASE = _scores(["the"] * len(REFS), REFS)
TUNED = _scores(["method", "results", "method", "abstract", "Method.", "results"] * 2, REFS)  # 10 of 12 right
TRIVIAL = {"copy the input": _scores(["a passage"] * len(REFS), REFS), "always 'method'": _scores(["method"] * len(REFS), REFS)}


def _results():
    corpus = SimpleNamespace(
        papers=[{"key": "k", "title": "T", "field": "ai", "pages": 2, "words": 900, "problems": [], "text": "..."}],
        report=[{"key": "k", "url": "http://x/k.pdf", "status": "ok", "reason": "", "bytes": 10, "attempts": 1,
                 "http_status": 200, "path": "/tmp/k.pdf"}])
    run = SimpleNamespace(eval_history=[{"step": 0, "eval_loss": 3.0}, {"step": 40, "eval_loss": 1.5}], stopped_early=None,
                          global_step=40, runtime_s=60.0, losses=[(1, 4.0), (40, 1.0)])
    rows = [{"passage": f"passage {i}"} for i in range(len(REFS))]
    examples = paper_parts.examples(rows, BASE, TUNED, every=5)
    setup = {"task": "name the part", "roles": gp.ROLES, "bootstrap": BOOTSTRAP, "max_new_tokens": 2,
             "mix_weight": 0.5, "mix_threshold": 0.5}
    splits = {"holdout": ["k"]}
    return paper_parts.results(corpus, splits, {"holdout": rows}, {"baseline": {"holdout": BASE}, "tuned": {"holdout": TUNED}},
                               {"holdout": TRIVIAL}, run, {"peak": 1.0}, 1234, examples, setup, model="m", runtime_s=1.0)


def test_the_results_file_holds_every_key_the_readme_reads_with_the_right_figures():
    results = _results()
    assert list(results) == RESULT_KEYS
    assert results["accuracy"] == {"baseline": {"holdout": 0.0}, "tuned": {"holdout": pytest.approx(8 / 12)},
                                   "trivial": {"holdout": 0.5}}  # "Method." is not "method": scored 0 here
    assert results["trivial_baseline"] == {"holdout": "always 'method'"}
    low, high = results["holdout_gain_ci"]
    assert 0 < low <= 8 / 12 <= high  # every row's gain is 0 or 1: the interval sits above 0
    assert results["val_loss_baseline"] == 3.0 and results["val_loss_tuned"] == 1.5 and results["loss_last"] == 1.0
    assert "path" not in results["download_report"][0] and "text" not in results["papers"][0]
    assert results["holdout_examples"] == [{"passage": "passage 0", "reference": "method", "before": "the", "after": "method"},
                                           {"passage": "passage 5", "reference": "conclusion", "before": "the",
                                            "after": "results"},
                                           {"passage": "passage 10", "reference": "method", "before": "the",
                                            "after": "Method."}]
    assert results["holdout_confusion"]["method"] == {"abstract": 0, "introduction": 0, "method": 6, "results": 0,
                                                      "conclusion": 0, "other": 0}  # "Method." is read as method
    assert results["holdout_confusion"]["conclusion"]["results"] == 2
    summary = paper_parts.accuracy_summary(results)
    assert summary["trivial"]["holdout acc"].startswith("0.50 [") and summary["baseline"]["holdout acc"] == "0.00 [0.00, 0.00]"


def test_the_tables_and_panels_carry_each_stage_and_split():
    stages = {"baseline": {"holdout": BASE}, "tuned": {"holdout": TUNED}}
    table = paper_parts.stage_table(stages, BOOTSTRAP)
    assert set(table) == {"baseline holdout", "tuned holdout"} and table["tuned holdout"]["n"] == 12
    panels = paper_parts.panels(stages, 0.5)
    assert list(panels) == ["accuracy (mixed >= 0.5)", "mean mixed score", "overlap (ROUGE-L F1)", "relevance (cosine)"]
    assert panels["accuracy (mixed >= 0.5)"] == {"baseline": {"holdout": 0.0}, "tuned": {"holdout": pytest.approx(8 / 12)}}
    assert paper_parts.trivial_table({"holdout": TRIVIAL})["holdout: always 'method'"] == {"accuracy": 0.5, "mixed": 0.5}


def test_word_cloud_titles_and_the_paper_table_name_the_top_words():
    from collections import Counter

    freqs = {"k": Counter({"trees": 5, "shade": 3, "streets": 2, "heat": 1})}
    assert list(paper_parts.cloud_labels(freqs)) == ["k\ntrees, shade, streets"]
    row = paper_parts.paper_table([{"key": "k", "field": "climate", "pages": 1, "words": 11}], freqs)["k"]
    assert row == {"field": "climate", "pages": 1, "words": 11, "top words": "trees, shade, streets, heat"}


def test_the_sample_source_serves_the_papers_until_stopped_and_an_unknown_source_is_named():
    papers, stop = paper_parts.paper_list("sample")
    assert len(papers) == 8 + 3  # the eight mini-papers and three bad entries
    url = next(p.source for p in papers if p.source.startswith("http://127.0.0.1"))
    assert urllib.request.urlopen(url, timeout=5).status == 200
    stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)
    with pytest.raises(ValueError, match="paper_source 'arxv'"):
        paper_parts.paper_list("arxv")
