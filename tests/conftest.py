"""Shared fixtures: the real embedded Gemma 3 270M (converted once per cache folder)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

def _xylandia():
    from gemma_helpers import fact_injection

    return fact_injection.xylandia_data()


XY_FACT = _xylandia()["fact"]  # notebook 03's data (data/xylandia.json): the fact and its 5 training questions
XY_TRAIN = _xylandia()["train_questions"]
XY_HELDOUT = "Can you tell me what the capital of Xylandia is?"  # one of its held-out paraphrases
assert XY_HELDOUT in _xylandia()["heldout_questions"]


@pytest.fixture(scope="session")
def embedded_dir():
    from gemma_helpers.embedded import embedded_path

    return embedded_path()


@pytest.fixture(scope="session")
def tokenizer(embedded_dir):
    from transformers import AutoTokenizer

    from gemma_helpers.models import prepare_tokenizer

    tok = AutoTokenizer.from_pretrained(embedded_dir)
    prepare_tokenizer(tok)
    return tok


@pytest.fixture(scope="session")
def gemma3_1b_it_layout(tmp_path_factory, embedded_dir):
    """A random-weight, 64-wide Gemma3ForCausalLM with 262,144 embedding rows and Gemma 3 1B-it's
    tokenizer: the embedded Gemma 3 tokenizer plus ``<image_soft_token>`` at id 262144."""
    from gemma_helpers import rehearsal

    return rehearsal.gemma3_text_checkpoint(tmp_path_factory.mktemp("standin") / "gemma-3-1b-it")


@pytest.fixture(scope="session")
def bf16_model_dir(tmp_path_factory, embedded_dir):
    """Where bfloat16 numerics are compared with float32: the embedded Gemma 3 270M on a CPU that computes
    bfloat16 natively (AVX512-BF16 or AMX); elsewhere bfloat16 is emulated, about 3.5x slower than float32,
    so a random-weight Gemma 3 of the real class (2 layers, 128 wide, the real tokenizer and vocabulary)."""
    from gemma_helpers import env, rehearsal

    if env.cpu_bf16_native():
        return embedded_dir
    return rehearsal.gemma3_text_checkpoint(tmp_path_factory.mktemp("bf16") / "gemma3-tiny", hidden_size=128)


@pytest.fixture()
def base_model(embedded_dir):
    """A fresh float32 copy of the embedded model (a second or two to load)."""
    import gemma_helpers as gh

    return gh.load_model()


@pytest.fixture(scope="session")
def xylandia_adapter(tmp_path_factory, embedded_dir):
    """A LoRA adapter trained for real on the Xylandia fact (float32 base, about 45 s)."""
    import gemma_helpers as gh

    model, tok = gh.load_model()
    # the seed's recipe (the registry's, q/v at r16) on a float32 base: 40 steps at 3x its rate, no dropout,
    # 4 repeats. The rate is for margin: at 3e-4 the float32 path's Q4_K_M file lost the fact on one trained
    # question; at 6e-4 every stage answered all 11 questions in float32 (2026-12-02). The bf16 path was not
    # measured at 6e-4 (it passed at 3e-4 on an AVX512-BF16 CPU). q/v, not all seven layers: llama.cpp's
    # Q4_K_M keeps v_proj at 6 bits in half the layers, and an all-seven r16 adapter at 3e-4 answered 11/11
    # in f16 and 0/11 in Q4_K_M.
    recipe = gh.recipes.get("xylandia-seed", "cpu", learning_rate=6e-4, max_steps=40, dropout=0.0, save_steps=1000,
                            repeats=4, load_in_4bit=False)
    out = tmp_path_factory.mktemp("xylandia")
    result = gh.train(model, tok, gh.fact_injection.xylandia_rows(_xylandia(), recipe["repeats"]), recipe.spec(), out)
    return result, tok


@pytest.fixture(scope="session")
def xylandia_merged(xylandia_adapter, tmp_path_factory):
    """The session adapter merged into a float32 base (a folder under a session temp dir)."""
    import gemma_helpers as gh

    result, _ = xylandia_adapter
    return gh.merge(result.adapter_dir, tmp_path_factory.mktemp("merge") / "merged")


@pytest.fixture(scope="session")
def xylandia_gguf(xylandia_merged):
    """The merged session adapter as an f16 GGUF file, converted by llama.cpp's converter."""
    import gemma_helpers as gh

    return gh.to_gguf(xylandia_merged, "f16")


def tiny_chat_gguf(path, template, eot=None):
    """A GGUF holding only what a runtime reads to format and end a turn (no tensors)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_token_list(["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "user", "model"])
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    if eot is not None:
        writer.add_eot_token_id(eot)
    if template is not None:
        writer.add_chat_template(template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
