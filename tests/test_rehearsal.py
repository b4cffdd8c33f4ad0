"""The GPU-profile rehearsal's pieces: the rehearse profile (recipe data), the stand-ins found through the
mirror settings, the unsloth calls shown by its first cell (the runner itself runs in `make test`)."""
import logging
from pathlib import Path

import pytest

import gemma_helpers as gh
from gemma_helpers import recipes, rehearsal
from gemma_helpers.data import dolly, persian


@pytest.fixture()
def cache(monkeypatch, tmp_path):
    """The stand-ins built into a fresh cache; no mirror set."""
    monkeypatch.setenv("GEMMA_HELPERS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(gh.env.HUB_MIRROR, raising=False)
    monkeypatch.delenv(gh.env.ARXIV_MIRROR, raising=False)


def test_the_rehearse_profile_is_the_gpu_run_with_steps_tokens_and_rows_cut(monkeypatch):
    for name in recipes.REGISTRY:
        gpu, cut = recipes.get(name, "gpu"), recipes.get(name, "rehearse")
        assert cut["model"] == gpu["model"] and cut.get("data") == gpu.get("data"), name
        assert cut["max_steps"] == recipes.STEPS and "8bit" not in cut.spec().optim, name
        assert cut.get("max_new_tokens", 0) <= recipes.NEW_TOKENS, name
        kept = {k for k in gpu if k not in ("max_steps", "optim", "eval_steps", "max_new_tokens", "eval_items",
                                           "holdout", "n_train", "n_heldout")}
        assert {k: cut[k] for k in kept} == {k: gpu[k] for k in kept}, name  # nothing else differs
    papers = recipes.get("papers", "rehearse")
    assert papers["eval_items"] == {"train": recipes.ROWS, "validation": recipes.ROWS, "holdout": recipes.ROWS}
    assert recipes.get("persian", "rehearse")["max_seq_length"] == recipes.get("persian", "gpu")["max_seq_length"] == 1024
    assert recipes.get("dolly", "rehearse")["n_train"] == recipes.STEPS  # Keras's fit: a row per step
    table = recipes.get("persian", "rehearse").table()
    assert "rehearse profile (the gpu profile's run, cut)" in table
    assert "optim          'adamw_torch'   (seed: 'adamw_8bit')" in table
    monkeypatch.setenv("GEMMA_PROFILE", "rehearse")  # chosen as any profile is
    assert gh.profile() == "rehearse" and recipes.get("xylandia-retention")["max_steps"] == recipes.STEPS


def test_outcome_checks_are_declared_not_applicable_by_the_profile_and_printed(monkeypatch, capsys):
    for profile in ("gpu", "cpu"):
        monkeypatch.setenv("GEMMA_PROFILE", profile)
        with pytest.raises(AssertionError, match="did not drop"):
            gh.results.expect(False, "held-out perplexity did not drop")
    monkeypatch.setenv("GEMMA_PROFILE", "rehearse")
    gh.results.expect(True, "never printed")
    gh.results.expect(False, "held-out perplexity did not drop")  # reported, not raised
    said = capsys.readouterr().out
    assert said == ("outcome check not applicable in the rehearse profile (its models learn nothing): "
                    "held-out perplexity did not drop\n")
    assert gh.env.OUTCOMES_CHECKED == {"gpu": True, "cpu": True, "rehearse": False}


def test_a_model_is_found_in_the_hub_mirror_under_its_hub_id(monkeypatch, tmp_path):
    monkeypatch.delenv(gh.env.HUB_MIRROR, raising=False)
    assert gh.models.resolve("gemma-3-1b-it")[0] == "unsloth/gemma-3-1b-it"
    monkeypatch.setenv(gh.env.HUB_MIRROR, str(tmp_path))
    assert gh.models.resolve("gemma-3-1b-it")[0] == "unsloth/gemma-3-1b-it"  # not in this mirror: the hub
    (tmp_path / "unsloth" / "gemma-3-1b-it").mkdir(parents=True)
    (tmp_path / "datasets" / "someone" / "rows").mkdir(parents=True)
    assert gh.models.resolve("gemma-3-1b-it")[0] == str(tmp_path / "unsloth" / "gemma-3-1b-it")
    assert gh.models.resolve("unsloth/gemma-3-1b-it")[0] == str(tmp_path / "unsloth" / "gemma-3-1b-it")
    assert gh.env.hub_mirror("someone/rows", "dataset") == tmp_path / "datasets" / "someone" / "rows"
    assert gh.env.hub_mirror("someone/rows") is None  # a model of that name is not there
    assert gh.env.hub_mirror("../unsloth/gemma-3-1b-it") is None and gh.env.hub_mirror("/etc") is None


def test_hub_datasets_stand_in_with_their_own_schema_through_load_dataset(cache, monkeypatch, capsys):
    from gemma_helpers.data.hub import load_hub_dataset

    for hub_id in rehearsal.DATASETS:
        rehearsal.dataset_folder(hub_id)
    monkeypatch.setenv(gh.env.HUB_MIRROR, str(rehearsal.mirror_root()))
    raw = list(load_hub_dataset("mshojaei77/persian-gk"))
    assert "mshojaei77/persian-gk: read from the local mirror" in capsys.readouterr().out
    rows, report = persian.clean_conversations(raw)
    assert len(rows) > 200  # the GPU profile holds 200 out
    assert all(set(m) == {"role", "content"} for r in rows for m in r["messages"])
    free = dolly.context_free(dolly.from_hub())
    assert len(free) >= 1100  # the GPU profile's 1,000 training + 100 held-out rows
    with pytest.raises(ValueError, match="no rehearsal stand-in for the dataset some/other"):
        rehearsal.dataset_folder("some/other")


def test_arxiv_stand_ins_through_the_mirror_setting_download_and_pass_the_title_check(monkeypatch, tmp_path):
    from gemma_helpers import offline
    from gemma_helpers.data import papers as gp

    monkeypatch.delenv(gh.env.ARXIV_MIRROR, raising=False)
    assert [p.source for p in gp.arxiv_papers()] == [f"https://arxiv.org/pdf/{p.arxiv_id}" for p in gp.ARXIV_PAPERS]
    with offline.LoopbackServer(rehearsal.arxiv_files()) as arxiv:
        monkeypatch.setenv(gh.env.ARXIV_MIRROR, arxiv.url(""))
        papers = gp.arxiv_papers()
        assert [p.key for p in papers] == [p.key for p in gp.ARXIV_PAPERS]
        assert papers[0].source == arxiv.url(f"pdf/{gp.ARXIV_PAPERS[0].arxiv_id}")
        corpus = gp.collect(papers[:3], tmp_path / "pdf", progress=False)
    assert [r["status"] for r in corpus.report] == ["ok"] * 3, corpus.report


def test_the_first_cell_prints_each_unsloth_call_not_made(gemma3_1b_it_layout, capsys):
    logger = logging.getLogger("gemma_helpers.unsloth")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    try:
        gh.models.log_unsloth("FastModel.from_pretrained(...)", made=False)
        assert capsys.readouterr().out == ""  # silent until a handler is set
        assert "\nrehearsal.show_unsloth_calls()\n" in rehearsal.first_cell("01", "x.json")  # what the first cell runs
        rehearsal.show_unsloth_calls()
        rehearsal.show_unsloth_calls()  # twice: one handler
        gh.models.log_unsloth("save_pretrained_merged(...)", made=True)  # made: nothing to say
        model, _ = gh.load_model(str(gemma3_1b_it_layout))  # a local folder: the unsloth path on a GPU
        gh.attach_lora(model, r=4, alpha=8)
        said = capsys.readouterr().out.splitlines()
        loaded = (f"rehearsal: would call unsloth FastModel.from_pretrained(model_name={str(gemma3_1b_it_layout)!r}, "
                  "max_seq_length=1024, load_in_4bit=False, dtype=None)")
        lora = ("rehearsal: would call unsloth FastModel.get_peft_model(r=4, lora_alpha=8, target_modules="
                "['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'])")
        assert said == [loaded, lora]
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers[:] = saved[2]


def test_the_scratch_copy_gets_the_first_cell_and_notebooks_do_not(tmp_path):
    import nbformat

    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import gemma_helpers as gh")])
    nbformat.write(nb, root / "notebooks" / "01_x.ipynb")
    scratch = rehearsal._scratch_repo(root, tmp_path / "scratch")
    cells = nbformat.read(scratch / "notebooks" / "01_x.ipynb", as_version=4).cells
    live = rehearsal.live_file(scratch, "01_x.ipynb")
    assert [c.source for c in cells] == [rehearsal.first_cell("01", live), "import gemma_helpers as gh"]
    assert cells[0].source.endswith(f"rehearsal.watch_budget('01', {str(live)!r})")
    assert len(nbformat.read(root / "notebooks" / "01_x.ipynb", as_version=4).cells) == 1


def test_a_notebook_past_its_timeout_is_an_entry_and_the_others_still_run(tmp_path, monkeypatch):
    import subprocess

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for name in ("00_fast.ipynb", "01_slow.ipynb"):
        (notebooks / name).write_text("{}")
    ran = []

    def fake_run(cmd, **kwargs):  # the kernel's side: 01 never returns within the timeout
        ran.append(Path(cmd[-1]).name)
        if cmd[-1].endswith("01_slow.ipynb"):
            raise subprocess.TimeoutExpired(cmd, kwargs["timeout"], stderr=b"still training")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(rehearsal, "_scratch_repo", lambda root, scratch, first_cell=None: tmp_path)
    monkeypatch.setattr(rehearsal, "fill_mirror", lambda: tmp_path / "mirror")
    monkeypatch.setattr(rehearsal, "arxiv_files", dict)
    monkeypatch.setattr(subprocess, "run", fake_run)
    report = rehearsal.run_notebooks(notebooks, timeout=7, out=tmp_path / "results")
    entries = {e["notebook"]: e for e in report["notebooks"]}
    assert ran == ["00_fast.ipynb", "01_slow.ipynb"]
    assert entries["00_fast"]["status"] == "ok"
    assert entries["01_slow"]["status"] == "error"
    assert "01_slow.ipynb: timed out after 7 s" in entries["01_slow"]["error"]
    assert "still training" in entries["01_slow"]["error"]
    assert (tmp_path / "results" / "rehearsal.json").is_file()


def test_gemma4_stand_in_processes_an_image_and_trains_a_step_without_torchvision(tmp_path):
    """The Gemma 4 stand-in loads through load_vision_model's GPU-profile branch: the real
    Gemma4ForConditionalGeneration and Gemma4Processor (PIL image processor, Gemma 4's image tokens
    at the real ids); one processor call expands the image, and one forward / backward step reaches
    the vision tower through the image features."""
    import torch
    from PIL import Image
    from transformers.utils import is_torchvision_available

    from gemma_helpers import vision
    from gemma_helpers.chat import IGNORE_INDEX, VisionCollator

    folder = rehearsal.gemma4_checkpoint(tmp_path / "gemma-4-e4b-it")
    model, processor = gh.vision.load_vision_model(str(folder), load_in_4bit=False)
    assert type(model).__name__ == "Gemma4ForConditionalGeneration"
    assert isinstance(processor, vision.gemma4_processor_class())
    if not is_torchvision_available():
        assert type(processor.image_processor).__name__ == "Gemma4ImageProcessorPil"
    tok = processor.tokenizer
    assert (tok.image_token_id, tok.convert_tokens_to_ids(tok.boi_token), tok.convert_tokens_to_ids(tok.eoi_token)) \
        == (model.config.image_token_id, model.config.boi_token_id, model.config.eoi_token_id) == (258880, 255999, 258882)
    assert gh.models.embedding_rows(model) == len(tok) == rehearsal.REAL_VOCAB

    frame = Image.fromarray(torch.arange(96 * 96 * 3, dtype=torch.uint8).reshape(96, 96, 3).numpy())
    row = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What moves?"}]},
                        {"role": "assistant", "content": "the square"}]}
    batch = VisionCollator(processor, lambda r: [frame])([row])
    ids = batch["input_ids"][0]
    # the processor expands the one <|image|> into boi, one placeholder per image feature, eoi
    n_image = int((ids == tok.image_token_id).sum())
    assert n_image > 1 and int((ids == model.config.boi_token_id).sum()) == 1
    assert int(batch["mm_token_type_ids"][0].sum()) == n_image
    assert tok.decode(batch["labels"][0][batch["labels"][0] != IGNORE_INDEX]) == "the square<turn|>"
    with torch.no_grad():
        features = model.get_image_features(batch["pixel_values"], batch["image_position_ids"]).pooler_output
    assert [tuple(f.shape) for f in features] == [(n_image, model.config.text_config.hidden_size)]

    model.train()
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    vision = [p.grad for n, p in model.named_parameters() if "vision_tower" in n and p.requires_grad]
    assert vision and any(g is not None and g.abs().sum() > 0 for g in vision)  # the image reached the loss


def test_gemma4_processor_import_without_torchvision_binds_names_of_the_same_source():
    """Without torchvision, vision.gemma4_processor_class binds the torchvision image processor's
    module name to the PIL one; processing_gemma4 imports two names from it, which must be the same
    code in both files (a transformers upgrade that lets them differ fails here)."""
    import ast
    import re
    from pathlib import Path

    import transformers.models.gemma4 as gemma4

    folder = Path(gemma4.__file__).parent
    wanted = set(re.search(r"from \.image_processing_gemma4 import ([\w, ]+)",
                           (folder / "processing_gemma4.py").read_text()).group(1).replace(" ", "").split(","))
    assert wanted == {"Gemma4ImageProcessorKwargs", "get_aspect_ratio_preserving_size"}

    def sources(name):
        text = (folder / name).read_text()
        return {n.name: ast.get_source_segment(text, n) for n in ast.parse(text).body if getattr(n, "name", None) in wanted}

    assert sources("image_processing_gemma4.py") == sources("image_processing_pil_gemma4.py")
    assert set(sources("image_processing_pil_gemma4.py")) == wanted


def test_each_notebook_entry_carries_its_t4_budget():
    from gemma_helpers import budget

    entries = {n: rehearsal.budget_entry(f"{n}_x.ipynb") for n in ("00", "01", "02", "03", "04", "05", "06")}
    assert all(e["fits"] for e in entries.values()), entries
    assert all(e["peak_gpu_gb"] < budget.T4.gpu_gb and e["minutes"] <= budget.NOTEBOOK_MINUTES for e in entries.values())
    assert entries["02"]["peak_gpu_gb"] > 10 and entries["00"]["minutes"] == 0  # an E4B notebook; the install one


# notebook 02's own lines: section 4's load, section 8's free, release and load of the merged folder
PERSIAN_LOAD = "model, tok = gh.load_model(MODEL, load_in_4bit=LOAD_IN_4BIT, max_seq_length=spec.max_seq_length)"
PERSIAN_FREE = "model = run.model = None  # the trained model goes before the merged one loads"
PERSIAN_RELEASE = 'print(f"GPU memory still allocated: {gh.memory.release():.0f} MiB")'
PERSIAN_MERGED = 'merged, merged_tok = gh.load_model(str(merged_dir), load_in_4bit=R["merged_in_4bit"])'


def _watched_section_8(monkeypatch, tmp_path, free: bool):
    """Notebook 02's load / free lines run under the rehearsal's live ledger, with tiny stand-in objects for
    the loads, LoRA and training (no model is built): the ledger counts them as the real E4B."""
    import json
    import types

    import torch

    from gemma_helpers import merging, models, vision

    source = (Path(__file__).resolve().parents[1] / "notebooks" / "02_persian_chatml_qlora.py").read_text().splitlines()
    assert all(line in source for line in (PERSIAN_LOAD, PERSIAN_FREE, PERSIAN_RELEASE, PERSIAN_MERGED))

    def fake_load(name="gemma-3-270m", load_in_4bit=False, max_seq_length=1024, dtype=None, use_unsloth=None):
        return torch.nn.Linear(2, 2), "tokenizer"

    class Lora(torch.nn.Module):  # PEFT's layout: PeftModel.base_model (LoraModel).model (the base)
        def __init__(self, base):
            super().__init__()
            self.model = base

    class Peft(torch.nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base_model = Lora(base)

    for module in (models, gh):  # restored after the test; watch_budget wraps these
        monkeypatch.setattr(module, "load_model", fake_load)
    for module in (vision, gh):
        monkeypatch.setattr(module, "load_vision_model", vision.load_vision_model)
    monkeypatch.setattr(merging, "merge_16bit", merging.merge_16bit)
    monkeypatch.delenv(gh.env.HUB_MIRROR, raising=False)
    merged_dir = tmp_path / "merged"
    merged_dir.mkdir()
    (merged_dir / "gemma_helpers.json").write_text(json.dumps({"base": "unsloth/gemma-3n-E4B-it"}))
    ledger = rehearsal.watch_budget("02", tmp_path / "live.json")
    lines = [PERSIAN_LOAD, "model = Peft(model)", "run = types.SimpleNamespace(model=model)"]
    lines += ([PERSIAN_FREE] if free else []) + [PERSIAN_RELEASE, PERSIAN_MERGED]
    script = tmp_path / "section_8.py"
    script.write_text("\n".join(lines) + "\n")
    namespace = {"gh": gh, "Peft": Peft, "types": types, "MODEL": "gemma-3n-e4b-it", "LOAD_IN_4BIT": True,
                 "spec": types.SimpleNamespace(max_seq_length=1024), "merged_dir": merged_dir,
                 "R": {"merged_in_4bit": True}}
    exec(compile(script.read_text(), str(script), "exec"), namespace)  # noqa: S102 - the notebook's own lines
    return ledger, json.loads((tmp_path / "live.json").read_text())


def test_notebook_02_section_8_without_its_free_line_fails_the_live_check(monkeypatch, tmp_path):
    with pytest.raises(gh.budget.BudgetError) as err:
        _watched_section_8(monkeypatch, tmp_path, free=False)
    message = str(err.value)
    assert message.startswith(f"notebook 02, `{PERSIAN_MERGED}`: ")
    assert message.count("gemma-3n-e4b-it 4-bit") == 2 and "> 15.0 GB" in message
    assert "held by model, run.model" in message and "change: free model, run.model before this load" in message


def test_notebook_02_section_8_as_it_is_passes_the_live_check_and_writes_its_figures(monkeypatch, tmp_path):
    ledger, written = _watched_section_8(monkeypatch, tmp_path, free=True)
    one = gh.budget.architecture("gemma-3n-e4b-it").weights_gb(True)
    assert written["live_loads"] == ledger.as_dict()["live_loads"]  # the file, as the ledger had it
    assert written["live_peak_gpu_gb"] == pytest.approx(gh.budget.CUDA_CONTEXT_GB + one, abs=0.01)
    assert [e["alive"] for e in written["live_loads"]] == [["gemma-3n-e4b-it 4-bit"]] * 2  # one at a time
    assert written["live_loads"][1]["load"] == f"load 2: `{PERSIAN_MERGED}`"
    assert gh.load_model.live_ledger is ledger and rehearsal.watch_budget("02") is ledger  # wrapped once


def test_a_stand_in_folder_or_merged_folder_stands_for_its_registry_model(monkeypatch, tmp_path):
    import json

    monkeypatch.setenv("GEMMA_HELPERS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(gh.env.HUB_MIRROR, raising=False)
    assert rehearsal.stands_for("gemma-3n-e4b-it") == "gemma-3n-e4b-it"
    assert rehearsal.stands_for("google/gemma-4-e4b-it") == "gemma-4-e4b-it"
    assert rehearsal.stands_for("gemma-3-270m") is None  # the embedded model: counted at its own size
    standin = rehearsal.mirror_root() / "unsloth" / "gemma-3-1b-it"
    standin.mkdir(parents=True)
    assert rehearsal.stands_for(str(standin)) == "gemma-3-1b-it"
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "config.json").write_text(json.dumps({"_name_or_path": "unsloth/gemma-3n-E4B-it"}))
    assert rehearsal.stands_for(str(merged)) == "gemma-3n-e4b-it"
    assert rehearsal.stands_for(str(tmp_path)) is None


def test_rehearsal_json_entries_carry_the_live_ledger(tmp_path, monkeypatch):
    import json
    import subprocess

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for name in ("00_none.ipynb", "03_two.ipynb"):
        (notebooks / name).write_text("{}")
    live = gh.budget.LiveLedger("03")
    first, second = _Held(), _Held()
    live.hold(first, "gemma-3-1b-it", four_bit=True, where="`model, tok = gh.load_model(MODEL)`")
    live.hold(second, "gemma-3-1b-it", four_bit=True, where="`model, tok = gh.load_model(MODEL)`")

    def fake_run(cmd, **kwargs):  # the kernel's side: notebook 03's first cell wrote its ledger
        if cmd[-1].endswith("03_two.ipynb"):
            path = rehearsal.live_file(tmp_path, "03_two.ipynb")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(live.as_dict()))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(rehearsal, "_scratch_repo", lambda root, scratch, first_cell=None: tmp_path)
    monkeypatch.setattr(rehearsal, "fill_mirror", lambda: tmp_path / "mirror")
    monkeypatch.setattr(rehearsal, "arxiv_files", dict)
    monkeypatch.setattr(subprocess, "run", fake_run)
    report = rehearsal.run_notebooks(notebooks, out=tmp_path / "results")
    entries = {e["notebook"]: e["budget"] for e in json.loads((tmp_path / "results" / "rehearsal.json").read_text())
               ["notebooks"]}
    assert entries == {e["notebook"]: e["budget"] for e in report["notebooks"]}
    two = entries["03_two"]
    assert {"peak_gpu_gb", "host_ram_gb", "minutes", "fits"} <= set(two)  # the static walk
    assert two["live_peak_gpu_gb"] == live.as_dict()["live_peak_gpu_gb"] > gh.budget.CUDA_CONTEXT_GB
    assert two["live_alive_at_peak"] == ["gemma-3-1b-it 4-bit"] * 2 and len(two["live_loads"]) == 2
    assert entries["00_none"]["live_peak_gpu_gb"] is None and entries["00_none"]["live_loads"] == []


class _Held:
    """A loaded model's stand-in: anything a weak reference can watch."""
