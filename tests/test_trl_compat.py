"""trl_compat: the plain-PyTorch LM-head kernel TRL gets on a CPU, the packed-batch warning, float32 LoRA weights."""
import logging

import pytest
import torch

from gemma_helpers import trl_compat
from gemma_helpers.trl_compat import TorchLogProb


@pytest.mark.parametrize("chunk", [1024, 128])  # one chunk; several chunks under checkpointing
def test_torch_log_prob_matches_full_logits(monkeypatch, chunk):
    import torch

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


def test_the_kernel_is_installed_only_where_trl_has_none(monkeypatch):
    import trl.trainer.utils as trl_utils

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", None, raising=False)
    trl_compat.ensure_lm_head_kernel()
    assert trl_utils._ChunkedLogProbFunction is TorchLogProb
    theirs = object()
    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", theirs)
    trl_compat.ensure_lm_head_kernel()
    assert trl_utils._ChunkedLogProbFunction is theirs  # a real kernel (Triton on a GPU) is left alone


def test_only_the_packed_batch_warning_is_dropped_and_the_filter_added_once(monkeypatch):
    log = logging.getLogger("trl.trainer.sft_trainer")
    monkeypatch.setattr(log, "filters", [])
    model = type("M", (), {"config": type("C", (), {"_attn_implementation": "sdpa"})()})()
    trl_compat.quiet_packed_warning(model)
    trl_compat.quiet_packed_warning(model)
    assert len(log.filters) == 1

    def record(msg):
        return logging.LogRecord(log.name, logging.WARNING, __file__, 1, msg, None, None)

    assert not log.filter(record("Padding-free training is enabled, but the attention implementation is not ..."))
    assert log.filter(record("any other warning"))
    flash = type("M", (), {"config": type("C", (), {"_attn_implementation": "flash_attention_2"})()})()
    monkeypatch.setattr(log, "filters", [])
    trl_compat.quiet_packed_warning(flash)
    assert log.filters == []


def test_trainable_bfloat16_weights_go_back_to_float32_and_frozen_ones_stay():
    lora = torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))
    frozen = torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16), requires_grad=False)
    model = torch.nn.Module()
    model.lora, model.frozen = lora, frozen
    trl_compat.keep_trainable_float32(model)
    assert model.lora.dtype == torch.float32 and model.frozen.dtype == torch.bfloat16
