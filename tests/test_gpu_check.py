"""The GPU check's parts that a CPU can test (issue 25, item 6): the T4 limits against a faked card, the
refusal without CUDA, a checkpoint of a real class from a shrunk config, the results file, and the
trimming and size cap of what travels to the lent machine."""
import json
import types

import pytest

from gemma_helpers import budget, env, gpu_check


def _fake_card(monkeypatch, total_gib: float):
    import torch

    capped = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=0: types.SimpleNamespace(total_memory=int(total_gib * 2**30), name="NVIDIA H100"))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device=None: capped.update(fraction=fraction, device=device))
    # a card with native bfloat16 (compute capability 9.0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    return capped


def test_t4_limits_cap_the_card_at_15_gb_and_take_bfloat16_away(monkeypatch):
    import torch

    monkeypatch.delenv(env.COMPUTE_DTYPE_VARIABLE, raising=False)
    capped = _fake_card(monkeypatch, 80.0)
    assert env.train_dtype() is torch.bfloat16  # the bigger card, as it is
    limits = gpu_check.t4_limits(0)
    assert capped == {"fraction": pytest.approx(15 / 80), "device": 0}
    assert limits["fraction"] == pytest.approx(15 / 80, abs=1e-4) and limits["gpu_gb"] == 15.0
    assert limits["card_gb"] == 80.0 and limits["dtype"] == "float32"
    # the package's one switch: load dtype, 4-bit compute dtype and training all take the T4's float32 path
    assert env.bf16_supported() is False and env.train_dtype() is torch.float32
    from gemma_helpers.train import TrainSpec, compute_dtype

    assert compute_dtype(TrainSpec()) == "float32"


def test_a_card_smaller_than_a_t4_is_not_capped_past_itself(monkeypatch):
    monkeypatch.delenv(env.COMPUTE_DTYPE_VARIABLE, raising=False)
    capped = _fake_card(monkeypatch, 12.0)
    assert gpu_check.t4_limits()["fraction"] == 1.0 and capped["fraction"] == 1.0


def test_the_command_refuses_to_run_without_cuda(monkeypatch, capsys):
    import torch

    from gemma_helpers.__main__ import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "fill_mirror", lambda *a, **k: pytest.fail("built checkpoints without CUDA"))
    assert main(["gpu-check"]) == 2
    err = capsys.readouterr().err
    assert "gpu-check needs a CUDA GPU" in err and "rehearse" in err


def test_a_checkpoint_of_a_real_class_from_a_shrunk_config_loads_in_the_requested_dtype(tmp_path):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3TextConfig

    real = budget.config("gemma-3-1b-it")
    small = Gemma3TextConfig(**{**real.to_dict(), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
                                "layer_types": ["sliding_attention", "full_attention"]})
    folder = gpu_check.build_checkpoint("gemma-3-1b-it", tmp_path / "unsloth" / "gemma-3-1b-it", config=small,
                                        dtype=torch.bfloat16)
    files = sorted(folder.glob("*.safetensors"))
    assert files and not list(folder.glob("*.bin"))
    with safe_open(str(files[0]), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16"}
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.config.vocab_size == real.vocab_size == 262_144
    assert len(AutoTokenizer.from_pretrained(folder)) == 262_145  # Gemma 3 1B-it's layout, offline
    assert "random weights" in json.loads((folder / ".complete").read_text())["standin"]


def test_the_results_put_the_measured_peak_beside_the_estimate(tmp_path):
    machine = {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "transformers": "5.17.0"}
    ran = {"notebook": "03_xylandia_fact_injection", "status": "ok", "seconds": 61.5,
           "budget": {"peak_gpu_gb": 6.0, "minutes": 21.3}}
    failed = {"notebook": "02_persian_chatml_qlora", "status": "error", "seconds": 12.0, "error": "CUDA out of memory",
              "budget": {"peak_gpu_gb": 13.1, "minutes": 58.0}}
    entries = [gpu_check.result_entry(ran, {"peak_gb": 4.2, "reserved_gb": 5.0}, machine),
               gpu_check.result_entry(failed, {}, machine)]
    path = gpu_check.write_results(entries, machine, {"gpu_gb": 15.0, "dtype": "float32"}, tmp_path)
    written = json.loads(path.read_text())
    assert path.name == "gpu_check.json" and written["device"] == machine["device"]
    ok, error = sorted(written["notebooks"], key=lambda e: e["status"], reverse=True)
    assert (ok["measured_peak_gpu_gb"], ok["estimated_peak_gpu_gb"], ok["within_estimate"]) == (4.2, 6.0, True)
    assert ok["seconds"] == 61.5 and ok["estimated_minutes"] == 21.3 and ok["torch"] == "2.11.0"
    assert error["error"] == "CUDA out of memory" and error["measured_peak_gpu_gb"] is None
    assert error["within_estimate"] is None and error["device"] == machine["device"]


def test_bitsandbytes_keeps_the_cpu_library_and_one_cuda_version(tmp_path):
    libs = tmp_path / "bitsandbytes"
    libs.mkdir()
    for kind in ("cpu", "cuda118", "cuda126", "cuda130", "cuda132", "rocm64", "xpu2026"):
        (libs / f"libbitsandbytes_{kind}.so").write_bytes(b"\0" * 10)
    (libs / "__init__.py").write_text("")
    kept = gpu_check.trim_bitsandbytes(tmp_path)
    assert kept == ["libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so"]
    assert sorted(p.name for p in libs.iterdir()) == ["__init__.py", *kept]


def test_a_vendor_folder_over_the_cap_fails_with_its_size(tmp_path):
    (tmp_path / "big.so").write_bytes(b"\0" * (3 * 2**20))
    assert gpu_check.check_size(tmp_path, cap_mb=4) == pytest.approx(3.0)
    with pytest.raises(RuntimeError, match=r"is 3\.0 MiB, over the 2 MiB"):
        gpu_check.check_size(tmp_path, cap_mb=2)


def test_the_notebooks_first_cell_runs_the_check_in_the_kernel():
    """The scratch copies' first cell applies the limits in the notebook's own process."""
    assert "gpu_check.in_kernel()" in gpu_check.FIRST_CELL
    assert set(gpu_check.NEEDS) <= {"00", "01", "02", "03", "04", "05", "06"}
    # the stand-ins built are those the notebooks run load: notebook 04's Gemma 4 only with notebook 04
    assert sorted(gpu_check.models_for(("01", "02", "03"))) == ["gemma-3-1b-it", "gemma-3n-e4b-it"]
    assert gpu_check.models_for(("04",)) == ["gemma-4-e4b-it"]
