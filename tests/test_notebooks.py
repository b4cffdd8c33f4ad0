"""Notebooks are stored without outputs and stay in step with their jupytext py:percent pair."""
import json
from pathlib import Path

import jupytext
import pytest

from gemma_helpers.__main__ import _cells

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    names = {p.stem for p in NOTEBOOKS}
    assert {"00_install_and_environment", "03_xylandia_fact_injection"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert dirty == [], f"{path.name}: cells {dirty} carry outputs; run `make sync`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_paired_py_percent_has_not_drifted(path):
    py = path.with_suffix(".py")
    assert py.is_file(), f"{path.name} has no jupytext pair {py.name}"
    a, b = jupytext.read(path), jupytext.read(py, fmt="py:percent")
    assert _cells(a) == _cells(b), f"{path.name} and {py.name} differ: edit the .py and run `make sync`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_has_a_tagged_parameters_cell(path):
    nb = jupytext.read(path)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
