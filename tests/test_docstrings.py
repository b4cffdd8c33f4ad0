"""Docstrings say what a function does; a notebook reference stands only where that section shows it.

Issue 24, item 4. Every public function and class has a docstring. None keeps a hand-written list of
its callers (such lists went stale). A docstring that names a notebook section (``Notebook NN,
section N`` or ``Notebook NN, "Title"``; "Parameters" and "Setup" name the tagged parameters cell
and the setup cell) must name a notebook and a section that exist, and that notebook must use the
function or class by name. Read with ast: nothing is imported.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gemma_helpers"
REFERENCE = re.compile(r'Notebook (\d\d)(?:, (?:section (\d+)|"([^"]+)"))?')
CELLS = ("parameters", "setup")  # cells every notebook has, without a heading of their own
CALLER_LIST = re.compile(r"Not shown in a notebook|[Uu]sed by (gemma_helpers|the tests|benchmarks/)")


def public_definitions():
    """(module:name, docstring or None) for every public top-level def/class in the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                yield f"{module}:{node.name}", ast.get_docstring(node)


def notebooks() -> dict[str, tuple[list[str], str]]:
    """Notebook number -> (its headings, lower case, whitespace folded; its code, comments dropped)."""
    found = {}
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        text = path.read_text(encoding="utf-8")
        headings = [" ".join(line.lstrip("# ").split()).lower() for line in text.splitlines()
                    if re.match(r"^# #{1,3} ", line)]
        code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
        found[path.name[:2]] = (headings, code)
    return found


def test_the_walk_finds_the_package_and_the_notebooks():
    found = dict(public_definitions())
    assert len(found) > 200, f"only {len(found)} public definitions found under {PACKAGE}"
    assert "gemma_helpers.data.papers:split_by_paper" in found
    assert sorted(notebooks()) == ["00", "01", "02", "03", "04", "05", "06"]


def test_every_public_definition_has_a_docstring():
    missing = [name for name, doc in public_definitions() if not doc]
    assert not missing, f"{len(missing)} public definitions have no docstring: " + ", ".join(missing)


def test_no_docstring_keeps_a_list_of_its_callers():
    lists = [name for name, doc in public_definitions() if CALLER_LIST.search(doc or "")]
    assert not lists, f"{len(lists)} docstrings list their callers (say what it does instead): " + ", ".join(lists)


def problems(definitions, books) -> list[str]:
    """Each notebook reference in ``definitions`` whose notebook or section is missing, or whose
    notebook does not use the definition by name."""
    wrong = []
    for qualified, doc in definitions:
        name = qualified.rsplit(":", 1)[1]
        for ref in REFERENCE.finditer(doc or ""):
            number, section, title = ref.groups()
            where = f"{qualified} ({' '.join(ref.group(0).split())})"
            if number not in books:
                wrong.append(f"{where}: no notebook {number}")
                continue
            headings, code = books[number]
            if section and not any(h.startswith(f"{section}.") for h in headings):
                wrong.append(f"{where}: the notebook has no section {section}")
            elif title and " ".join(title.split()).lower() not in CELLS and not any(
                    " ".join(title.split()).lower() in h for h in headings):
                wrong.append(f"{where}: the notebook has no heading {title!r}")
            elif not re.search(rf"\b{re.escape(name)}\b", code):
                wrong.append(f"{where}: the notebook does not use {name}")
    return wrong


def test_every_notebook_reference_names_a_section_that_shows_it():
    wrong = problems(public_definitions(), notebooks())
    assert not wrong, "docstrings name notebook sections that do not show them:\n" + "\n".join(wrong)


def test_a_wrong_reference_is_caught():
    books = {"03": (["2. train"], "run = gh.train(model)")}
    assert problems([("m:train", 'Notebook 03, section 2.')], books) == []
    assert problems([("m:train", 'Notebook 03, section 5.')], books) == ["m:train (Notebook 03, section 5): the notebook has no section 5"]
    assert problems([("m:merge", 'Notebook 03, section 2.')], books) == ["m:merge (Notebook 03, section 2): the notebook does not use merge"]
    assert problems([("m:train", 'Notebook 07, "Results".')], books) == ['m:train (Notebook 07, "Results"): no notebook 07']
    assert problems([("m:train", 'Notebook 03, "Results".')], books) == [
        "m:train (Notebook 03, \"Results\"): the notebook has no heading 'Results'"]
