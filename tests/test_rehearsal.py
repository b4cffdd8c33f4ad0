"""The GPU-profile rehearsal's switch and stand-ins (the runner itself runs in `make test`)."""
from pathlib import Path

import pytest

import gemma_helpers as gh
from gemma_helpers import rehearsal
from gemma_helpers.data import dolly, persian


@pytest.fixture()
def rehearsing(monkeypatch, tmp_path):
    monkeypatch.setenv("GEMMA_REHEARSAL", "1")
    monkeypatch.setenv("GEMMA_HELPERS_CACHE", str(tmp_path / "cache"))


def test_without_the_switch_nothing_is_cut_or_replaced(monkeypatch):
    monkeypatch.delenv("GEMMA_REHEARSAL", raising=False)
    spec = gh.TrainSpec(max_steps=738, optim="adamw_8bit")
    assert rehearsal.cut_steps(spec) == spec and rehearsal.cut_tokens(128) == 128
    assert gh.models.resolve("gemma-3-1b-it")[0] == "unsloth/gemma-3-1b-it"
    with pytest.raises(AssertionError, match="did not drop"):
        gh.results.expect(False, "held-out perplexity did not drop")


def test_the_switch_cuts_steps_and_replaces_cuda_only_optimisers(rehearsing, capsys):
    spec = rehearsal.cut_steps(gh.TrainSpec(epochs=3, optim="paged_adamw_8bit", eval_steps=5))
    assert (spec.max_steps, spec.optim, spec.eval_steps) == (rehearsal.STEPS, "adamw_torch", 1)
    assert rehearsal.cut_tokens(128) == rehearsal.NEW_TOKENS
    gh.results.expect(False, "held-out perplexity did not drop")  # reported, not raised
    said = capsys.readouterr().out
    assert "rehearsal: would call bitsandbytes optim='paged_adamw_8bit'" in said
    assert "outcome check not applied (random-weight stand-in): held-out perplexity did not drop" in said


def test_hub_datasets_stand_in_with_their_own_schema_through_load_dataset(rehearsing):
    raw = list(rehearsal.load_hub_dataset("mshojaei77/persian-gk"))
    rows, report = persian.clean_conversations(raw)
    assert len(rows) > 200  # the GPU profile holds 200 out
    assert all(set(m) == {"role", "content"} for r in rows for m in r["messages"])
    free = dolly.context_free(dolly.from_hub())
    assert len(free) >= 1100  # the GPU profile's 1,000 training + 100 held-out rows
    with pytest.raises(ValueError, match="no rehearsal stand-in for the dataset some/other"):
        rehearsal.load_hub_dataset("some/other")


def test_arxiv_stand_ins_download_and_pass_the_title_check(rehearsing, tmp_path):
    from gemma_helpers.data import papers as gp

    papers = gp.arxiv_papers()
    assert [p.key for p in papers] == [p.key for p in gp.ARXIV_PAPERS]
    assert all(p.source.startswith("http://127.0.0.1:") for p in papers)
    corpus = gp.collect(papers[:3], tmp_path / "pdf", progress=False)
    assert [r["status"] for r in corpus.report] == ["ok"] * 3, corpus.report


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

    monkeypatch.setattr(rehearsal, "_scratch_repo", lambda root, scratch: tmp_path)
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

    from gemma_helpers.chat import IGNORE_INDEX, VisionCollator

    folder = rehearsal.gemma4_checkpoint(tmp_path / "gemma-4-e4b-it")
    model, processor = gh.models.load_vision_model(str(folder), load_in_4bit=False)
    assert type(model).__name__ == "Gemma4ForConditionalGeneration"
    assert isinstance(processor, rehearsal.gemma4_processor_class())
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
    """Without torchvision, rehearsal.gemma4_processor_class binds the torchvision image processor's
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
