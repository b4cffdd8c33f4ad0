import json
import math

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


def test_interrupted_training_resumes_to_a_finished_adapter(tmp_path, embedded_dir):
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

    model, tok = gh.load_model()  # a fresh process would start like this
    result = gh.train(model, tok, rows, spec, tmp_path, resume=True)
    assert result.resumed_from.endswith("checkpoint-6")
    assert result.global_step == 10
    assert [h["step"] for h in result.history] == list(range(1, 11))  # history kept across the crash
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-9"]  # last 2 kept
    reloaded, _ = gh.load_adapter(result.adapter_dir)
    assert gh.ask(reloaded, tok, ["What is the capital of Xylandia?"], max_new_tokens=12)[0] == \
        gh.ask(result.model, tok, ["What is the capital of Xylandia?"], max_new_tokens=12)[0]


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


@pytest.mark.parametrize("chunk", [1024, 128])  # one chunk; several chunks under checkpointing
def test_torch_log_prob_matches_full_logits(monkeypatch, chunk):
    import torch

    from gemma_helpers.train import TorchLogProb

    monkeypatch.setattr(TorchLogProb, "CHUNK", chunk)
    torch.manual_seed(0)
    hidden = torch.randn(300, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (300,))
    everything = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
    lp, ent, lss, mean, top1 = TorchLogProb.apply(hidden, weight, None, targets, 1.0, 0, None, 1.0, everything)
    logits = hidden @ weight.t()
    logp = torch.log_softmax(logits, -1)
    ref = logp.gather(-1, targets[:, None]).squeeze(-1)
    assert torch.allclose(lp, ref, atol=1e-5)
    grad = torch.autograd.grad(lp.sum(), [hidden, weight])
    grad_ref = torch.autograd.grad(ref.sum(), [hidden, weight])
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(grad, grad_ref))
    with torch.no_grad():
        assert torch.allclose(ent, -(logp.exp() * logp).sum(-1), atol=1e-4)
        assert torch.allclose(lss, torch.logsumexp(2 * logp, -1), atol=1e-4)
        assert torch.allclose(mean, logits.mean(-1), atol=1e-5)
    assert torch.equal(top1, logits.argmax(-1) == targets)
    # statistics TRL does not ask for are not computed
    assert TorchLogProb.apply(hidden, weight, None, targets, 1.0, 0, None, 1.0, ("log_probs",))[1:] == (None,) * 4


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
