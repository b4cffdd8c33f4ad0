"""The recipe registry: one copy of each recipe's numbers, read by the notebooks, the benchmark and the tests."""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import jupytext
import pytest

import gemma_helpers as gh
from gemma_helpers import fact_injection, recipes

ROOT = Path(__file__).parents[1]
NOTEBOOKS = {"01_papers_wordclouds_lora": "papers", "02_persian_chatml_qlora": "persian",
             "03_xylandia_fact_injection": "xylandia-retention", "04_kinetics_frames_lora": "frames",
             "05_merge_gguf_benchmark": "xylandia-export", "06_dolly_keras_lora": "dolly"}


def notebook_recipe(name: str) -> dict:
    """Run a notebook's parameters cell and the cell after it (where it reads its recipe); its namespace."""
    cells = [c for c in jupytext.read(ROOT / "notebooks" / f"{name}.py").cells if c.cell_type == "code"]
    at = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    namespace = {"gh": gh}
    for cell in cells[at : at + 2]:
        exec(compile(cell.source, f"{name} cell", "exec"), namespace)
    return namespace


def bench_module():
    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "benchmarks" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def rank_5(monkeypatch):
    """Every seed recipe's LoRA rank changed to 5, in the registry only."""
    for name, recipe in list(recipes.REGISTRY.items()):
        if "r" in recipe.values:
            monkeypatch.setitem(recipes.REGISTRY, name, dataclasses.replace(recipe, values={**recipe.values, "r": 5}))
    return 5


def test_one_number_changed_in_the_registry_reaches_every_notebook_the_benchmark_and_the_tests(rank_5, monkeypatch):
    for notebook, recipe in NOTEBOOKS.items():
        ns = notebook_recipe(notebook)
        assert ns["R"].recipe.name == recipe and ns["R"]["r"] == rank_5, notebook
        assert ns["R"].spec().r == rank_5 and ns.get("spec", ns["R"].spec()).r == rank_5, notebook
    assert notebook_recipe("03_xylandia_fact_injection")["seed_recipe"].spec().r == rank_5  # 03's seed run too
    assert notebook_recipe("06_dolly_keras_lora")["LORA_RANK"] == rank_5  # the Keras side's enable_lora(rank=...)

    bench = bench_module()
    args = bench.parse(["--steps", "3"])
    for name in bench.BENCH_RECIPES:
        rows, spec = bench.recipe_rows(name, args)
        assert spec.r == rank_5 and spec.max_steps == 3 and rows, name

    # the session fixture's recipe (tests/conftest.py) and notebook 05's fallback training read it too
    assert gh.recipes.get("xylandia-seed", "cpu", learning_rate=3e-4).spec().r == rank_5
    seen = {}
    monkeypatch.setattr(sys.modules["gemma_helpers.train"], "train",
                        lambda model, tok, rows, spec, out, **kw: seen.setdefault("spec", spec))
    fact_injection.xylandia_retention(None, None, fact_injection.xylandia_data(), "unused")
    assert seen["spec"].r == rank_5 and seen["spec"].learning_rate == 1e-4


def test_profiles_are_changes_over_the_seed_with_the_seed_value_shown():
    seed, cpu = recipes.get("persian", "gpu"), recipes.get("persian", "cpu")
    assert cpu.changed["learning_rate"] == 2e-5 and cpu["learning_rate"] == 5e-4  # the seed's rate beside the CPU's
    assert "r" not in cpu.changed and cpu["r"] == seed["r"] == 8
    assert "(seed: 2e-05)" in cpu.table() and "(seed: 'adamw_8bit')" in cpu.table()
    assert seed.spec().max_seq_length == 1024  # the T4's change (the seed's 4000 does not fit)
    ours = recipes.get("xylandia-retention", "cpu")
    assert ours.changed["learning_rate"] == 2e-4 and ours["learning_rate"] == 1e-4
    assert "(not in the xylandia-seed recipe)" in ours.table()


def test_overrides_apply_last_and_unknown_names_are_refused():
    assert recipes.get("papers", "cpu", max_steps=7).spec().max_steps == 7
    with pytest.raises(KeyError, match="no recipe 'persain'.*persian"):
        recipes.get("persain")
    with pytest.raises(KeyError, match="'papers' has no number 'lerning_rate'"):
        recipes.get("papers", "cpu", lerning_rate=1e-3)
    with pytest.raises(ValueError, match="profile 'tpu'"):
        recipes.get("papers", "tpu")


def test_every_recipe_builds_a_spec_for_every_profile():
    for name in recipes.REGISTRY:
        for profile in recipes.PROFILES:
            run = recipes.get(name, profile)
            assert run.spec().r == run["r"] and run["model"], (name, profile)


def test_what_a_notebook_does_differently_per_profile_is_recipe_data_not_a_profile_test_in_the_notebook():
    assert recipes.get("papers", "gpu")["paper_source"] == "arxiv" and recipes.get("papers", "cpu")["paper_source"] == "sample"
    gpu, cpu = recipes.get("persian", "gpu"), recipes.get("persian", "cpu")
    assert (gpu["merge"], gpu["merged_in_4bit"], gpu["data_card"]) == ("merged_16bit", True, None)
    assert (cpu["merge"], cpu["merged_in_4bit"], cpu["data_card"]) == ("float32", False, "data/README.md")
    export = recipes.get("xylandia-export", "cpu")
    assert recipes.get("xylandia-export", "gpu")["lora_stage"] and not export["lora_stage"]
    assert export.spec() == recipes.get("xylandia-retention", "cpu").spec()  # the adapter's own numbers
    for name in NOTEBOOKS:
        code = "\n".join(c.source for c in jupytext.read(ROOT / "notebooks" / f"{name}.py").cells if c.cell_type == "code")
        assert "profile() ==" not in code and "if cpu" not in code, f"{name} decides by profile itself"
