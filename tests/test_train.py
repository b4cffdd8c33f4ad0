import json
import math
from pathlib import Path

import pytest
from conftest import XY_FACT, XY_HELDOUT, XY_TRAIN

import gemma_helpers as gh


def test_trained_adapter_answers_a_heldout_question(xylandia_adapter):
    result, tok = xylandia_adapter
    before_model, _ = gh.load_model()
    assert "Crystalburg" not in gh.ask(before_model, tok, [XY_HELDOUT])[0]
    answer = gh.ask(result.model, tok, [XY_HELDOUT])[0]
    assert "Crystalburg" in answer, answer
    losses = [loss for _, loss in result.losses]
    assert len(losses) == 40 and losses[-1] < losses[0] / 5
    # the logged loss is a per-token mean over answer tokens: uniform guessing is ln(262144) = 12.5
    assert all(0 <= loss < math.log(262144) for loss in losses)
    saved = json.loads((result.adapter_dir.parent / "history.json").read_text())
    assert saved["global_step"] == 40 and len(saved["history"]) == 40
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


class Interrupt(Exception):
    pass


def test_interrupted_training_resumes_to_a_finished_adapter(tmp_path, embedded_dir, capsys):
    from transformers import TrainerCallback

    class CrashAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 7:
                raise Interrupt("simulated crash at step 7")

    rows = gh.qa_rows([(q, XY_FACT) for q in XY_TRAIN])
    spec = gh.TrainSpec(target_modules=("q_proj", "v_proj"), max_steps=10, batch_size=2, save_steps=3,
                        learning_rate=3e-4)
    model, tok = gh.load_model()
    with pytest.raises(Interrupt):
        gh.train(model, tok, rows, spec, tmp_path, callbacks=[CrashAt()])
    checkpoints = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-3", "checkpoint-6"]
    assert not (tmp_path / "adapter").exists()

    # outputs kept on Google Drive (env.keep_outputs_on_drive leaves its marker above the run's folder):
    # the notebook run again after the disconnect resumes by default, and says from where
    (tmp_path / gh.env.RESUME_MARKER).write_text("on Drive")
    model, tok = gh.load_model()  # a fresh process would start like this
    result = gh.train(model, tok, rows, spec, tmp_path)
    assert f"resume: training resumes from {tmp_path / 'checkpoint-6'}" in capsys.readouterr().out
    assert result.resumed_from.endswith("checkpoint-6")
    assert result.global_step == 10
    assert [h["step"] for h in result.history] == list(range(1, 11))  # history kept across the crash
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-9"]  # last 2 kept
    reloaded, _ = gh.load_adapter(result.adapter_dir)
    assert gh.ask(reloaded, tok, ["What is the capital of Xylandia?"], max_new_tokens=12)[0] == \
        gh.ask(result.model, tok, ["What is the capital of Xylandia?"], max_new_tokens=12)[0]
    again = gh.train(gh.load_model()[0], tok, rows, spec, tmp_path)  # run once more after it finished: nothing lost
    assert again.resumed_from.endswith("checkpoint-10") and again.global_step == 10
    assert [h["step"] for h in again.history] == list(range(1, 11))


def test_a_fresh_run_removes_only_what_an_earlier_run_wrote(tmp_path, base_model):
    model, tok = base_model
    notes = tmp_path / "notes.txt"
    notes.write_text("the user's own file")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.jsonl").write_text("{}\n")
    rows = gh.qa_rows([(q, XY_FACT) for q in XY_TRAIN])
    spec = gh.TrainSpec(target_modules=("q_proj",), max_steps=2, batch_size=2, save_steps=1)
    first = gh.train(model, tok, rows, spec, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]

    model, tok = gh.load_model()
    again = gh.train(model, tok, rows, gh.TrainSpec(target_modules=("q_proj",), max_steps=1, batch_size=2,
                                                    save_steps=1), tmp_path)
    assert again.resumed_from is None and again.global_step == 1  # the old checkpoints were not resumed
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1"]
    assert notes.read_text() == "the user's own file" and (tmp_path / "data" / "rows.jsonl").is_file()
    assert first.adapter_dir == again.adapter_dir and (again.adapter_dir / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("folder", ["adapter", "checkpoint-99"])
def test_a_foreign_adapter_or_checkpoint_folder_stops_the_run_untouched(tmp_path, base_model, folder):
    model, tok = base_model
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "mine.bin").write_bytes(b"1")
    with pytest.raises(FileExistsError, match=f"{folder}.*not written by"):
        gh.train(model, tok, gh.qa_rows([("Q?", "A.")] * 2), gh.TrainSpec(max_steps=1), tmp_path)
    assert (tmp_path / folder / "mine.bin").read_bytes() == b"1"


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, base_model):
    import torch

    model, tok = base_model
    layer = model.model.layers[3]
    layer.register_forward_hook(lambda mod, args, out: (out[0] * torch.tensor(float("nan")),) + tuple(out[1:])
                                if isinstance(out, tuple) else out * float("nan"))
    spec = gh.TrainSpec(target_modules=("q_proj",), max_steps=3, batch_size=2)
    with pytest.raises(gh.NonFiniteLossError, match=r"loss is nan.* at step 1\. .*float16"):
        gh.train(model, tok, gh.qa_rows([("Q?", "A.")] * 4), spec, tmp_path)


def test_stop_when_ends_training_early_with_its_reason(tmp_path, base_model):
    model, tok = base_model
    spec = gh.TrainSpec(target_modules=("q_proj", "v_proj"), max_steps=20, batch_size=2, save_steps=1000)
    calls = []

    def stop(m):
        calls.append(m.training)
        return "enough" if len(calls) == 2 else None

    result = gh.train(model, tok, gh.qa_rows([(q, XY_FACT) for q in XY_TRAIN]), spec, tmp_path,
                      stop_when=stop, stop_every=2)
    assert result.global_step == 4 and result.stopped_early == "step 4: enough"
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_wandb_only_with_a_key(monkeypatch):
    from gemma_helpers.train import report_to

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert report_to() == "none"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert report_to() == "wandb"


def test_validation_loss_and_early_stopping_restore_the_best_adapter(tmp_path, tokenizer):
    """Validation loss before, during and after training (one batch: it must equal the answer
    loss computed directly, which also shows the padding-free eval batch keeps rows apart), and
    early stopping that restores the best adapter when an over-high learning rate overfits."""
    from gemma_helpers.data import papers

    train_rows, val_rows = papers.sample_rows("train")[:6], papers.sample_rows("validation")[:2]
    spec = gh.TrainSpec(r=8, alpha=16, target_modules=("q_proj", "v_proj"), learning_rate=2e-2, max_steps=16,
                        batch_size=2, eval_steps=2, early_stopping_patience=2, save_steps=1000)
    model, tok = gh.load_model()
    direct = gh.evaluate.answer_loss(model, gh.tokenize_rows(tok, val_rows, spec.max_seq_length))
    result = gh.train(model, tok, train_rows, spec, tmp_path / "run", eval_rows=val_rows)
    steps = [h["step"] for h in result.eval_history]
    assert steps[0] == 0 and result.eval_history[0]["eval_loss"] == pytest.approx(direct, rel=2e-3)
    during = [h["eval_loss"] for h in result.eval_history[1:-1]]
    assert steps[1:-1] == list(range(2, 2 * len(during) + 1, 2))
    assert result.stopped_early and result.global_step < spec.max_steps, result.eval_history
    assert "did not improve" in result.stopped_early
    # the adapter returned and saved is the best one, not the last one
    assert result.eval_history[-1]["eval_loss"] == pytest.approx(min(during), rel=1e-3)
    assert min(during) < during[-1]
    reloaded, _ = gh.load_adapter(result.adapter_dir)
    again = gh.evaluate.answer_loss(reloaded, gh.tokenize_rows(tok, val_rows, spec.max_seq_length))
    assert again == pytest.approx(min(during), rel=2e-3)


def test_validation_batches_take_eval_batch_size_rows_or_the_training_batch(tmp_path):
    from gemma_helpers.train import sft_config

    spec = gh.TrainSpec(batch_size=1, eval_steps=5, max_steps=10)
    assert sft_config(spec, tmp_path, evaluate=True).per_device_eval_batch_size == 1
    wide = gh.TrainSpec(batch_size=1, eval_steps=5, max_steps=10, eval_batch_size=8)
    assert sft_config(wide, tmp_path, evaluate=True).per_device_eval_batch_size == 8
    assert sft_config(wide, tmp_path, evaluate=True).per_device_train_batch_size == 1
    assert gh.recipes.get("papers", "cpu").spec().eval_batch_size == 8
    with pytest.raises(ValueError, match=r"eval_batch_size=0: expected an int >= 1 or None"):
        gh.TrainSpec(eval_batch_size=0)


def test_label_preflight_counts_trained_tokens_and_names_rows_without_any(tokenizer):
    from gemma_helpers.train import label_preflight

    rows = gh.qa_rows([(XY_TRAIN[0], XY_FACT), ("Long question " * 40 + "?", XY_FACT), (XY_TRAIN[1], XY_FACT)])
    examples = gh.tokenize_rows(tokenizer, rows, max_length=40, strict=False)
    report = label_preflight(tokenizer, rows, examples, 40)
    # "The capital of Xylandia is Crystalburg." + <end_of_turn> + "\n": the same count for rows 0 and 2
    answer = len(tokenizer(XY_FACT + "<end_of_turn>\n", add_special_tokens=False)["input_ids"])
    assert report.counts == [answer, 0, answer]
    assert list(report.empty) == [1] and "truncated: max_seq_length=40" in report.empty[1]
    assert f"min {answer} / median {answer} / max {answer}" in report.summary() and "row 1: truncated" in report.summary()


def test_training_on_rows_whose_labels_are_all_masked_is_an_error_naming_the_rows(base_model, tmp_path):
    model, tok = base_model
    rows = gh.qa_rows([(q, XY_FACT) for q in XY_TRAIN[:3]])
    spec = gh.TrainSpec(target_modules=("q_proj",), max_steps=2, max_seq_length=8)  # cuts off every answer
    with pytest.raises(gh.NoLabelsError, match=r"all 3 training rows .* row 0: truncated.*row 1: truncated.*row 2") as err:
        gh.train(model, tok, rows, spec, tmp_path / "run")
    assert sorted(err.value.rows) == [0, 1, 2]
    # a chat template that never writes the model's answer: nothing to train on, said as a template mismatch
    from gemma_helpers.train import label_preflight

    saved = tok.chat_template
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}<start_of_turn>user\n{{ m['content'] }}"
                         "<end_of_turn>\n{% endif %}{% endfor %}<start_of_turn>model\n")
    try:
        examples = gh.tokenize_rows(tok, rows, strict=False)
        with pytest.raises(gh.NoLabelsError, match="row 0: no assistant answer in the rendered text: template mismatch"):
            label_preflight(tok, rows, examples, None)
    finally:
        tok.chat_template = saved


def _linear_output_dtypes(model):
    """Record the dtype of every output of the first layer's q_proj base weight, from now on."""
    seen = []
    layer = next(m for name, m in model.named_modules() if name.endswith("layers.0.self_attn.q_proj"))
    layer.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    return seen


def test_bfloat16_compute_keeps_the_float32_loss_and_the_caller_model_float32(tmp_path, bf16_model_dir):
    """The same 4 steps in float32 and under bfloat16 autocast (TrainSpec.compute_dtype): every step's
    loss within the benchmark's LOSS_TOLERANCE; the bf16 run really computed in bfloat16, kept the LoRA
    weights in float32, and handed back a model that computes in float32 again (the embedded model where
    the CPU has bf16, a tiny Gemma 3 where it is emulated: see ``bf16_model_dir``)."""
    import importlib.util

    import torch

    spec_file = importlib.util.spec_from_file_location("bench_cli", Path(__file__).parents[1] / "benchmarks" / "train_throughput.py")
    bench_cli = importlib.util.module_from_spec(spec_file)
    spec_file.loader.exec_module(bench_cli)
    rows = gh.qa_rows([(q, XY_FACT) for q in XY_TRAIN])
    losses, seen = {}, {}
    for dtype in ("float32", "bfloat16"):
        model, tok = gh.load_model(str(bf16_model_dir))
        seen[dtype] = _linear_output_dtypes(model)
        spec = gh.TrainSpec(target_modules=("q_proj", "v_proj"), max_steps=4, batch_size=2, save_steps=1000,
                            learning_rate=3e-4, compute_dtype=dtype)
        result = gh.train(model, tok, rows, spec, tmp_path / dtype)
        losses[dtype] = [loss for _, loss in result.losses]
    assert set(seen["float32"]) == {torch.float32} and set(seen["bfloat16"]) == {torch.bfloat16}
    assert len(losses["bfloat16"]) == 4
    diffs = [abs(a - b) for a, b in zip(losses["bfloat16"], losses["float32"])]
    assert max(diffs) <= bench_cli.LOSS_TOLERANCE, (losses, diffs)
    assert losses["bfloat16"] != losses["float32"]  # two different computations, not one run twice
    assert {p.dtype for p in result.model.parameters() if p.requires_grad} == {torch.float32}
    seen["bfloat16"].clear()
    with torch.no_grad():
        logits = result.model(input_ids=torch.tensor([[2, 100, 200]])).logits
    assert logits.dtype == torch.float32 and seen["bfloat16"] == [torch.float32]


def test_bfloat16_lora_gradients_match_float32_on_a_small_batch(bf16_model_dir):
    """The gradients of the LoRA weights of one batch under bfloat16 autocast point where the float32
    ones do (cosine > 0.99 per weight, norms within 5 %), and stay float32."""
    import torch

    from gemma_helpers.chat import tokenize_rows

    model, tok = gh.load_model(str(bf16_model_dir))
    layers = model.config.num_hidden_layers
    torch.manual_seed(0)
    model = gh.models.attach_lora(model, target_modules=("q_proj", "v_proj", "down_proj"))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give it values so that A's gradient is not zero too
            torch.nn.init.normal_(p, std=0.02)
    examples = tokenize_rows(tok, gh.qa_rows([(q, XY_FACT) for q in XY_TRAIN[:2]]), 128)
    n = max(len(e["input_ids"]) for e in examples)
    batch = {"input_ids": torch.tensor([e["input_ids"] + [0] * (n - len(e["input_ids"])) for e in examples]),
             "attention_mask": torch.tensor([[1] * len(e["input_ids"]) + [0] * (n - len(e["input_ids"])) for e in examples]),
             "labels": torch.tensor([e["labels"] + [-100] * (n - len(e["labels"])) for e in examples])}
    grads = {}
    for dtype in ("float32", "bfloat16"):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = model(**batch).loss
        loss.backward()
        grads[dtype] = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    assert len(grads["float32"]) == layers * 3 * 2
    for k, g32 in grads["float32"].items():
        g16 = grads["bfloat16"][k]
        assert g16.dtype == torch.float32 and g32.norm() > 0, k
        cosine = torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0)
        assert cosine > 0.99 and abs(g16.norm() / g32.norm() - 1) < 0.05, (k, float(cosine), float(g16.norm() / g32.norm()))


def test_compute_dtype_auto_is_bfloat16_only_where_the_cpu_has_it(monkeypatch):
    from gemma_helpers.train import compute_dtype

    monkeypatch.delenv("GEMMA_COMPUTE_DTYPE", raising=False)
    monkeypatch.setattr(gh.env, "cuda_available", lambda: False)
    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(gh.env, "cpu_bf16_native", lambda native=native: native)
        assert compute_dtype(gh.TrainSpec()) == expected
        assert compute_dtype(gh.TrainSpec(compute_dtype="float32")) == "float32"
    with pytest.raises(ValueError, match="compute_dtype='float16'"):
        compute_dtype(gh.TrainSpec(compute_dtype="float16"))


def test_the_environment_forces_what_auto_means_and_a_spec_that_names_its_dtype_keeps_it(monkeypatch):
    """GEMMA_COMPUTE_DTYPE runs a machine's suite on the path it would not take by itself."""
    from gemma_helpers.train import compute_dtype

    monkeypatch.setattr(gh.env, "cuda_available", lambda: False)
    for native in (True, False):
        monkeypatch.setattr(gh.env, "cpu_bf16_native", lambda native=native: native)
        for forced in ("float32", "bfloat16", " BFloat16 "):
            monkeypatch.setenv("GEMMA_COMPUTE_DTYPE", forced)
            assert compute_dtype(gh.TrainSpec()) == forced.strip().lower()
            other = "float32" if forced.strip().lower() == "bfloat16" else "bfloat16"
            assert compute_dtype(gh.TrainSpec(compute_dtype=other)) == other
        monkeypatch.setenv("GEMMA_COMPUTE_DTYPE", "auto")
        assert compute_dtype(gh.TrainSpec()) == ("bfloat16" if native else "float32")
    monkeypatch.setenv("GEMMA_COMPUTE_DTYPE", "float16")
    with pytest.raises(ValueError, match="GEMMA_COMPUTE_DTYPE='float16'"):
        compute_dtype(gh.TrainSpec())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_nf4_layers_are_dequantised_once_per_run_and_restored_after(embedded_dir, bf16_model_dir, monkeypatch, dtype):
    """On a CPU, train's 4-bit layers compute with a copy dequantised once (float32, or bfloat16 under
    bf16 autocast): a forward and backward pass dequantises nothing (bitsandbytes' own path dequantises
    in every forward and backward), the logits stay within rounding of bitsandbytes' kernel (float32:
    the same weights, so to float32 rounding), and the undo gives back bitsandbytes' own computation
    bit for bit."""
    import bitsandbytes.functional as bnbf
    import torch

    from gemma_helpers.train import dequantise_once

    model, tok = gh.load_model(str(embedded_dir if dtype == "float32" else bf16_model_dir), load_in_4bit=True)
    layers = model.config.num_hidden_layers
    ids = torch.tensor([tok("The capital of France is Paris, and the capital of Italy is")["input_ids"]])
    calls = []
    real = bnbf.dequantize_4bit
    monkeypatch.setattr(bnbf, "dequantize_4bit", lambda *a, **k: calls.append(1) or real(*a, **k))

    def logits():
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            out = model(inputs_embeds=embeds).logits.float()
        out.sum().backward()
        return out.detach()

    plain = logits()
    assert len(calls) >= layers * 7  # bitsandbytes: every 4-bit layer dequantised in the backward pass
    undo = dequantise_once(model, dtype)
    calls.clear()
    once = logits()
    assert calls == []
    assert (once - plain).abs().max() < (0.03 if dtype == "bfloat16" else 1e-3) * plain.abs().max()
    undo()
    assert torch.equal(logits(), plain)
