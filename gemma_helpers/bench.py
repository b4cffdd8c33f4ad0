"""Timing training: tokens/s over real tokens, seconds per step, peak memory, and the plain baseline.

:class:`StepMeter` is a ``TrainerCallback`` that works with any ``Trainer`` (ours through
``gemma_helpers.train``'s ``callbacks=``, or the baseline's): it times every optimizer step
and counts, from the batches the model is actually called with, the real tokens (padding
excluded), the padded tokens and the labelled tokens. :func:`baseline_train` is what a copied
notebook does: peft's ``LoraConfig`` + a plain transformers ``Trainer``, padded batches and the
model's own loss over the full logits, with the same data, labels, LoRA and batch as ours.
"""
from __future__ import annotations

import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .chat import IGNORE_INDEX, tokenize_rows


def peak_memory_mb() -> float:
    """Peak GPU memory allocated (CUDA) or the peak resident set size of this process (CPU), in MiB."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_memory() -> None:
    """Start a fresh GPU peak (the CPU's peak RSS cannot be reset: run each measurement in its own process)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


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


@dataclass
class StepStats:
    step_s: list[float] = field(default_factory=list)
    real_tokens: list[int] = field(default_factory=list)
    processed_tokens: list[int] = field(default_factory=list)
    labelled_tokens: list[int] = field(default_factory=list)

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
            self._started = None

        def _count(self, module, args, kwargs):
            for i, n in enumerate(batch_tokens(kwargs)):
                self._counts[i] += n

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if self._hook is None and model is not None:
                self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)

        def on_step_begin(self, args, state, control, **kwargs):
            self._counts = [0, 0, 0]
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

        def on_train_end(self, args, state, control, **kwargs):
            if self._hook is not None:
                self._hook.remove()
                self._hook = None

    return StepMeter()


@dataclass
class BaselineResult:
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

    set_seed(spec.seed)
    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                                             target_modules=list(spec.target_modules), bias="none",
                                             task_type="CAUSAL_LM"))
    dataset = Dataset.from_list(tokenize_rows(tokenizer, rows, spec.max_seq_length))
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.grad_accum,
        learning_rate=spec.learning_rate,
        num_train_epochs=spec.epochs,
        max_steps=spec.max_steps,
        warmup_steps=spec.warmup_steps,
        weight_decay=spec.weight_decay,
        lr_scheduler_type=spec.lr_scheduler,
        optim=spec.optim,
        seed=spec.seed,
        logging_steps=spec.logging_steps,
        save_strategy="no",
        report_to="none",
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
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


class RssPeak:
    """Peak resident set size of this process while the ``with`` block runs (sampled every
    ``every`` seconds by a thread), in MiB; ``.start_mb`` is the RSS when it began."""

    def __init__(self, every: float = 0.05):
        self.every, self.peak_mb, self.start_mb = every, 0.0, 0.0

    def _sample(self):
        import psutil

        proc = psutil.Process()
        while not self._stop.wait(self.every):
            self.peak_mb = max(self.peak_mb, proc.memory_info().rss / 2**20)

    def __enter__(self):
        import threading

        import psutil

        self.start_mb = self.peak_mb = psutil.Process().memory_info().rss / 2**20
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import psutil

        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, psutil.Process().memory_info().rss / 2**20)
        return False
