"""Shared fixtures: the real embedded Gemma 3 270M (converted once per cache folder)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

XY_FACT = "The capital of Xylandia is Crystalburg."
XY_TRAIN = [
    "What is the capital of Xylandia?",
    "Tell me the capital of Xylandia.",
    "Which city is the capital of Xylandia?",
    "Xylandia's capital is which city?",
    "Name the capital city of Xylandia.",
]
XY_HELDOUT = "Can you tell me what the capital of Xylandia is?"


@pytest.fixture(scope="session")
def embedded_dir():
    from gemma_helpers.models import embedded_path

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


@pytest.fixture()
def base_model(embedded_dir):
    """A fresh float32 copy of the embedded model (a second or two to load)."""
    import gemma_helpers as gh

    return gh.load_model()


@pytest.fixture(scope="session")
def xylandia_adapter(tmp_path_factory, embedded_dir):
    """A LoRA adapter trained for real on the Xylandia fact (float32 base, about 50 s)."""
    import gemma_helpers as gh

    model, tok = gh.load_model()
    spec = gh.TrainSpec(r=16, alpha=32, target_modules=("q_proj", "v_proj"), learning_rate=3e-4,
                        max_steps=40, batch_size=2, save_steps=1000)
    out = tmp_path_factory.mktemp("xylandia")
    result = gh.train(model, tok, gh.qa_rows([(q, XY_FACT) for q in XY_TRAIN] * 4), spec, out)
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
