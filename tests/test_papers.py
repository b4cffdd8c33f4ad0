"""Notebook 01's papers: the title check in the corpus, the bundled mini-papers, the split, the rows, and the
mixed accuracy (the download is tested in test_download, PDF reading and cleaning in test_pdf)."""
from __future__ import annotations

import pytest

import gemma_helpers as gh
from gemma_helpers import offline
from gemma_helpers.data import papers as P
from gemma_helpers.data import pdf


def test_the_wrong_paper_is_reported_not_trained_on(tmp_path):
    files = {"right": offline.example_pdf(), "wrong": offline.example_pdf(title="Street Trees and Urban Heat")}
    with offline.LoopbackServer(files) as server:
        papers = [P.Paper(k, "Marine Heat and Coral Reefs", "climate", url=server.url(k)) for k in files]
        corpus = P.collect(papers, tmp_path, progress=False)
    assert [p["key"] for p in corpus.papers] == ["right"]
    wrong = next(r for r in corpus.report if r["key"] == "wrong")
    assert wrong["status"] == "wrong_paper" and "Street Trees" in wrong["reason"]


def test_bundled_papers_survive_the_pdf_round_trip_and_split_by_paper(tmp_path):
    sample = P.sample()
    assert len(sample) >= 8 and {p["field"] for p in sample} == set(P.FIELDS)
    for paper in sample[:3]:
        path = tmp_path / f"{paper['key']}.pdf"
        offline.sample_pdf(paper, path)
        text = pdf.clean_pages(pdf.read_pdf(path).pages)
        assert P.sections(text) == P.sections(P.sample_text(paper))  # every section and sentence back
    splits = P.split_by_paper([p["key"] for p in sample])
    assert sum(map(len, splits.values())) == len(sample) and all(splits.values())
    assert not set(splits["train"]) & set(splits["validation"]) | set(splits["holdout"]) & set(splits["train"])
    rows = P.build_rows([{**p, "text": P.sample_text(p)} for p in sample], splits)
    for name, keys in splits.items():
        assert {r["paper"] for r in rows[name]} == set(keys)
    row = rows["train"][0]
    prompt, answer = row["messages"][0]["content"], row["messages"][1]["content"]
    assert answer not in prompt and answer.endswith(".")
    paper = next(p for p in sample if p["key"] == row["paper"])
    assert answer in P.sample_text(paper) and paper["title"] in prompt


def test_mixed_accuracy_formula():
    refs = ["Corals expel their algae when the water stays too warm for weeks."] * 3
    preds = ["Corals expel their algae when the water stays too warm for weeks.",
             "When water remains too hot for several weeks, corals lose their algae.",
             "The stock market closed higher on Friday."]
    out = gh.evaluate.mixed_accuracy(preds, refs)
    exact, paraphrase, unrelated = out["items"]
    assert exact["overlap"] == pytest.approx(1) and exact["relevance"] == pytest.approx(1, abs=1e-4)
    assert paraphrase["relevance"] > 0.6 > unrelated["relevance"] + 0.4  # the embedding sees meaning
    assert paraphrase["overlap"] < 0.5  # where word overlap alone would not
    for item in out["items"]:
        assert item["mixed"] == pytest.approx(0.5 * item["overlap"] + 0.5 * item["relevance"])
    assert out["accuracy"] == pytest.approx(sum(i["mixed"] >= 0.5 for i in out["items"]) / 3)
    assert gh.evaluate.mixed_accuracy(preds, refs, threshold=0.0)["accuracy"] == pytest.approx(1)


def test_adding_a_paper_never_moves_the_others():
    keys = [p["key"] for p in P.sample()]
    before = P.split_by_paper(keys)
    home = {k: name for name, ks in before.items() for k in ks}
    landed = set()
    for i in range(200):
        added = P.split_by_paper(keys + [f"added-paper-{i}"])
        moved = {k: name for name, ks in added.items() for k in ks if k in home and home[k] != name}
        assert moved == {}, f"adding added-paper-{i} moved {moved}"
        landed |= {name for name, ks in added.items() if f"added-paper-{i}" in ks}
    assert landed == {"train", "validation", "holdout"}  # the added paper itself goes wherever its hash says
    shares = P.split_by_paper([f"paper-{i}" for i in range(2000)])
    assert 0.17 < len(shares["validation"]) / 2000 < 0.23 and 0.17 < len(shares["holdout"]) / 2000 < 0.23


def test_few_papers_still_fill_every_split():
    for keys in (["a", "b", "c"], ["x", "y", "z", "w"], [f"k{i}" for i in range(5)]):
        splits = P.split_by_paper(keys)
        assert all(splits.values()) and sorted(sum(splits.values(), [])) == sorted(keys), splits
    with pytest.raises(ValueError, match="at least 3"):
        P.split_by_paper(["a", "b", "a"])


def test_section_role_names_the_part_of_a_paper_a_heading_is():
    roles = {"Abstract": "abstract", "1 Introduction": "introduction", "Related Work": "introduction",
             "2 How Trees Cool Streets": "method", "3.1 Data": "method", "3 Experiments": "results",
             "4 Results and Discussion": "results", "4.2 Ablation Study": "results", "3 Discussion": "results",
             "5 Conclusion and Future Work": "conclusion", "Conclusions": "conclusion",
             "Acknowledgements": None, "Appendix A": None, "6 Limitations": None, "Some Front Matter": None}
    assert {h: P.section_role(h) for h in roles} == roles


def test_section_rows_ask_which_part_of_the_paper_a_passage_is_from():
    sample = P.sample()
    papers = [{**p, "text": P.sample_text(p)} for p in sample]
    rows = P.build_rows(papers, P.split_by_paper([p["key"] for p in sample]), task=P.section_rows)
    for name, split in rows.items():
        for key in {r["paper"] for r in split}:  # every paper gives every answer: a split of a few papers trains all
            assert {r["messages"][1]["content"] for r in split if r["paper"] == key} == set(P.ROLES), (name, key)
    paper = papers[0]
    own = P.section_rows(paper)
    by_heading = {h: s for h, s in P.sections(paper["text"])}
    assert len(own) == sum(map(len, by_heading.values()))  # one row per sentence (all 6 to 80 words here)
    for row in own:
        prompt, answer = row["messages"][0]["content"], row["messages"][1]["content"]
        sentences = by_heading[row["section"]]
        assert answer == P.section_role(row["section"]) and row["passage"] in prompt and paper["title"] in prompt
        assert all(s in sentences for s in P._SPLIT_SENTENCES.split(row["passage"]))  # one section's sentences only
    assert [r["passage"] for r in own[:2]] == [by_heading["Abstract"][0], " ".join(by_heading["Abstract"][:2])]
    assert len(P.section_rows(paper, max_rows=5)) == 5


def test_bootstrap_interval_on_known_data():
    assert gh.evaluate.bootstrap_ci([0.25] * 30) == [0.25, 0.25]
    half = [1.0, 0.0] * 200  # mean 0.5, standard error 0.025: the normal interval is 0.451 to 0.549
    low, high = gh.evaluate.bootstrap_ci(half)
    assert 0.44 < low < 0.46 and 0.54 < high < 0.56
    assert gh.evaluate.bootstrap_ci(half) == [low, high]  # a fixed seed: the same interval every run
    assert gh.evaluate.bootstrap_ci(half, seed=1) != [low, high]
    low90, high90 = gh.evaluate.bootstrap_ci(half, level=0.9)
    assert low < low90 < high90 < high
    with pytest.raises(ValueError, match="non-empty"):
        gh.evaluate.bootstrap_ci([])


def _scores(mixed, refs=None):
    refs = refs or [f"r{i}" for i in range(len(mixed))]
    return {"threshold": 0.5, "items": [{"mixed": m, "reference": r} for m, r in zip(mixed, refs)]}


def test_gain_interval_is_paired_over_the_same_items():
    before = _scores([0.1, 0.9, 0.2, 0.8] * 10)
    assert gh.evaluate.correct(before) == [0.0, 1.0, 0.0, 1.0] * 10
    assert gh.evaluate.gain_ci(before, before) == [0.0, 0.0]  # the same verdicts: no gain, whatever the resample
    fixed_two = _scores([0.9, 0.9, 0.2, 0.8] * 10)  # one row in four now right, none lost
    low, high = gh.evaluate.gain_ci(fixed_two, before)
    assert 0 < low < 0.25 < high <= 0.5
    with pytest.raises(ValueError, match="references differ"):
        gh.evaluate.gain_ci(fixed_two, _scores([0.1] * 40, refs=[f"x{i}" for i in range(40)]))


def test_trivial_baselines_score_copying_and_every_constant_answer():
    refs = ["method", "method", "results", "abstract"]
    inputs = ["We fit a density model to dot annotations.", "The method uses two thin matrices.",
              "In our experiments the adapter recovered most of the quality.", "This article reviews heatwaves."]
    trivials = gh.evaluate.trivial_scores(inputs, refs, answers=P.ROLES)
    assert set(trivials) == {"copy the input"} | {f"always {r!r}" for r in P.ROLES}
    assert trivials["always 'method'"]["accuracy"] == pytest.approx(0.5)
    assert trivials["always 'results'"]["accuracy"] == pytest.approx(0.25)
    assert trivials["always 'conclusion'"]["accuracy"] == 0
    assert trivials["copy the input"]["accuracy"] == 0  # a sentence is not the one-word answer
    name, best = gh.evaluate.best_trivial(trivials)
    assert name == "always 'method'" and best is trivials[name]


def test_verdict_says_shown_only_when_the_gain_is_sure_and_the_trivial_bar_is_beaten():
    base = _scores([0.1] * 30 + [0.9] * 10)
    tuned = _scores([0.9] * 30 + [0.1] * 10)  # 0.75 vs 0.25
    low_bar, high_bar = ("always 'method'", _scores([0.9] * 8 + [0.1] * 32)), ("always 'x'", _scores([0.9] * 35 + [0.1] * 5))
    shown = gh.evaluate.verdict(tuned, base, low_bar)
    assert shown.startswith("Shown: on 40 holdout rows the tuned adapter scores 0.75 vs 0.25 baseline (gain 95% CI [")
    assert shown.endswith("and 0.20 for the best trivial baseline (always 'method').")
    low, high = gh.evaluate.gain_ci(tuned, base)
    assert f"[{low:.2f}, {high:.2f}]" in shown and low > 0
    beaten_by_trivial = gh.evaluate.verdict(tuned, base, high_bar)
    assert beaten_by_trivial.startswith("NOT shown (the tuned adapter does not beat the best trivial baseline)")
    no_gain = gh.evaluate.verdict(base, base, low_bar)
    assert no_gain.startswith("NOT shown (the gain's interval does not exclude 0): on 40 holdout rows")
