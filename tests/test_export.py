import pytest
import torch
from conftest import XY_FACT, XY_HELDOUT, XY_TRAIN

import gemma_helpers as gh


def test_merged_model_answers_like_the_adapter(xylandia_adapter, xylandia_merged):
    result, tok = xylandia_adapter
    merged_dir = xylandia_merged
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "tokenizer.json").is_file()
    merged, mtok = gh.load_model(str(merged_dir))
    assert merged.get_input_embeddings().weight.shape[0] == 262144  # not resized
    assert mtok.chat_template == tok.chat_template
    questions = XY_TRAIN[:2] + [XY_HELDOUT]
    assert gh.ask(merged, mtok, questions) == gh.ask(result.model, tok, questions)
    assert not any(p.name.startswith(".merged.tmp") for p in merged_dir.parent.iterdir())


def test_merge_of_a_4bit_adapter_dequantises_instead_of_requantising(tmp_path, embedded_dir):
    model, tok = gh.load_model(load_in_4bit=True)
    spec = gh.TrainSpec(target_modules=("q_proj", "v_proj"), max_steps=4, batch_size=2, learning_rate=1e-3,
                        save_steps=1000)
    result = gh.train(model, tok, gh.qa_rows([(q, XY_FACT) for q in XY_TRAIN]), spec, tmp_path / "run")
    merged_dir = gh.merge(result.adapter_dir, tmp_path / "merged")
    merged, _ = gh.load_model(str(merged_dir))
    assert not getattr(merged, "is_loaded_in_4bit", False)
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    enc = tok(["What is the capital of Xylandia?"], return_tensors="pt")
    with torch.inference_mode():
        a = result.model.eval()(**enc).logits
        b = merged.eval()(**enc).logits
    assert (a - b).abs().max().item() < 1e-2 * a.abs().max().item()


def test_missing_or_incomplete_adapter_names_the_path(tmp_path):
    with pytest.raises(gh.AdapterError, match=str(tmp_path / "nope")):
        gh.merge(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "adapter_config.json").write_text("{}")
    with pytest.raises(gh.AdapterError, match=r"half has no adapter_model.safetensors"):
        gh.merge(tmp_path / "half")


def test_merge_never_replaces_a_folder_it_did_not_write(xylandia_adapter, tmp_path):
    result, _ = xylandia_adapter
    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match="did not write"):
        gh.merge(result.adapter_dir, target)
    assert (target / "thesis.tex").read_text() == "years of work"
    merged = gh.merge(result.adapter_dir, tmp_path / "ours")
    assert gh.merge(result.adapter_dir, merged) == merged  # an earlier merge of ours is replaced
