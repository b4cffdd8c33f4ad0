"""Training throughput, ours against a plain baseline (``benchmarks/train_throughput.py``).

Timing training: tokens/s over real tokens, seconds per step, model FLOPs, and the plain baseline
(peak memory: :mod:`gemma_helpers.memory`).

:class:`StepMeter` is a ``TrainerCallback`` that works with any ``Trainer`` (ours through
``gemma_helpers.train``'s ``callbacks=``, or the baseline's): it times every optimizer step
and counts, from the batches the model is actually called with, the real tokens (padding
excluded), the padded tokens and the labelled tokens. :func:`baseline_train` is what a copied
notebook does: peft's ``LoraConfig`` + a plain transformers ``Trainer``, padded batches and the
model's own loss over the full logits, with the same data, labels, LoRA and batch as ours.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .chat import IGNORE_INDEX, tokenize_rows


def batch_tokens(kwargs: dict) -> tuple[int, int, int]:
    """``(real, processed, labelled)`` tokens of one model call: real excludes padding, processed
    is every position the model runs on, labelled the positions whose label is not -100."""
    ids = kwargs.get("input_ids")
    if ids is None:
        return 0, 0, 0
    mask = kwargs.get("attention_mask")
    real = int(mask.sum()) if mask is not None else ids.numel()  # padding-free batches carry no padding
    labels = kwargs.get("labels")
    labelled = int((labels != IGNORE_INDEX).sum()) if labels is not None else 0
    return real, ids.numel(), labelled


def sequence_lengths(kwargs: dict) -> list[int]:
    """Lengths of the examples in one model call: a padding-free row split where its
    ``position_ids`` restart at 0, padded rows by their attention mask."""
    ids = kwargs.get("input_ids")
    if ids is None:
        return []
    mask = kwargs.get("attention_mask")
    if mask is not None:
        return [int(n) for n in mask.sum(-1).tolist()]
    positions = kwargs.get("position_ids")
    if positions is None:
        return [ids.shape[-1]] * ids.shape[0]
    lengths = []
    for row in positions.tolist():
        starts = [i for i, p in enumerate(row) if p == 0] + [len(row)]
        lengths += [b - a for a, b in zip(starts, starts[1:])]
    return lengths


# --- model FLOPs: the arithmetic a training step needs, whoever does it ---------------------------

FLOPS_FORMULA = (
    "model FLOPs per step, frozen base with LoRA, counted from the examples each step was called with "
    "(T real tokens, N labelled tokens, examples of length n): "
    "4 * P * T for the base's linear layers (forward 2 P T, activation gradients 2 P T, no weight gradients; "
    "P = their weights, embedding excluded) "
    "+ 6 * r * (in + out) * T per LoRA-adapted layer (forward, activation and weight gradients) "
    "+ 3 * 4 * heads * head_dim * pairs per layer for attention (QK^T and AV, forward and twice that "
    "backward; pairs = causal query-key pairs of each example, within the sliding window on sliding layers) "
    "+ 4 * hidden * vocab * N for the LM head on labelled positions (forward and activation gradients); "
    "norms, activations, softmax and the optimizer are not counted")


@dataclass
class ModelShape:
    """The sizes of a decoder that its training FLOPs depend on (from a transformers config)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    window: int | None
    sliding: list[bool]

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        c = config.get_text_config() if hasattr(config, "get_text_config") else config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        types = getattr(c, "layer_types", None) or ["full_attention"] * c.num_hidden_layers
        inter = c.intermediate_size
        inter = inter[0] if isinstance(inter, (list, tuple)) else inter
        return cls(c.hidden_size, inter, c.num_hidden_layers, c.num_attention_heads,
                   getattr(c, "num_key_value_heads", c.num_attention_heads), head_dim, c.vocab_size,
                   getattr(c, "sliding_window", None), [t == "sliding_attention" for t in types])

    def linear(self) -> dict[str, tuple[int, int]]:
        """``(in, out)`` of each linear layer of one decoder layer, by its module name."""
        d, f, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
                "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}

    def pairs(self, n: int, sliding: bool) -> int:
        """Causal query-key pairs of one example of ``n`` tokens."""
        if sliding and self.window and n > self.window:
            w = self.window
            return w * (w + 1) // 2 + (n - w) * w
        return n * (n + 1) // 2


def step_flops(shape: ModelShape, lengths: Sequence[int], labelled: int, r: int, targets: Sequence[str]) -> dict:
    """The model FLOPs of one training step (:data:`FLOPS_FORMULA`), by part and in total."""
    tokens = sum(lengths)
    linear = shape.linear()
    base = 4 * shape.layers * sum(i * o for i, o in linear.values()) * tokens
    lora = 6 * shape.layers * sum(r * (i + o) for name, (i, o) in linear.items() if name in targets) * tokens
    pairs = sum(shape.pairs(n, s) for s in shape.sliding for n in lengths)
    attention = 3 * 4 * shape.heads * shape.head_dim * pairs
    head = 4 * shape.hidden * shape.vocab * labelled
    return {"base": base, "lora": lora, "attention": attention, "lm_head": head,
            "total": base + lora + attention + head}


def matmul_peak_gflops(m: int, k: int, n: int, dtype: str, seconds: float = 1.0) -> float:
    """The best rate of an ``(m, k) @ (k, n)`` matrix product in ``dtype`` ("float32" / "bfloat16")
    over about ``seconds`` of repeats, in GFLOP/s: the machine's peak at that shape."""
    import torch

    a = torch.randn(m, k).to(getattr(torch, dtype))
    b = torch.randn(k, n).to(getattr(torch, dtype))
    a @ b  # warm-up (oneDNN picks its kernel)
    best, spent = float("inf"), 0.0
    while spent < seconds or best == float("inf"):
        started = time.perf_counter()
        a @ b
        took = time.perf_counter() - started
        best, spent = min(best, took), spent + took
    return 2 * m * k * n / best / 1e9


@dataclass
class StepStats:
    """What step_meter records for each optimiser step: time, real, processed and labelled tokens."""

    step_s: list[float] = field(default_factory=list)
    real_tokens: list[int] = field(default_factory=list)
    processed_tokens: list[int] = field(default_factory=list)
    labelled_tokens: list[int] = field(default_factory=list)
    lengths: list[list[int]] = field(default_factory=list)  # example lengths of each step

    def flops(self, shape: ModelShape, r: int, targets: Sequence[str], warmup: int = 1) -> dict:
        """Model FLOPs of the steps after ``warmup`` and their rate (:data:`FLOPS_FORMULA`)."""
        keep = slice(warmup, None) if len(self.step_s) > warmup else slice(None)
        parts = [step_flops(shape, n, lab, r, targets) for n, lab in zip(self.lengths[keep], self.labelled_tokens[keep])]
        total = {k: sum(p[k] for p in parts) for k in ("base", "lora", "attention", "lm_head", "total")}
        seconds = sum(self.step_s[keep])
        return {"flops_per_step": total["total"] / max(len(parts), 1), "flops_parts": total,
                "gflops": total["total"] / seconds / 1e9 if seconds else 0.0}

    def summary(self, warmup: int = 1) -> dict:
        """Throughput over the steps after ``warmup`` (the first step pays one-off costs)."""
        keep = slice(warmup, None) if len(self.step_s) > warmup else slice(None)
        seconds = sum(self.step_s[keep])
        real, processed, labelled = (sum(x[keep]) for x in (self.real_tokens, self.processed_tokens,
                                                             self.labelled_tokens))
        return {
            "steps_timed": len(self.step_s[keep]),
            "s_per_step": seconds / max(len(self.step_s[keep]), 1),
            "tokens_per_s": real / seconds if seconds else 0.0,
            "labelled_tokens_per_s": labelled / seconds if seconds else 0.0,
            "real_tokens": real,
            "processed_tokens": processed,
            "labelled_tokens": labelled,
            "padding_share": 1 - real / processed if processed else 0.0,
        }


def step_meter():
    """A fresh :class:`StepMeter` callback (built lazily so importing this module stays light)."""
    import torch
    from transformers import TrainerCallback

    class StepMeter(TrainerCallback):
        """Times each optimizer step and counts the tokens of the batches the model was called with."""

        def __init__(self):
            self.stats = StepStats()
            self._hook = None
            self._counts = [0, 0, 0]
            self._lengths = []
            self._started = None

        def _count(self, module, args, kwargs):
            for i, n in enumerate(batch_tokens(kwargs)):
                self._counts[i] += n
            self._lengths += sequence_lengths(kwargs)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if self._hook is None and model is not None:
                self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)

        def on_step_begin(self, args, state, control, **kwargs):
            self._counts = [0, 0, 0]
            self._lengths = []
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.stats.step_s.append(time.perf_counter() - self._started)
            real, processed, labelled = self._counts
            self.stats.real_tokens.append(real)
            self.stats.processed_tokens.append(processed)
            self.stats.labelled_tokens.append(labelled)
            self.stats.lengths.append(self._lengths)

        def on_train_end(self, args, state, control, **kwargs):
            if self._hook is not None:
                self._hook.remove()
                self._hook = None

    return StepMeter()


@dataclass
class BaselineResult:
    """What baseline_train returns: the log history, the runtime and the step reached."""

    history: list[dict]
    runtime_s: float
    global_step: int
    model: object = field(default=None, repr=False)


def baseline_train(model, tokenizer, rows: Sequence[dict], spec, output_dir: str | Path,
                   callbacks: Sequence = ()) -> BaselineResult:
    """The plain recipe, for comparison only: peft LoRA + transformers ``Trainer``.

    Same rows and answer-only labels (:func:`gemma_helpers.chat.tokenize_rows`), same LoRA,
    seed, batch, optimizer and schedule as ``gemma_helpers.train`` with ``spec``; what differs
    is what a copied notebook does: batches padded to their longest row, and the model's own
    forward, which computes the logits of every position (prompt and padding included) before
    the loss. Nothing is saved."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    from . import env
    from .train import schedule_args

    set_seed(spec.seed)
    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                                             target_modules=list(spec.target_modules), bias="none",
                                             task_type="CAUSAL_LM"))
    dataset = Dataset.from_list(tokenize_rows(tokenizer, rows, spec.max_seq_length))
    args = TrainingArguments(
        output_dir=str(output_dir),
        **schedule_args(spec),
        save_strategy="no",
        report_to="none",
        bf16=env.bf16_supported(),
        fp16=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        gradient_checkpointing=torch.cuda.is_available(),
        remove_unused_columns=False,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                      callbacks=list(callbacks))
    started = time.time()
    trainer.train()
    history = [{"step": h["step"], **{k: h[k] for k in ("loss", "learning_rate", "grad_norm") if k in h}}
               for h in trainer.state.log_history if "loss" in h]
    return BaselineResult(history=history, runtime_s=time.time() - started,
                          global_step=trainer.state.global_step, model=trainer.model)
