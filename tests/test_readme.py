"""README.md as the front door (issue 28): the two set-up commands first, one row per notebook in
order with its headline figure and book page, short, and figures that match the committed results."""
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
NOTEBOOKS = [p.stem for p in sorted((ROOT / "notebooks").glob("*.ipynb"))]


def _rows():
    rows = [line for line in README.splitlines() if re.match(r"\| \[\d\d · ", line)]
    return {re.search(r"\(notebooks/(\d\d_\w+)\.ipynb\)", r).group(1): r for r in rows}


def _results(name):
    return json.loads((ROOT / "outputs" / "results" / f"{name}.json").read_text(encoding="utf-8"))


def test_the_first_screen_is_the_two_setup_commands():
    lines = README.splitlines()
    block = lines[lines.index("```bash") + 1:lines.index("```")]
    assert lines.index("```bash") < 5, "the set-up commands are not at the very top"
    assert [line.split()[:2] for line in block] == [["make", "demo"], ["make", "test"]]


def test_it_is_short():
    assert len(README.splitlines()) <= 120


def test_one_row_per_notebook_in_order_with_question_figure_and_book_page():
    rows = _rows()
    assert list(rows) == NOTEBOOKS
    for name, row in rows.items():
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 4 and all(cells), row
        assert cells[1].endswith("?"), f"{name}: no question"
        assert f"(outputs/book/notebooks/{name}.html)" in cells[3], f"{name}: no link to its book page"


def test_headline_figures_match_the_committed_results():
    rows = _rows()
    papers = _results("01_papers")
    low, high = papers["holdout_gain_ci"]
    assert f"**{papers['accuracy']['tuned']['holdout']:.2f}** [{low:.2f}, {high:.2f}]" in rows["01_papers_wordclouds_lora"]
    assert f"{papers['accuracy']['trivial']['holdout']:.2f} for always answering" in rows["01_papers_wordclouds_lora"]
    x = _results("03_xylandia")
    n = len(x["heldout_answers"])
    assert (f"**{round(x['heldout_recall_before'] * n)}/{n} → {round(x['heldout_recall_after'] * n)}/{n}**"
            in rows["03_xylandia_fact_injection"])
    kept = x["controls_known_to_base"] - len(x["controls_lost"])
    assert f"{kept}/{x['controls_known_to_base']} kept" in rows["03_xylandia_fact_injection"]
    assert f"+{x['ppl_change']:.1%}".replace("%", " %") in rows["03_xylandia_fact_injection"]
    f = _results("04_frames")
    ci, bar = f["heldout_accuracy_after_ci"], f["heldout_accuracy_majority_answer_ci"]
    assert (f"**{f['heldout_accuracy_before']:.2f} → {f['heldout_accuracy_after']:.2f}** [{ci[0]:.2f}, {ci[1]:.2f}] on "
            f"{f['heldout_clips']} clips against a most-common-answer bar of {f['heldout_accuracy_majority_answer']:.2f} "
            f"[{bar[0]:.2f}, {bar[1]:.2f}]; {f['heldout_accuracy_frames_ablated']:.2f}" in rows["04_kinetics_frames_lora"])


def test_it_says_plainly_that_the_gpu_path_has_not_run_and_claims_no_gpu_run():
    assert "the GPU path has not yet been run\non a GPU" in README or "the GPU path has not yet been run on a GPU" in README
    assert not re.search(r"runs (top to bottom )?on a (free )?Colab T4", README)


def test_every_local_link_resolves():
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if target.startswith("http"):
            continue
        if target.startswith("outputs/book/"):  # built by `make book`: the page of a committed notebook
            assert Path(target).stem in NOTEBOOKS, target
            continue
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
