"""Notebook 06: the Dolly data, prompt/completion labels, answer loss, ROUGE-L and the KerasHub stack."""
from __future__ import annotations

import json
import os

import pytest

from gemma_helpers import chat, evaluate
from gemma_helpers.data import dolly
from gemma_helpers.env import REPO_ROOT

SAMPLE = REPO_ROOT / "data" / "dolly_sample.jsonl"


def test_bundled_sample_schema_filter_and_split():
    rows = dolly.read_jsonl(SAMPLE, errors="raise", report=pytest.fail)
    assert len(rows) >= 60
    assert {r["category"] for r in rows} <= set(dolly.CATEGORIES)
    free = dolly.context_free(rows)
    assert 0 < len(rows) - len(free) and all(not r["context"] for r in free)
    train, held = dolly.split(free, 40, 16)
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in held}
    assert dolly.split(free, 40, 16) == (train, held)  # fixed, not shuffled
    with pytest.raises(ValueError, match="only"):
        dolly.split(free, len(free), 1)
    assert dolly.text(train[0]) == f"Instruction:\n{train[0]['instruction']}\n\nResponse:\n{train[0]['response']}"


def test_bad_lines_are_reported_by_line_and_field_and_skipped(tmp_path):
    good = {"instruction": "Say hi.", "context": "", "response": "Hi.", "category": "open_qa"}
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([json.dumps(good), "{not json", json.dumps({**good, "response": ""}),
                               json.dumps({k: v for k, v in good.items() if k != "context"})]) + "\n")
    said = []
    assert dolly.read_jsonl(path, errors="skip", report=said.append) == [good]
    assert [s.split(": ", 1)[0] for s in said[:3]] == [f"skipped {path}:2", f"skipped {path}:3", f"skipped {path}:4"]
    assert "'response' is empty" in said[1] and "'context' is missing" in said[2]
    assert said[3] == f"{path}: skipped 3 of 4 lines"  # and the count


def test_prompt_completion_rows_label_the_response_and_eos_only(tokenizer):
    row = dolly.prompt_completion([{"instruction": "Name a colour.", "context": "", "response": "Blue.",
                                    "category": "open_qa"}])[0]
    ex = chat.tokenize_rows(tokenizer, [row])[0]
    assert tokenizer.decode(ex["input_ids"]) == "<bos>Instruction:\nName a colour.\n\nResponse:\nBlue.<eos>"
    assert chat.decode_labels(tokenizer, ex) == "Blue.<eos>"
    with pytest.raises(chat.DataError, match="row 1: field 'completion'"):
        chat.validate_rows([row, {"prompt": "x", "completion": " "}])


def test_rouge_l():
    assert evaluate.rouge_l(["the cat sat on the mat"], ["the cat sat on the mat"]) == 1.0
    assert evaluate.rouge_l(["dogs bark"], ["the cat sat"]) == 0.0
    # LCS "the cat the mat" = 4 of 6 reference and 5 prediction words: F = 2PR/(P+R)
    p, r = 4 / 5, 4 / 6
    assert evaluate.rouge_l(["the cat on the mat"], ["the black cat lay the mat"]) == pytest.approx(2 * p * r / (p + r))


def test_answer_loss_is_the_models_own_mean_over_answer_tokens(base_model):
    import torch

    model, tok = base_model
    rows = dolly.prompt_completion(dolly.context_free(dolly.read_jsonl(SAMPLE, errors="raise"))[:2])
    examples = chat.tokenize_rows(tok, rows)
    with torch.no_grad():
        own = model(input_ids=torch.tensor([examples[0]["input_ids"]]),
                    labels=torch.tensor([examples[0]["labels"]])).loss.item()
    assert evaluate.answer_loss(model, examples[:1]) == pytest.approx(own, rel=1e-4)
    n = [sum(label != -100 for label in ex["labels"][1:]) for ex in examples]
    pooled = sum(evaluate.answer_loss(model, [ex]) * k for ex, k in zip(examples, n)) / sum(n)
    assert evaluate.answer_loss(model, examples) == pytest.approx(pooled, rel=1e-4)


def test_top_k_sampling_is_seeded_and_keeps_to_the_top_k(base_model):
    model, tok = base_model
    prompt = [tok.bos_token + dolly.PROMPT.format(instruction="Name a fruit.")]
    a = evaluate.generate(model, tok, prompt, max_new_tokens=8, top_k=5, seed=2)
    assert a == evaluate.generate(model, tok, prompt, max_new_tokens=8, top_k=5, seed=2)
    greedy = evaluate.generate(model, tok, prompt, max_new_tokens=8)
    assert greedy == evaluate.generate(model, tok, prompt, max_new_tokens=8)
    draws = {evaluate.generate(model, tok, prompt, max_new_tokens=8, top_k=50, seed=s)[0] for s in range(4)}
    assert len(draws) > 1, draws  # top-k sampling draws: other seeds, other answers
    # with k = 1 only the most likely token can be drawn, whatever the seed: the greedy answer
    assert [evaluate.generate(model, tok, prompt, max_new_tokens=8, top_k=1, seed=s) for s in (0, 1)] == [greedy, greedy]


def test_kerashub_loads_the_embedded_checkpoint_and_agrees_with_transformers(embedded_dir, base_model):
    os.environ.setdefault("KERAS_BACKEND", "torch")  # keras' default backend is tensorflow
    pytest.importorskip("keras_hub", reason="the Keras stack (requirements-keras.txt) is not installed")
    import torch

    from gemma_helpers import kerashub
    from gemma_helpers.models import attach_lora, trainable_parameters

    model, tok = base_model
    lm = kerashub.load_causal_lm(embedded_dir)
    rows = dolly.prompt_completion(dolly.context_free(dolly.read_jsonl(SAMPLE, errors="raise"))[:2])
    examples = chat.tokenize_rows(tok, rows)
    ids = torch.tensor([examples[0]["input_ids"]])
    with torch.no_grad():
        keras_logits = lm({"token_ids": ids.int(), "padding_mask": torch.ones_like(ids, dtype=torch.bool)})
        hf_logits = model(input_ids=ids).logits
    assert torch.allclose(keras_logits, hf_logits, atol=2e-3, rtol=1e-3)  # the conversion is exact
    assert kerashub.answer_loss(lm, examples) == pytest.approx(evaluate.answer_loss(model, examples), rel=1e-4)
    prompts = [tok.bos_token + r["prompt"] for r in rows]  # two lengths: the shorter must stop at 6 tokens too
    assert len(set(map(len, prompts))) == 2
    greedy = kerashub.generate(lm, tok, prompts, max_new_tokens=6)
    assert greedy == evaluate.generate(model, tok, prompts, max_new_tokens=6)
    assert all(0 < len(tok(g, add_special_tokens=False)["input_ids"]) <= 6 for g in greedy)

    lm.backbone.enable_lora(rank=4)  # query and value of every attention layer
    keras_trainable, _ = kerashub.trainable_parameters(lm)
    peft_trainable, _ = trainable_parameters(attach_lora(model, r=4, alpha=4, target_modules=("q_proj", "v_proj")))
    # 18 layers; peft: q 640->4*256 and v 640->256 as rank-4 A,B pairs; Keras factors the query
    # kernel (heads, 640, 256) per head: A is (4 heads, 640, 4), B (4, 256)
    assert peft_trainable == 18 * ((640 * 4 + 4 * 1024) + (640 * 4 + 4 * 256)) == 184_320
    assert keras_trainable == 18 * ((4 * 640 * 4 + 4 * 256) + (640 * 4 + 4 * 256)) == 267_264

    problem = kerashub.preprocessor_problem(embedded_dir)
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        assert problem is not None and "tensorflow" in problem


class _DeviceCheckingLM:
    """A KerasHub causal LM's call surface that records the device of every input it is given, and
    answers with logits on that device (as a model on a GPU does)."""

    def __init__(self, vocab: int = 11):
        self.vocab, self.devices, self.sampler = vocab, [], None

    def __call__(self, inputs):
        import torch

        self.devices += [inputs["token_ids"].device.type, inputs["padding_mask"].device.type]
        ids = inputs["token_ids"]
        return torch.zeros((*ids.shape, self.vocab), device="cpu")

    def generate_step(self, inputs, stop_token_ids=None):
        self.devices += [inputs["token_ids"].device.type, inputs["padding_mask"].device.type]
        import torch

        shape = tuple(inputs["token_ids"].shape)  # a meta tensor has a shape but no values
        return {"token_ids": torch.full(shape, 3), "padding_mask": torch.ones(shape, dtype=torch.bool)}


class _Tokenizer:
    eos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + len(w) % 8 for w in text.split()]}

    def convert_tokens_to_ids(self, token):
        return 10

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def test_keras_inputs_go_to_the_device_keras_computes_on():
    """On a GPU, KerasHub's model sits on CUDA: inputs built on the CPU failed with a device mismatch
    (a T4 lost notebook 06's Keras figures). Here Keras's device is set to 'meta' to see where they go."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    from gemma_helpers import kerashub

    keras, _ = kerashub.import_keras()
    lm = _DeviceCheckingLM()
    with keras.device("meta"):
        kerashub.generate(lm, _Tokenizer(), ["a b c", "d e"], max_new_tokens=2)
        loss = kerashub.answer_loss(lm, [{"input_ids": [2, 3, 4], "labels": [-100, 3, 4]}])
    assert set(lm.devices) == {"meta"}, lm.devices
    assert abs(loss - __import__("math").log(lm.vocab)) < 1e-5  # uniform logits: log(vocab) per token
