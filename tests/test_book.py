"""book/book.py: the executed copies it stamps, what it refuses to build from, what a notebook page gets.

Issue 28. No Sphinx run and no browser here (book/tests/test_site.py opens the built site); the
folders book.py reads are pointed at tmp_path."""
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book"))
import book  # noqa: E402


def _nb(*cells, stamp=True):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 99 · A title"), *cells])
    if stamp:
        nb.metadata["gemma_run"] = {"commit": "0123456789abcdef", "dirty": [], "started_epoch": 0.0,
                                    "started": "2026-12-02 16:00 UTC"}
    return nb


def _code(source, *outputs, count=1):
    cell = nbformat.v4.new_code_cell(source)
    cell.execution_count, cell.outputs = count, list(outputs)
    return cell


def _printed(text):
    return nbformat.v4.new_output("stream", name="stdout", text=text)


@pytest.fixture
def folders(tmp_path, monkeypatch):
    for name in ("BOOK", "NOTEBOOKS", "EXECUTED", "CHARTS", "STAGE", "SITE", "RESULTS"):
        (tmp_path / name.lower()).mkdir()
        monkeypatch.setattr(book, name, tmp_path / name.lower())
    return tmp_path


def test_prepare_copies_every_notebook_stamped_and_clears_an_earlier_run(folders):
    for name in ("00_a", "01_b"):
        nbformat.write(_nb(_code("print(1)", count=None), stamp=False), folders / "notebooks" / f"{name}.ipynb")
    nbformat.write(_nb(), folders / "executed" / "07_gone.ipynb")
    book.prepare()
    copies = sorted(p.name for p in (folders / "executed").glob("*.ipynb"))
    assert copies == ["00_a.ipynb", "01_b.ipynb"]
    stamp = nbformat.read(folders / "executed" / "00_a.ipynb", as_version=4).metadata["gemma_run"]
    assert stamp["commit"] == book.git("rev-parse", "HEAD") and stamp["started"].endswith("UTC")
    assert "gemma_run" not in nbformat.read(folders / "notebooks" / "00_a.ipynb", as_version=4).metadata


def test_the_closing_verdict_is_the_last_line_the_last_printing_cell_printed():
    nb = _nb(_code("print('table')", _printed("a table\n")),
             _code("print(verdict)", _printed("Shown: the adapter beats the bar.\n\n")),
             _code("x = 1"),
             _code("gh.hub.push_to_hub(folder, HUB_REPO)", _printed("push_to_hub: skipped under CI\n")))
    assert book.closing_output(nb) == "Shown: the adapter beats the bar."


@pytest.mark.parametrize("case, message", [
    ("missing", "00_a.ipynb is missing"),
    ("unstamped", "carries no run stamp"),
    ("error", "holds an error: ValueError: boom"),
    ("unexecuted", "was not executed to the end"),
    ("silent", "printed nothing"),
])
def test_the_book_refuses_an_executed_notebook_that_is_not_a_finished_run(folders, case, message):
    cells = {"unstamped": [_code("print(1)", _printed("1\n"))],
             "error": [_code("raise ValueError('boom')", nbformat.v4.new_output("error", ename="ValueError", evalue="boom", traceback=[]))],
             "unexecuted": [_code("print(1)", _printed("1\n")), _code("print(2)", count=None)],
             "silent": [_code("x = 1")]}.get(case)
    if case != "missing":
        nbformat.write(_nb(*cells, stamp=case != "unstamped"), folders / "executed" / "00_a.ipynb")
    with pytest.raises(book.BookError, match="make notebooks") as err:
        book.check_executed(["00_a"])
    assert message in str(err.value)


def test_a_page_shows_each_chart_its_cells_write_and_names_its_run(folders):
    nbformat.write(_nb(), folders / "notebooks" / "00_a.ipynb")
    nbformat.write(_nb(_code('gh.plots.loss_curves(h, "00_a_loss.png")', _printed("done\n"))), folders / "executed" / "00_a.ipynb")
    with pytest.raises(book.BookError, match="charts/00_a_loss.png, written by a cell of 00_a, is missing"):
        book.stage()
    (folders / "charts" / "00_a_loss.png").write_bytes(b"\x89PNG")
    book.stage()
    page = nbformat.read(folders / "stage" / "notebooks" / "00_a.ipynb", as_version=4)
    assert "commit `0123456789`" in page.cells[1].source and "2026-12-02 16:00 UTC" in page.cells[1].source
    assert page.cells[-1].source.startswith("```{figure} ../charts/00_a_loss.png")
    assert (folders / "stage" / "charts" / "00_a_loss.png").exists()


def test_a_chart_older_than_the_run_is_refused(folders):
    nbformat.write(_nb(), folders / "notebooks" / "00_a.ipynb")
    nb = _nb(_code('gh.plots.loss_curves(h, "00_a_loss.png")', _printed("done\n")))
    nb.metadata["gemma_run"]["started_epoch"] = 4e9  # the run started after the chart was written
    nbformat.write(nb, folders / "executed" / "00_a.ipynb")
    (folders / "charts" / "00_a_loss.png").write_bytes(b"\x89PNG")
    with pytest.raises(book.BookError, match="older than the run of 00_a"):
        book.stage()


def test_the_book_lists_every_committed_notebook_and_the_reference_pages():
    index = (ROOT / "book" / "index.md").read_text(encoding="utf-8")
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert f"notebooks/{nb.stem}\n" in index, f"{nb.stem} is not in the book's table of contents"
    for page in ("results", "reliability", "colab", "install", "package", "api"):
        assert f"\n{page}\n" in index and any((ROOT / "book").glob(f"{page}.*"))


def test_the_api_page_names_every_module_of_the_package():
    """The API page lists modules by hand: a module added, split or removed must show there too."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    package = root / "gemma_helpers"
    modules = {"gemma_helpers." + ".".join(p.relative_to(package).with_suffix("").parts)
               for p in package.rglob("*.py") if not p.stem.startswith("_")}
    named = {line.split("::", 1)[1].strip() for line in (root / "book" / "api.rst").read_text().splitlines()
             if line.startswith(".. automodule::")} - {"gemma_helpers"}
    assert named == modules, f"missing from book/api.rst: {sorted(modules - named)}; gone: {sorted(named - modules)}"
