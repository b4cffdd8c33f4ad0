"""Each public function and class in gemma_helpers names the notebook section that explains it.

Issue 13, deliverable 3 (d2l's habit: each gathered function says which section defined it). A
docstring says ``Notebook NN, section N`` / ``Notebook NN, "Title"``, or, for what no notebook
shows, ``Not shown in a notebook: used by ...``. Read with ast: nothing is imported.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gemma_helpers"
NAMES = re.compile(r"Notebook (\d\d)")
NOT_SHOWN = "Not shown in a notebook"


def public_definitions():
    """(module:name, docstring or None) for every public top-level def/class in the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                yield f"{module}:{node.name}", ast.get_docstring(node)


def test_the_walk_finds_the_package():
    found = dict(public_definitions())
    assert len(found) > 200, f"only {len(found)} public definitions found under {PACKAGE}"
    assert "gemma_helpers.data.papers:split_by_paper" in found


def test_every_public_definition_names_its_notebook_section():
    missing = [name for name, doc in public_definitions() if not doc or not (NAMES.search(doc) or NOT_SHOWN in doc)]
    assert not missing, (
        f"{len(missing)} public definitions name no notebook section (add 'Notebook NN, section N' or "
        f"'Not shown in a notebook: used by ...' to the docstring): " + ", ".join(missing)
    )


def test_every_notebook_named_exists():
    notebooks = {path.name[:2] for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.py")}
    assert notebooks, f"no notebooks found in {ROOT / 'notebooks'}"
    wrong = [
        f"{name} (Notebook {number})"
        for name, doc in public_definitions()
        for number in NAMES.findall(doc or "")
        if number not in notebooks
    ]
    assert not wrong, f"docstrings name notebooks that do not exist in notebooks/: " + ", ".join(wrong)
