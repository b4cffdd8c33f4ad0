"""Multimodal LoRA on a tiny random-weight Gemma3ForConditionalGeneration with a real Gemma3Processor:
answer-only labels, a frozen vision tower and projector, and the logged loss against a hand computation."""
import math
from pathlib import Path

import pytest

import gemma_helpers as gh
from gemma_helpers import evaluate, models, offline, vision
from gemma_helpers.chat import IGNORE_INDEX, VisionCollator, prompt_and_target
from gemma_helpers.data import frames as F

TRL_TEMPLATES = Path(__import__("trl").__file__).parent / "chat_templates"


@pytest.fixture(scope="module")
def clip_rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    clips = offline.synthetic_clips(root / "clips", per_action=1, n_frames=6, size=48)
    rows, skipped = F.build_rows(clips, root, n=4, size=48, progress=False)
    assert not skipped
    return rows, (lambda r: F.load_images(r, root))


@pytest.fixture(scope="module")
def tiny():
    return vision.tiny_vision_model(seed=0)


def test_labels_decode_to_exactly_the_answers(tiny, clip_rows):
    model, processor = tiny
    rows, load = clip_rows
    tok = processor.tokenizer
    batch = VisionCollator(processor, load)(rows[:3])
    assert batch["labels"].shape == batch["input_ids"].shape == batch["token_type_ids"].shape
    assert batch["pixel_values"].shape[0] == 12  # 4 frames x 3 rows
    for i, row in enumerate(rows[:3]):
        labels = batch["labels"][i]
        assert tok.decode(labels[labels != IGNORE_INDEX]) == F.answer_of(row) + "<end_of_turn>"
        image_positions = batch["token_type_ids"][i] == 1
        assert image_positions.sum() == 4 * processor.image_seq_length
        assert (labels[image_positions] == IGNORE_INDEX).all()
        assert (labels[batch["attention_mask"][i] == 0] == IGNORE_INDEX).all()  # padding
    assert (batch["input_ids"] == tok.image_token_id).sum() == 12 * processor.image_seq_length
    assert not (batch["labels"] == tok.image_token_id).any()
    features = model.get_image_features(batch["pixel_values"][:2])
    features = getattr(features, "pooler_output", features)
    assert features.float().std() > 0.1  # the frozen vision path does carry the images to the language model


def test_the_frames_reach_the_answer_logits(tiny, clip_rows):
    """What notebook 04's ablation relies on: the same text with another clip's frames changes the logits
    that predict the answer (a collator that dropped the images, or a projector left at its zero init, would not)."""
    import torch

    model, processor = tiny
    rows, load = clip_rows
    collate = VisionCollator(processor, load)
    own, other = collate(rows[:3]), collate(F.swap_frames(rows[:3], seed=0))
    assert own["input_ids"].equal(other["input_ids"]) and not own["pixel_values"].equal(other["pixel_values"])

    def logits(batch):
        with torch.no_grad():
            return model(**{k: v for k, v in batch.items() if k != "labels"}).logits

    first = (own["labels"] != IGNORE_INDEX).int().argmax(1) - 1  # the position that predicts the first answer token
    at = torch.arange(3)
    mine, theirs = logits(own)[at, first], logits(other)[at, first]
    assert ((mine - theirs).abs().amax(-1) > 0.05).all(), (mine - theirs).abs().amax(-1)
    assert torch.equal(logits(collate(rows[:3]))[at, first], mine)  # same frames, same logits: the change is the frames'


@pytest.fixture(scope="module")
def gemma4_tokenizer(tokenizer):
    """The embedded tokenizer plus Gemma 4's turn and channel tokens (copied once: the session one stays as it is)."""
    tok = __import__("copy").deepcopy(tokenizer)
    tok.add_tokens(["<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|image|>", "<|think|>"], special_tokens=True)
    return tok


@pytest.mark.parametrize("empty_thought", [False, True])
def test_gemma4_template_answer_span_survives_an_empty_thought_channel(gemma4_tokenizer, empty_thought):
    """Gemma 4's chat template (as stored by TRL from google/gemma-4-E2B-it). Some revisions end the
    generation prompt in an empty thought channel that the rendered answer lacks: matching the prompt
    as a prefix of the rendered conversation (the seed's method) then finds no answer at all."""
    tok = gemma4_tokenizer
    template = (TRL_TEMPLATES / "gemma4_v5.jinja").read_text()
    if empty_thought:
        template = template.replace("{{- '<|turn>model\\n' -}}", "{{- '<|turn>model\\n<|channel>thought\\n<channel|>' -}}")
    tok.chat_template = template
    messages = [{"role": "user", "content": "What is happening?"}, {"role": "assistant", "content": "moving left"}]
    prompt, target = prompt_and_target(tok, messages)
    full = tok.apply_chat_template(messages, tokenize=False)
    assert prompt.endswith("<|turn>model\n<|channel>thought\n<channel|>" if empty_thought else "<|turn>model\n")
    assert full.startswith(prompt) is (not empty_thought)  # prefix matching would mask everything
    assert target == "moving left<turn|>"
    batch = VisionCollator(tok, lambda r: [])([{"messages": messages}])
    labels = batch["labels"][0]
    assert tok.decode(labels[labels != IGNORE_INDEX]) == "moving left<turn|>"


@pytest.fixture(scope="module")
def one_step_ga8(tmp_path_factory, clip_rows, tiny):
    """One optimizer step, batch 1 x gradient accumulation 8, on 8 rows; the mean per-token loss of the
    same rows computed by hand on the untrained model (LoRA's B starts at zero, so it is the same function)."""
    import torch

    rows, load = clip_rows
    rows = (rows * 2)[:8]
    model, processor = tiny  # trained in place: the tests that use it untrained come first in this file
    collate = VisionCollator(processor, load)
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            batch = collate([row])
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
            labels = batch["labels"][0, 1:]
            total += torch.nn.functional.cross_entropy(logits[0, :-1], labels, ignore_index=IGNORE_INDEX,
                                                       reduction="sum").item()
            count += int((labels != IGNORE_INDEX).sum())
    vision_before = {n: p.detach().clone() for n, p in model.named_parameters() if any(v in n for v in vision.VISION_PARTS)}
    # float32 like the hand computation: the test is about how the loss is averaged (1e-4), and bf16
    # compute (the default on a CPU with AVX512-BF16) moves it by ~1e-3 (its own test: test_train.py)
    spec = gh.TrainSpec(target_modules=models.LANGUAGE_TARGETS, max_steps=1, batch_size=1, grad_accum=8,
                        learning_rate=1e-2, save_steps=1000, compute_dtype="float32")
    result = gh.train(model, processor, rows, spec, tmp_path_factory.mktemp("ga8"), data_collator=collate)
    return result, total / count, vision_before, collate, rows


def test_logged_loss_is_the_mean_per_token_loss_with_gradient_accumulation(one_step_ga8):
    result, manual, *_ = one_step_ga8
    logged = result.history[0]["loss"]
    assert logged == pytest.approx(manual, rel=1e-4), (logged, manual)
    # the seed's symptom was a loss above ln(vocabulary); a mean scaled by the accumulation steps would be 8x this
    assert not math.isclose(logged, 8 * manual, rel_tol=0.5)


def test_vision_tower_and_projector_stay_frozen(one_step_ga8):
    result, _, vision_before, collate, rows = one_step_ga8
    model = result.model
    report = vision.vision_report(model)
    assert report["frozen_vision"] and report["trainable_vision"] == []
    assert report["lora_outside_language_model"] == [] and report["lora_tensors"] == 2 * 7 * 2  # A, B x 7 x 2 layers
    after = {n.replace("base_model.model.", ""): p for n, p in model.named_parameters()}
    assert vision_before and all(after[n].equal(p) for n, p in vision_before.items())  # unchanged by the step
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # LoRA did learn
    model.train()
    model.zero_grad(set_to_none=True)
    model(**collate(rows[:2])).loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n and "language_model" in n for n in grads)


def test_action_scores():
    scores = evaluate.action_scores(["Moving left.", "moving up", "growing fast"], ["moving left", "moving down", "growing"])
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["token_f1"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert evaluate.token_f1("", "growing") == 0.0
    assert scores["correct"] == [1.0, 0.0, 0.0]
    low, high = scores["exact_match_ci"]
    assert 0.0 <= low < 1 / 3 < high <= 1.0
    wide = evaluate.action_scores(["grow"] * 12, ["grow"] * 4 + ["shrink"] * 8)["exact_match_ci"]
    narrow = evaluate.action_scores(["grow"] * 48, ["grow"] * 16 + ["shrink"] * 32)["exact_match_ci"]
    assert narrow[1] - narrow[0] < wide[1] - wide[0]  # four times the clips: a narrower interval


def test_accelerate_two_processes_end_with_the_same_adapter(tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` on a machine without a GPU (torchrun, gloo): data-parallel training keeps the ranks in step."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    script = Path(__file__).with_name("accelerate_frames_train.py")
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           str(script), str(tmp_path)], check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rank 0 of 2: 3 steps" in proc.stdout and "rank 1 of 2: 3 steps" in proc.stdout
    a, b = load_file(tmp_path / "lora-rank0.safetensors"), load_file(tmp_path / "lora-rank1.safetensors")
    assert a.keys() == b.keys() and len(a) == 28
    assert all(a[k].equal(b[k]) for k in a)
    assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k)  # trained, not the zero init
