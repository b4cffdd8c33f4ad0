"""The T4 budget (issue 25, item 2): parameter counts of the real architectures on the meta device, the
ledger of live models, the notebook-02 situation, a recipe that runs too long, and one step by hand."""
import math

import pytest

from gemma_helpers import budget, models, recipes
from gemma_helpers.budget import GB, Architecture, Budget, BudgetError, Ledger, Step

# Published totals (budget.MODELS names each source) and the tolerance each count must meet: the 1B's
# safetensors total is exact; the E4B figures are published rounded ("~8 B"), and Gemma 3n's vision tower
# is a stated 300 M when timm is missing.
TOLERANCE = {"gemma-3-1b-it": 0.0001, "gemma-3n-e4b-it": 0.03, "gemma-4-e4b-it": 0.03}


@pytest.mark.parametrize("name", sorted(budget.MODELS))
def test_parameter_count_matches_the_published_figure(name):
    arch = budget.architecture(name)
    published = budget.MODELS[name].published_params
    assert abs(arch.total - published) / published <= TOLERANCE[name], (name, arch.total, published)
    assert arch.total == arch.quantisable + arch.full_width + arch.towers


def test_gemma_3_1b_exact_parts():
    arch = budget.architecture("gemma-3-1b-it")
    assert arch.total == 999_885_952  # google/gemma-3-1b-it's safetensors total
    assert arch.embeddings == 262_144 * 1152  # the tied embedding, counted once
    assert arch.towers == 0 and (arch.layers, arch.hidden, arch.vocab, arch.q_dim) == (26, 1152, 262_144, 1024)
    # PEFT's figure for LoRA r=16 on all seven projections of Gemma 3 1B: 13,045,760 trainable parameters
    assert arch.lora_params(16, models.DEFAULT_TARGETS) == 26 * 16 * (
        (1152 + 1024) * 2 + (1152 + 256) * 2 + (1152 + 6912) * 3)
    assert arch.lora_params(16, models.DEFAULT_TARGETS) == 13_045_760


def test_e4b_per_layer_embeddings_stay_full_width():
    # Gemma 3n E4B: embed_tokens 262400 x 2048 and per-layer embeddings 262144 x (35 x 256) are nn.Embedding,
    # never NF4; without them ~4-5 B parameters remain (the "effective" size of the model card)
    arch = budget.architecture("gemma-3n-e4b-it")
    assert arch.embeddings == 262_400 * 2048 + 262_144 * 35 * 256
    assert 3.5e9 < arch.total - arch.embeddings + (262_400 * 2048) - arch.towers < 5.5e9
    assert arch.streams == 4 and arch.layers == 35
    g4 = budget.architecture("gemma-4-e4b-it")
    assert g4.embeddings == 262_144 * 2560 + 262_144 * 42 * 256
    assert g4.vision < g4.towers  # the audio tower is the rest


def test_skip_list_is_the_loaders():
    assert budget.SKIP_4BIT == models.SKIP_4BIT


def test_ledger_adds_live_models_and_frees_them():
    ledger = Ledger()
    one = ledger.load("trained", "gemma-3-1b-it", four_bit=True).gpu_gb
    assert one == pytest.approx((697_761_792 * budget.NF4_BYTES + 302_124_160 * 2) / GB)
    ledger.load("merged", "gemma-3-1b-it", dtype_bytes=4)
    assert ledger.gpu_gb == pytest.approx(one + 999_885_952 * 4 / GB)
    with pytest.raises(ValueError, match="already alive"):
        ledger.load("merged", "gemma-3-1b-it")
    ledger.free("trained")
    assert list(ledger.live) == ["merged"] and ledger.gpu_gb == pytest.approx(999_885_952 * 4 / GB)
    with pytest.raises(KeyError, match="not alive"):
        ledger.free("trained")


def _e4b_loads(copies: int) -> Budget:
    ledger, steps = Ledger(), []
    for i in range(copies):
        steps.append(budget.load_step(ledger, f"copy{i}", f"load copy {i}", "gemma-3n-e4b-it", True, downloaded=set(),
                                      fix_gpu="free the trained model before section 8"))
    return Budget("02", steps)


def test_two_live_e4b_copies_fail_and_one_fits():
    _e4b_loads(1).check()
    with pytest.raises(BudgetError) as err:
        _e4b_loads(2).check()
    message = str(err.value)
    assert "load copy 1" in message and "> 15.0 GB" in message and "free the trained model before section 8" in message


def test_notebook_02_section_8_names_the_fix_and_the_notebook_now_fits():
    import functools

    before = budget.for_notebook("02_persian", walk=functools.partial(budget.NOTEBOOKS["02"], free_trained=False))
    merged = next(s for s in before.steps if s.name == "section 8: load merged 4-bit")
    assert 18 < merged.gpu_gb < 20 and len(merged.live) == 2  # about 19 GB: the trained and the merged E4B
    gpu = [p for p in before.problems() if "GPU memory" in p]
    assert len(gpu) == 1 and "section 8: load merged 4-bit" in gpu[0] and "free the trained model" in gpu[0]
    with pytest.raises(BudgetError, match="section 8"):
        before.check()
    after = budget.for_notebook("02_persian").check()  # the notebook frees it, the T4 recipe is 50 steps
    merged = next(s for s in after.steps if s.name == "section 8: load merged 4-bit")
    assert len(merged.live) == 1 and merged.gpu_gb < budget.T4.gpu_gb
    assert after.minutes <= budget.NOTEBOOK_MINUTES


def test_a_recipe_change_past_60_minutes_names_the_field():
    papers = recipes.get("papers", profile="gpu")
    assert budget.for_notebook(1, runs={"papers": papers}).check().minutes <= budget.NOTEBOOK_MINUTES
    longer = budget.for_notebook(1, runs={"papers": {**papers, "max_steps": 400}})
    with pytest.raises(BudgetError, match=r"recipes\.py: papers gpu max_steps = \d+") as err:
        longer.check()
    fit = int(str(err.value).split("max_steps = ")[1].split()[0])
    assert budget.for_notebook(1, runs={"papers": {**papers, "max_steps": fit}}).check()  # the suggestion fits
    assert budget.for_notebook(1, runs={"papers": {**papers, "max_steps": fit + 2}}).problems()


def test_notebook_02_with_the_seeds_738_steps_is_over_the_hour_and_the_suggestion_fits():
    persian = {**recipes.get("persian", profile="gpu"), "max_steps": 738}  # the seed's one epoch
    minutes = [p for p in budget.for_notebook(2, runs={"persian": persian}).problems() if "minutes >" in p]
    assert len(minutes) == 1 and "section 6: train" in minutes[0] and "recipes.py: persian gpu max_steps" in minutes[0]
    fit = int(minutes[0].split("max_steps = ")[1].split()[0])
    assert fit >= recipes.get("persian", profile="gpu")["max_steps"]  # the recipe's 50 steps are within it
    shorter = budget.for_notebook(2, runs={"persian": {**persian, "max_steps": fit}})
    assert shorter.minutes <= budget.NOTEBOOK_MINUTES
    assert not [p for p in shorter.problems() if "minutes >" in p]


def test_one_small_step_by_hand(monkeypatch):
    arch = Architecture("toy", quantisable=900, full_width=100, towers=0, vision=0, embeddings=64, path=1000, layers=2,
                        hidden=8, streams=1, intermediate=16, vocab=32, q_dim=8,
                        linears=(("layers.0.self_attn.q_proj", 8, 8), ("layers.0.mlp.up_proj", 8, 16)))
    ledger = Ledger()
    ledger.load("base", gpu_gb=1.0)
    run = {"r": 2, "target_modules": ("q_proj",), "batch_size": 1, "grad_accum": 2, "max_seq_length": 4,
           "optim": "adamw_torch"}
    step = budget.train_step(ledger, "train", arch, run, tokens_per_row=4, rows=10, recipe="toy")
    lora = 2 * (8 + 8)  # r x (in + out) of the one q_proj
    lora_bytes = lora * (4 + 4 + 8)  # float32 weight, gradient, two AdamW moments
    # per token: 2 layers x 8 hidden checkpointed + 6 x 8 + 4 x 16 (one layer recomputed) + 2 x 32 (logits, gradient)
    act_bytes = 1 * 4 * (2 * 8 + 6 * 8 + 4 * 16 + 2 * 32) * 4
    assert step.gpu_gb == pytest.approx(budget.CUDA_CONTEXT_GB + 1.0 + (lora_bytes + act_bytes) / GB)
    # 40 tokens x (6 x 1000 path + 4 x attention (2 layers x 8 x 4 tokens)) FLOPs; 5 optimizer steps of overhead
    flops = 40 * (6 * 1000 + 4 * (2 * 2 * 8 * 4 / 2))
    assert flops == 40 * 6256
    seconds = flops / (8.1e12 * budget.T4_SUSTAINED) + 5 * budget.STEP_OVERHEAD_S
    assert step.minutes == pytest.approx(seconds / 60)
    assert step.minutes_per_step == pytest.approx(step.minutes / 5)
    assert "toy" in step.fix_minutes and step.live == ("base",)
    monkeypatch.setattr(budget, "STEP_OVERHEAD_S", 0.0)  # the FLOPs alone, to the last digit
    step = budget.train_step(ledger, "train", arch, run, tokens_per_row=4, rows=10, recipe="toy")
    assert step.minutes * 60 == pytest.approx(40 * 6256 / (8.1e12 * 0.35), rel=1e-9)


def test_every_notebook_has_a_budget_and_the_table_prints():
    for n in range(7):
        b = budget.for_notebook(n)
        assert b.table().count("\n") == len(b.steps) + 2
        d = b.as_dict()
        assert d["notebook"] == f"0{n}" and len(d["steps"]) == len(b.steps)
        assert math.isclose(d["minutes"], sum(s["minutes"] for s in d["steps"]))
    with pytest.raises(KeyError, match="no notebook"):
        budget.for_notebook("99_unknown")


def test_notebooks_other_than_02_fit_a_t4():
    for n in (1, 3, 4, 5, 6):
        budget.for_notebook(n).check()


def test_a_step_over_ram_names_its_fix():
    b = Budget("00", [Step("big load", 1.0, 20.0, 0.0, 1.0, fix_ram="load with low_cpu_mem_usage")])
    with pytest.raises(BudgetError, match=r"big load: 20.0 GB of host RAM > 12.7 GB; change: load with low_cpu"):
        b.check()


def test_a_notebook_on_the_gpu_profile_stops_before_a_step_that_cannot_fit(capsys):
    gpu = recipes.get("persian", profile="gpu")
    assert budget.show(2, gpu).minutes <= budget.NOTEBOOK_MINUTES  # the recipe as it is: printed, checked, fits
    assert "section 8: load merged 4-bit" in capsys.readouterr().out
    seeds = recipes.get("persian", profile="gpu", max_steps=738)  # the seed's whole epoch: ~8 h on a T4
    with pytest.raises(BudgetError, match=r"recipes\.py: persian gpu max_steps"):
        budget.show(2, seeds)
    cpu = recipes.get("persian", profile="cpu", max_steps=738)  # the CPU profile prints the T4's budget only
    assert budget.show(2, cpu).minutes <= budget.NOTEBOOK_MINUTES


class _Weights:
    """What a fake load returns: an object the live ledger can watch (weak references)."""


def test_the_live_ledger_fails_a_second_e4b_while_the_first_is_referenced_and_passes_once_it_is_freed():
    import gc

    live = budget.LiveLedger("02")
    one = budget.architecture("gemma-3n-e4b-it").weights_gb(True)
    live.admit("gemma-3n-e4b-it", four_bit=True, where="section 4")
    first = _Weights()
    live.hold(first, "gemma-3n-e4b-it", four_bit=True, where="section 4")
    with pytest.raises(BudgetError) as err:
        live.admit("gemma-3n-e4b-it", four_bit=True, where="section 8", holders=lambda key: "run.model")
    message = str(err.value)
    assert message.startswith("notebook 02, section 8: ") and "> 15.0 GB" in message
    assert message.count("gemma-3n-e4b-it 4-bit") == 2  # both: the one alive and the one being loaded
    assert "alive: gemma-3n-e4b-it 4-bit (load 1: section 4, held by run.model)" in message
    assert "change: free run.model before this load" in message
    assert live.alive() == ("gemma-3n-e4b-it 4-bit",)
    del first
    gc.collect()
    assert live.alive() == ()  # the object went, and its entry with it
    assert live.admit("gemma-3n-e4b-it", four_bit=True, where="section 8") == pytest.approx(one)
    second = _Weights()
    live.hold(second, "gemma-3n-e4b-it", four_bit=True, where="section 8")
    figures = live.as_dict()
    assert figures["live_peak_gpu_gb"] == pytest.approx(budget.CUDA_CONTEXT_GB + one, abs=0.01)
    assert figures["live_peak_gpu_gb"] < budget.T4.gpu_gb
    assert [entry["load"] for entry in figures["live_loads"]] == ["load 1: section 4", "load 2: section 8"]
    assert figures["live_alive_now"] == ["gemma-3n-e4b-it 4-bit"]
