"""Where TRL 1.15 does not fit this project's setup, and what stands in (README, "Two library gaps"; benchmarks/RESULTS.md).

- TRL's SFTTrainer computes the loss through a fused LM head whose kernel is written in Triton,
  which the CPU build of PyTorch lacks: :class:`TorchLogProb` is a plain-PyTorch version, installed
  by :func:`ensure_lm_head_kernel` only where TRL found no kernel.
- TRL warns that padding-free batches need flash attention; with transformers 5.17's sdpa and eager
  masks they do not (:func:`quiet_packed_warning`).
- TRL casts a 4-bit model's trainable LoRA weights to bfloat16; without a GPU they are put back to
  float32 (:func:`keep_trainable_float32`), so master weights and optimizer state stay float32.
"""
from __future__ import annotations

import logging


class TorchLogProb:
    """A plain-PyTorch stand-in for TRL's Triton ``ChunkedLogProbFunction``.

    TRL 1.15's SFTTrainer always computes the loss through a fused LM head whose kernel is
    written in Triton, which the CPU build of PyTorch does not ship; without it every
    training step fails with ``'NoneType' object has no attribute 'apply'``. This computes
    the same per-token outputs with ordinary autograd ops. Like TRL, it is handed only the
    positions whose label is not -100, so prompt tokens never reach the 262144-row LM head.

    Cost (measured, ``benchmarks/RESULTS.md``): the log-probabilities come from PyTorch's fused
    ``cross_entropy``; the statistics TRL logs (entropy, top-1 accuracy, ...) are computed only
    when TRL asks for them, without gradients. Up to ``CHUNK`` rows are one chunk; more are
    split into chunks under activation checkpointing, so the ``[rows, vocab]`` logits of one
    chunk at most are alive at a time (1 GiB for 1024 rows of Gemma's 262144-token vocabulary)."""

    CHUNK = 1024

    @staticmethod
    def _one(hidden, weight, bias, targets, temperature, softcap, logit_scale, outputs):
        import torch

        low = autocast_bf16(hidden.device.type) and not weight.requires_grad
        if low:  # bfloat16 autocast: the frozen head's bf16 copy is made once, not at every step
            z = (hidden.to(torch.bfloat16) @ TorchLogProb.bf16_weight(weight).t()).float()
        else:
            z = hidden.float() @ weight.float().t()  # no copy when both are float32 already
        if bias is not None:
            z = z + bias.float()
        if logit_scale != 1.0:
            z = z * logit_scale
        if softcap:
            z = softcap * torch.tanh(z / softcap)
        if temperature != 1.0:
            z = z / temperature
        log_probs = -torch.nn.functional.cross_entropy(z, targets, reduction="none")
        stats = {}
        with torch.no_grad():  # logging-only statistics, each only when asked for
            if {"entropy", "log_sum_sq_probs"} & set(outputs):
                log_z = torch.logsumexp(z, dim=-1)
                p = torch.exp(z - log_z[:, None])
                if "entropy" in outputs:
                    stats["entropy"] = log_z - torch.linalg.vecdot(p, z)
                if "log_sum_sq_probs" in outputs:
                    stats["log_sum_sq_probs"] = torch.log(torch.linalg.vecdot(p, p))
            if "mean_logits" in outputs:
                stats["mean_logits"] = z.mean(-1)
            if "is_top1" in outputs:
                stats["is_top1"] = z.argmax(-1) == targets
        return (log_probs, *(stats.get(k) for k in TorchLogProb.STATS))

    STATS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
    _cast: tuple | None = None  # (the float weight's identity and version, its bfloat16 copy)

    @classmethod
    def bf16_weight(cls, weight):
        """A bfloat16 copy of the frozen ``weight``, kept until the weight changes or :meth:`forget`."""
        import torch

        key = (weight.data_ptr(), weight._version, tuple(weight.shape), weight.dtype)
        if cls._cast is None or cls._cast[0] != key:
            cls._cast = (key, weight.detach().to(torch.bfloat16))
        return cls._cast[1]

    @classmethod
    def forget(cls) -> None:
        cls._cast = None

    @classmethod
    def apply(cls, hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
              logit_scale=1.0, outputs=("log_probs",)):
        import torch
        from torch.utils.checkpoint import checkpoint

        outputs = tuple(outputs)
        parts = []
        for start in range(0, max(hidden.shape[0], 1), cls.CHUNK):
            args = (hidden[start : start + cls.CHUNK], weight, bias, targets[start : start + cls.CHUNK],
                    temperature, final_logit_softcapping, logit_scale, outputs)
            if torch.is_grad_enabled() and hidden.shape[0] > cls.CHUNK:
                parts.append(checkpoint(cls._one, *args, use_reentrant=False))
            else:
                parts.append(cls._one(*args))
        log_probs, *stats = (None if x[0] is None else torch.cat(x) for x in zip(*parts))
        return (log_probs, *stats)


def autocast_bf16(device_type: str) -> bool:
    """Whether bfloat16 autocast is on for ``device_type`` (``"cpu"``, ``"cuda"``)."""
    import torch

    return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.bfloat16


def ensure_lm_head_kernel() -> None:
    """Give TRL its fused-LM-head function where Triton is missing (CPU PyTorch)."""
    import trl.trainer.utils as trl_utils

    if getattr(trl_utils, "_ChunkedLogProbFunction", None) is None:
        trl_utils._ChunkedLogProbFunction = TorchLogProb


class PackedMasksAreFine(logging.Filter):
    """Drops TRL's warning that padding-free batches need flash attention: transformers 5.17's
    sdpa and eager masks keep packed examples apart through ``position_ids`` when no KV cache is
    passed, as in training (``tests/test_bench.py`` checks the losses agree)."""

    def filter(self, record):
        return "Padding-free training is enabled, but the attention" not in record.getMessage()


def quiet_packed_warning(model) -> None:
    """Add :class:`PackedMasksAreFine` to TRL's SFT logger once, for a model on sdpa or eager attention."""
    if getattr(model.config, "_attn_implementation", None) in ("sdpa", "eager"):
        log = logging.getLogger("trl.trainer.sft_trainer")
        if not any(isinstance(f, PackedMasksAreFine) for f in log.filters):
            log.addFilter(PackedMasksAreFine())


def keep_trainable_float32(model) -> None:
    """Put back to float32 every trainable parameter TRL cast to bfloat16 (a 4-bit model's LoRA weights):
    master weights and optimizer state stay float32, and bfloat16 autocast still computes in bfloat16."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype == torch.bfloat16:
            param.data = param.data.float()
