"""Padding-free batches give the same loss as padded ones; the benchmark's meter and baseline are like for like."""
import pytest
from conftest import XY_FACT, XY_TRAIN

import gemma_helpers as gh

# mixed lengths, a system turn and a multi-turn conversation: padding matters here
MIXED = gh.qa_rows([(XY_TRAIN[0], XY_FACT), ("Hi?", "Hello."),
                    (XY_TRAIN[1], XY_FACT + " It lies in the north, by a lake, and has a very old university.")])
MIXED += [{"messages": [{"role": "system", "content": "Answer briefly."},
                        {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
                        {"role": "user", "content": "And another one, please, that is not blue?"},
                        {"role": "assistant", "content": "Green, the colour of grass in spring."}]}]


def _collate(examples, padding_free):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=0, padding_free=padding_free)(examples)


def test_packed_forward_keeps_examples_apart_on_sliding_and_global_layers():
    """A tiny random Gemma 3 whose sliding window (4) is shorter than the examples, so both the
    sliding and the global layers must respect the boundaries found from position_ids."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=4,
                              layer_types=["sliding_attention", "full_attention"] * 2, pad_token_id=0)
    model = Gemma3ForCausalLM(config).eval()
    examples = []
    for n in (5, 17, 11):
        ids = torch.randint(1, 128, (n,)).tolist()
        examples.append({"input_ids": ids, "labels": [-100] + ids[1:]})
    padded, packed = _collate(examples, False), _collate(examples, True)
    assert packed["input_ids"].shape == (1, 33) and "attention_mask" not in packed
    with torch.no_grad():
        loss_padded = model(**padded, use_cache=False).loss
        loss_packed = model(**packed, use_cache=False).loss
        # the same packed row without the restarting position_ids: examples see each other
        leaked = model(input_ids=packed["input_ids"], labels=packed["labels"], use_cache=False).loss
    assert torch.allclose(loss_packed, loss_padded, atol=1e-5), (loss_packed, loss_padded)
    assert not torch.allclose(leaked, loss_padded, atol=1e-3)  # the check above can fail


def _run(rows, out, padding_free, baseline=False):
    from gemma_helpers.throughput import baseline_train, step_meter

    model, tok = gh.load_model()
    meter = step_meter()
    spec = gh.TrainSpec(target_modules=("q_proj", "v_proj"), max_steps=2, batch_size=2, save_steps=1000,
                        learning_rate=3e-4, padding_free=padding_free,
                        compute_dtype="float32")  # as the baseline: batching compared exactly (bf16: test_train)
    train = baseline_train if baseline else gh.train
    result = train(model, tok, rows, spec, out, callbacks=[meter])
    return [h["loss"] for h in result.history], meter.stats


@pytest.fixture(scope="module")
def runs(tmp_path_factory, embedded_dir):
    """2 optimizer steps of the real 270M model on the same 4 rows, three ways: step 1 is the
    forward pass on identical weights, step 2 follows the update each run made."""
    out = tmp_path_factory.mktemp("bench")
    return {"packed": _run(MIXED, out / "packed", True), "padded": _run(MIXED, out / "padded", False),
            "baseline": _run(MIXED, out / "baseline", None, baseline=True)}


def test_padding_free_training_gives_the_padded_loss(runs):
    from gemma_helpers.train import padding_free

    assert padding_free(gh.TrainSpec()) is True  # on by default on CPU (no unsloth)
    (packed, packed_stats), (padded, padded_stats) = runs["packed"], runs["padded"]
    assert len(packed) == 2 and packed == pytest.approx(padded, rel=2e-3, abs=2e-3)
    # the same real tokens went in; only the padded run carried padding
    assert packed_stats.real_tokens == padded_stats.real_tokens
    assert packed_stats.processed_tokens == packed_stats.real_tokens
    assert sum(padded_stats.processed_tokens) > sum(padded_stats.real_tokens)
    assert packed_stats.labelled_tokens == padded_stats.labelled_tokens


def test_plain_baseline_trains_on_the_same_batches_with_the_same_loss(runs):
    (ours, ours_stats), (base, base_stats) = runs["packed"], runs["baseline"]
    assert ours == pytest.approx(base, rel=2e-3, abs=2e-3)
    assert ours_stats.real_tokens == base_stats.real_tokens and len(base_stats.step_s) == 2
    summary = base_stats.summary(warmup=1)
    assert summary["steps_timed"] == 1 and summary["tokens_per_s"] > 0 and 0 < summary["padding_share"] < 1


def test_step_flops_counts_each_part_by_hand():
    """One step of two examples (3 and 5 tokens) through a 2-layer model, one sliding layer with a window of 4."""
    from gemma_helpers.throughput import ModelShape, sequence_lengths, step_flops

    shape = ModelShape(hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, head_dim=4, vocab=100, window=4,
                       sliding=[True, False])
    parts = step_flops(shape, [3, 5], labelled=4, r=2, targets=("q_proj", "down_proj"))
    per_layer = 8 * 8 + 2 * 8 * 4 + 8 * 8 + 3 * 8 * 16  # q, k and v, o, gate up down
    assert parts["base"] == 4 * 2 * per_layer * 8
    assert parts["lora"] == 6 * 2 * (2 * (8 + 8) + 2 * (16 + 8)) * 8
    # causal pairs: 6 + 15 on the global layer; 6 + (10 + 4) on the sliding one (token 5 sees 4)
    assert parts["attention"] == 3 * 4 * 2 * 4 * (6 + 15 + 6 + 14)
    assert parts["lm_head"] == 4 * 8 * 100 * 4
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")


def test_sequence_lengths_of_packed_and_padded_batches():
    import torch

    from gemma_helpers.throughput import sequence_lengths

    packed = {"input_ids": torch.ones(1, 8, dtype=torch.long), "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])}
    padded = {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1] * 5])}
    assert sequence_lengths(packed) == [3, 5] and sequence_lengths(padded) == [3, 5]
