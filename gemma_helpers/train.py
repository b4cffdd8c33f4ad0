"""One ``TrainSpec`` to a TRL ``SFTTrainer`` run, with history, checkpoints and resume.

Rows are conversations (see :mod:`gemma_helpers.chat`); they are tokenized here with labels
on the answers only and handed to SFTTrainer already tokenized, so TRL uses those labels as
they are. The logged loss is the mean per-token loss over answer tokens. Where TRL does not fit
this setup (a CPU without Triton, LoRA weights cast to bfloat16), :mod:`gemma_helpers.trl_compat`
stands in; memory is measured by :mod:`gemma_helpers.memory`.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import env, trl_compat
from .chat import tokenize_rows
from .hub import META, write_card
from .models import DEFAULT_TARGETS, attach_lora, check_ids, embedding_rows, hub_id


@dataclass
class TrainSpec:
    """The hyperparameters a notebook shows. Defaults are plain; recipes set their own."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 2
    grad_accum: int = 1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    optim: str = "adamw_torch"
    seed: int = env.SEED
    max_seq_length: int = 512
    save_steps: int = 25
    save_total_limit: int = 2
    logging_steps: int = 1
    # Padding-free batches: a batch is one row of concatenated examples, each with its own
    # position_ids restarting at 0, and no padding. None = on where it is known to be correct:
    # transformers' sdpa/eager masks (CPU, and GPU without unsloth) keep the examples apart
    # through position_ids (tests/test_bench.py checks packed == padded loss); off under
    # unsloth, which is not tested here. True/False force it.
    padding_free: bool | None = None
    # Validation (train(..., eval_rows=...)): the loss on eval_rows every eval_steps steps (0: only
    # before and after training). early_stopping_patience > 0 stops after that many evaluations
    # without a lower validation loss and restores the adapter of the best one.
    eval_steps: int = 0
    early_stopping_patience: int = 0
    # Rows per validation batch (None: batch_size). Evaluation keeps no activations for a backward
    # pass, so more rows fit than in a training batch; on a CPU, fewer and larger batches are faster.
    eval_batch_size: int | None = None
    # What the matrix products run in: "auto" = bfloat16 where the hardware computes it natively (a
    # CUDA GPU with bf16; a CPU with AVX512-BF16 or AMX, about 2.3x its float32 rate), float32
    # elsewhere; "bfloat16" / "float32" force it. bfloat16 is mixed precision: autocast around the
    # forward and backward passes, the LoRA weights, their gradients and the optimizer state stay
    # float32 (tests/test_train.py holds its loss to the float32 run's). Never float16 (Gemma overflows).
    compute_dtype: str = "auto"

    def __post_init__(self):
        problems = spec_problems({f.name: getattr(self, f.name) for f in fields(self)})
        if problems:
            raise ValueError(f"TrainSpec: {'; '.join(problems)}")


_INT_AT_LEAST = {"r": 1, "alpha": 1, "batch_size": 1, "grad_accum": 1, "warmup_steps": 0, "seed": 0, "max_seq_length": 1,
                 "save_steps": 1, "logging_steps": 1, "eval_steps": 0, "early_stopping_patience": 0}


def spec_problems(values) -> list[str]:
    """One line per :class:`TrainSpec` field in ``values`` whose type or range is wrong, naming the field,
    the value and what is allowed (``max_steps``: -1 trains by ``epochs``, otherwise an int >= 1; rates
    and epochs finite and > 0; an int is an int, never a bool, a float or a string). Other keys are ignored."""
    def kind(value):
        return f" is a {type(value).__name__}"

    def is_int(value):
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    def is_real(value):
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)

    problems = []
    for key, value in values.items():
        shown = f"{key}={value!r}"
        if key in _INT_AT_LEAST or key in ("max_steps", "save_total_limit", "eval_batch_size"):
            low = _INT_AT_LEAST.get(key, 1)
            allowed = ("-1 (train by epochs) or an int >= 1" if key == "max_steps"
                       else "an int >= 1 or None (keep every checkpoint)" if key == "save_total_limit"
                       else "an int >= 1 or None (the training batch)" if key == "eval_batch_size" else f"an int >= {low}")
            if key in ("save_total_limit", "eval_batch_size") and value is None:
                continue
            if not is_int(value):
                problems.append(f"{shown}{kind(value)}: expected {allowed}")
            elif value < low and not (key == "max_steps" and value == -1):
                problems.append(f"{shown}: expected {allowed}")
        elif key in ("learning_rate", "epochs", "dropout", "weight_decay"):
            allowed = {"dropout": "a number >= 0 and < 1", "weight_decay": "a number >= 0"}.get(key, "a number > 0")
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                problems.append(f"{shown}{kind(value)}: expected {allowed}")
            elif not is_real(value) or value < 0 or (value == 0 and key in ("learning_rate", "epochs")) or (key == "dropout" and value >= 1):
                problems.append(f"{shown}: expected {allowed}")
        elif key in ("lr_scheduler", "optim"):
            if not isinstance(value, str) or not value.strip():
                problems.append(f"{shown}: expected a name (a non-empty str)")
        elif key == "target_modules":
            names = [value] if isinstance(value, str) else value if isinstance(value, (list, tuple)) else None
            if not names or not all(isinstance(n, str) and n.strip() for n in names):
                problems.append(f"{shown}: expected module names (a tuple or list of non-empty str) or one regular expression (a str)")
        elif key == "padding_free":
            if value is not None and not isinstance(value, bool):
                problems.append(f"{shown}{kind(value)}: expected True, False or None")
        elif key == "compute_dtype":
            if value not in COMPUTE_DTYPES:
                problems.append(f"{shown}: expected one of {COMPUTE_DTYPES}")
    return problems


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class NoLabelsError(ValueError):
    """Every training row has every label masked (-100): training would learn nothing. ``rows`` maps
    each row index to why it has no trained token; the message names them."""

    def __init__(self, rows: dict[int, str]):
        self.rows = rows
        shown = "; ".join(f"row {i}: {why}" for i, why in list(rows.items())[:10])
        more = f"; and {len(rows) - 10} more" if len(rows) > 10 else ""
        super().__init__(f"all {len(rows)} training rows have no trained token (every label is -100): {shown}{more}")


@dataclass
class LabelReport:
    """What :func:`label_preflight` found: trained (label) tokens per row, and the rows without any."""

    counts: list[int]
    empty: dict[int, str]  # row index -> why it has no trained token

    def spread(self) -> tuple[int, float, int]:
        """Min, median and max trained tokens over the rows that have any."""
        trained = [c for c in self.counts if c] or [0]
        return min(trained), statistics.median(trained), max(trained)

    def summary(self) -> str:
        low, mid, high = self.spread()
        line = f"label preflight: {len(self.counts)} rows, trained tokens per row min {low} / median {mid:g} / max {high}"
        if self.empty:
            line += f"; {len(self.empty)} rows with none, left out: " + "; ".join(
                f"row {i}: {why}" for i, why in list(self.empty.items())[:5]) + (" ..." if len(self.empty) > 5 else "")
        return line


def label_preflight(tokenizer, rows: Sequence[dict], examples: Sequence[dict], max_length: int | None) -> LabelReport:
    """Count the trained tokens (labels that are not -100) of every tokenized row, and say why a row
    has none: its answer was cut off by ``max_length``, or the rendered text holds no assistant answer
    (the chat template does not render the assistant turn the way the labels expect).
    :class:`NoLabelsError`, naming the rows, when no row has any."""
    from .chat import IGNORE_INDEX, tokenize_row

    counts = [sum(label != IGNORE_INDEX for label in ex["labels"]) for ex in examples]
    empty = {}
    for i, n in enumerate(counts):
        if n:
            continue
        whole = tokenize_row(tokenizer, rows[i], None, i, strict=False)
        first = next((k for k, label in enumerate(whole["labels"]) if label != IGNORE_INDEX), None)
        if first is not None:
            empty[i] = (f"truncated: max_seq_length={max_length} keeps {len(examples[i]['input_ids'])} of "
                        f"{len(whole['input_ids'])} tokens; the answer starts at token {first}")
        else:
            empty[i] = ("no assistant answer in the rendered text: template mismatch (the chat template does "
                        "not render the assistant turn, or it renders it empty)")
    if empty and len(empty) == len(counts):
        raise NoLabelsError(empty)
    return LabelReport(counts, empty)


@dataclass
class TrainResult:
    """What train returns: the adapter folder, the log history, runtime, steps and the checkpoint resumed from."""

    adapter_dir: Path
    history: list[dict]
    runtime_s: float
    global_step: int
    resumed_from: str | None
    stopped_early: str | None = None
    spec: dict = field(default_factory=dict)
    model: object = field(default=None, repr=False)  # the trained PeftModel, in memory
    # validation loss (train(..., eval_rows=...)): step 0 is before training; the last entry is the
    # adapter returned (the best one when early stopping restored it)
    eval_history: list[dict] = field(default_factory=list)

    @property
    def losses(self) -> list[tuple[int, float]]:
        return [(h["step"], h["loss"]) for h in self.history if "loss" in h]


def _callbacks():
    from transformers import TrainerCallback

    class NonFiniteLoss(TrainerCallback):
        """Stop at once, with the reason, when the loss is NaN or infinite."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            bad = {k: logs[k] for k in ("loss", "grad_norm") if isinstance(logs.get(k), float) and not math.isfinite(logs[k])}
            if bad:
                what = ", ".join(f"{k} is {v}" for k, v in bad.items())
                raise NonFiniteLossError(
                    f"{what} at step {state.global_step}. Gemma 3/3n/4 overflow in float16 "
                    "(the T4 case): train in float32 or bfloat16, never fp16; otherwise lower the learning rate."
                )

    class StopWhen(TrainerCallback):
        """Every ``every`` steps call ``check(model)``; a truthy string stops training with that reason."""

        def __init__(self, check, every):
            self.check, self.every, self.reason = check, every, None

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % self.every == 0:
                reason = self.check(model)
                if reason:
                    self.reason = f"step {state.global_step}: {reason}"
                    control.should_training_stop = True
                    control.should_save = True

    return NonFiniteLoss, StopWhen


def report_to() -> str:
    """wandb when a key is configured, else nowhere: a run never stops to prompt for a login."""
    return "wandb" if os.environ.get("WANDB_API_KEY") else "none"


def padding_free(spec: TrainSpec, multimodal: bool = False) -> bool:
    """Whether ``spec`` trains on padding-free batches (see ``TrainSpec.padding_free``); never with
    multimodal rows, whose collator pads the batch itself."""
    if multimodal:
        return False
    return spec.padding_free if spec.padding_free is not None else not env.unsloth_available()


COMPUTE_DTYPES = ("auto", "bfloat16", "float32")
COMPUTE_DTYPE_VARIABLE = env.COMPUTE_DTYPE_VARIABLE  # forces what "auto" means (a CI run of the other compute path)


def compute_dtype(spec: TrainSpec) -> str:
    """``"bfloat16"`` or ``"float32"``: what ``spec.compute_dtype`` means on this machine. ``"auto"`` is
    bfloat16 where the hardware computes it natively, float32 elsewhere, unless the environment variable
    ``GEMMA_COMPUTE_DTYPE`` (``bfloat16`` or ``float32``) says which: it runs a whole test suite or
    notebook on the path this machine would not take (bfloat16 is emulated, and slow, on a CPU without it).
    A spec that names its dtype keeps it."""
    if spec.compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"TrainSpec.compute_dtype={spec.compute_dtype!r}: expected one of {COMPUTE_DTYPES}")
    if spec.compute_dtype != "auto":
        return spec.compute_dtype
    forced = os.environ.get(COMPUTE_DTYPE_VARIABLE, "").strip().lower()
    if forced and forced != "auto":
        if forced not in COMPUTE_DTYPES:
            raise ValueError(f"{COMPUTE_DTYPE_VARIABLE}={forced!r}: expected one of {COMPUTE_DTYPES} (or unset)")
        return forced
    native = env.bf16_supported() if env.cuda_available() else env.cpu_bf16_native()
    return "bfloat16" if native else "float32"


def _eval_args(spec: TrainSpec, evaluate: bool) -> dict:
    if not evaluate or spec.eval_steps <= 0:
        return {"eval_strategy": "no"}
    args = {"eval_strategy": "steps", "eval_steps": spec.eval_steps, "per_device_eval_batch_size": spec.eval_batch_size or spec.batch_size}
    if _restores_best(spec, evaluate):  # checkpoints at every evaluation (sft_config's save_steps)
        args.update(load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False)
    return args


def _restores_best(spec: TrainSpec, evaluate: bool) -> bool:
    return evaluate and spec.eval_steps > 0 and spec.early_stopping_patience > 0


def schedule_args(spec: TrainSpec) -> dict:
    """The ``TrainingArguments`` a :class:`TrainSpec` sets: batch, accumulation, learning-rate schedule,
    optimiser, seed and logging, the same for our ``SFTConfig`` and the baseline's plain ``Trainer``."""
    return {"per_device_train_batch_size": spec.batch_size, "gradient_accumulation_steps": spec.grad_accum,
            "learning_rate": spec.learning_rate, "num_train_epochs": spec.epochs, "max_steps": spec.max_steps,
            "warmup_steps": spec.warmup_steps, "weight_decay": spec.weight_decay,
            "lr_scheduler_type": spec.lr_scheduler, "optim": spec.optim, "seed": spec.seed,
            "logging_steps": spec.logging_steps}


def sft_config(spec: TrainSpec, output_dir: Path, multimodal: bool = False, evaluate: bool = False):
    """The TRL SFTConfig for a TrainSpec: precision, padding-free, schedule and evaluation."""
    import torch
    from trl import SFTConfig

    bf16 = compute_dtype(spec) == "bfloat16"
    free = padding_free(spec, multimodal)
    return SFTConfig(
        output_dir=str(output_dir),
        **schedule_args(spec),
        logging_nan_inf_filter=False,  # the default logs a NaN loss as the running mean (0 at step 1)
        save_strategy="steps",
        save_steps=spec.eval_steps if _restores_best(spec, evaluate) else spec.save_steps,  # a checkpoint per evaluation
        save_total_limit=spec.save_total_limit,
        report_to=report_to(),
        bf16=bf16,
        fp16=False,  # Gemma 3/3n/4 overflow in float16
        use_cpu=not torch.cuda.is_available(),
        # multimodal: truncation would cut image placeholders; padding-free: rows arrive tokenized and
        # truncated to spec.max_seq_length (chat.tokenize_rows), and TRL refuses a max_length without packing
        max_length=None if multimodal or free else spec.max_seq_length,
        dataloader_num_workers=0,
        gradient_checkpointing=torch.cuda.is_available(),
        packing=False,
        padding_free=free,
        # multimodal rows stay raw until the collator (images are loaded and expanded there)
        **({"remove_unused_columns": False, "dataset_kwargs": {"skip_prepare_dataset": True}} if multimodal else {}),
        **_eval_args(spec, evaluate),
    )


def train(model, tokenizer, rows: Sequence[dict], spec: TrainSpec, output_dir: str | Path,
          resume: bool | None = None, stop_when: Callable | None = None, stop_every: int = 5,
          callbacks: Sequence = (), data_collator: Callable | None = None,
          eval_rows: Sequence[dict] | None = None) -> TrainResult:
    """Train LoRA adapters on ``rows``; return where the adapter is and the loss history.

    - LoRA from ``spec`` is attached unless ``model`` already carries adapters.
    - Checkpoints every ``spec.save_steps`` under ``output_dir``, keeping the last 2;
      ``resume=True`` continues from the newest one that reads (a damaged one is named and passed
      over; a fresh start when there is none) and says which; ``resume=None`` (the default) resumes
      where outputs are kept on Google Drive (:func:`gemma_helpers.env.resume_training`: a notebook
      run again after a Colab disconnect goes on from its last checkpoint), else starts afresh.
    - ``stop_when(model) -> str | None`` is called every ``stop_every`` steps; a returned
      reason stops training early (for instance: a validation recall has been reached).
    - ``data_collator`` (multimodal rows, e.g. :class:`gemma_helpers.chat.VisionCollator`): rows
      are handed to it as they are, and ``tokenizer`` is the model's processor.
    - ``eval_rows``: validation rows, tokenized like the training rows. Their loss (mean per
      answer token, as the training loss) is measured before training (step 0), every
      ``spec.eval_steps`` steps, and after training, into ``TrainResult.eval_history``. With
      ``spec.early_stopping_patience`` training stops when it has not improved for that many
      evaluations, and the best adapter is the one saved and returned (transformers'
      ``EarlyStoppingCallback`` and ``load_best_model_at_end``).
    - The adapter and tokenizer are saved to ``output_dir/adapter``; the history of loss and
      learning rate to ``output_dir/history.json`` (a history.json that train did not write stops
      the run before it starts). Nothing else in ``output_dir`` is written over: TRL's model card
      (``output_dir/README.md``) is not written.

    Notebook 01, section 7; Notebook 02, section 6; Notebook 03, sections 1 and 2 (also notebooks 04, 06).
    """
    output_dir, last = _start_dir(Path(output_dir), resume)
    model = _with_lora(model, spec)
    dataset, labels = _tokenized(tokenizer, model, rows, spec, "training", data_collator)
    evaluate = bool(eval_rows)
    eval_dataset = _tokenized(tokenizer, model, eval_rows, spec, "validation", data_collator)[0] if evaluate else None
    trainer, stopper, patience = _trainer(model, tokenizer, dataset, eval_dataset, spec, output_dir, data_collator,
                                          stop_when, stop_every, callbacks)
    eval_history, stopped_early, runtime = _run_here(trainer, spec, last, evaluate, stopper, patience)
    adapter_dir = _save_adapter(trainer, tokenizer, spec, output_dir, stopped_early, len(dataset), labels)
    return _result(trainer, spec, output_dir, adapter_dir, eval_history, stopped_early, runtime, last)


def _start_dir(output_dir: Path, resume: bool | None) -> tuple[Path, str | None]:
    """Step 1 of :func:`train`: ``output_dir`` checked and made, and the checkpoint to resume from (None:
    a fresh run, whose old checkpoints are cleared so that it never mixes with them)."""
    check_history_file(output_dir)  # a history.json that is not ours stops the run before anything is written
    if resume is None:
        resume = env.resume_training(output_dir)
    last = resume_checkpoint(output_dir) if resume else None
    if resume:
        print(f"resume: training resumes from {last}" if last else "resume: no checkpoint yet; training from step 0",
              flush=True)
    else:
        clear_previous_run(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir, last


def _with_lora(model, spec: TrainSpec):
    """Step 2: ``model`` with fresh LoRA adapters from ``spec``, unless it carries adapters already."""
    if hasattr(model, "peft_config"):
        return model
    from transformers import set_seed

    set_seed(spec.seed)  # LoRA's A matrices are drawn now: the same seed gives the same run
    return attach_lora(model, r=spec.r, alpha=spec.alpha, dropout=spec.dropout,
                       target_modules=spec.target_modules, seed=spec.seed)


def _tokenized(tokenizer, model, items: Sequence[dict], spec: TrainSpec, name: str,
               data_collator: Callable | None):
    """Step 3: ``items`` as a ``Dataset``, tokenized with answer-only labels (raw for a collator, which
    loads the images), each id checked against the embedding and the labels checked (the label
    preflight raises when no row has one; rows without one are left out); and the trained tokens per
    row, min / median / max (None for a collator)."""
    from datasets import Dataset

    if data_collator is not None:
        return Dataset.from_list(list(items)), None
    rows_in_embedding = embedding_rows(model)
    examples = tokenize_rows(tokenizer, items, spec.max_seq_length, strict=False)
    for i, example in enumerate(examples):
        check_ids(example["input_ids"], rows_in_embedding, f"{name} row {i}")
    report = label_preflight(tokenizer, items, examples, spec.max_seq_length)
    print(report.summary().replace("label preflight:", f"label preflight ({name}):"))
    low, mid, high = report.spread()
    return Dataset.from_list([ex for i, ex in enumerate(examples) if i not in report.empty]), f"{low} / {mid:g} / {high}"


def _trainer(model, tokenizer, dataset, eval_dataset, spec: TrainSpec, output_dir: Path,
             data_collator: Callable | None, stop_when: Callable | None, stop_every: int, callbacks: Sequence):
    """Step 4: TRL's ``SFTTrainer`` for ``spec`` with this series' callbacks (non-finite loss, ``stop_when``,
    early stopping); returns it with the ``stop_when`` and early-stopping callbacks (None when unused)."""
    from trl import SFTTrainer

    evaluate = eval_dataset is not None
    trl_compat.ensure_lm_head_kernel()
    if padding_free(spec, multimodal=data_collator is not None):
        trl_compat.quiet_packed_warning(model)
    NonFiniteLoss, StopWhen = _callbacks()
    stopper = StopWhen(stop_when, stop_every) if stop_when else None
    patience = None
    if _restores_best(spec, evaluate):
        from transformers import EarlyStoppingCallback

        patience = EarlyStoppingCallback(early_stopping_patience=spec.early_stopping_patience)
    trainer = SFTTrainer(
        model=model,
        args=sft_config(spec, output_dir, multimodal=data_collator is not None, evaluate=evaluate),
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=data_collator,
        callbacks=[NonFiniteLoss(), *([stopper] if stopper else []), *([patience] if patience else []), *callbacks],
    )
    # TRL's SFTTrainer writes its own model card to output_dir/README.md at every checkpoint, over any README.md
    # already there (the user's); the adapter's card is hub.write_card's, in output_dir/adapter
    trainer.create_model_card = lambda *args, **kwargs: None
    return trainer, stopper, patience


def _run_here(trainer, spec: TrainSpec, last: str | None, evaluate: bool, stopper, patience):
    """Step 5: :func:`_run` on this device; on a CPU with the trainable weights in float32 and 4-bit
    weights dequantised once for the run, and everything as it was afterwards."""
    on_cpu = not env.cuda_available()
    if on_cpu:
        trl_compat.keep_trainable_float32(trainer.model)
        restore = dequantise_once(trainer.model, "bfloat16" if trainer.args.bf16 else "float32")
    try:
        return _run(trainer, spec, last, evaluate, stopper, patience)
    finally:
        trl_compat.TorchLogProb.forget()
        if on_cpu:  # afterwards the caller's model computes with bitsandbytes' kernel, in float32, as before
            restore()
            if trainer.args.bf16:  # accelerate wrapped its forward in autocast
                trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)


def _save_adapter(trainer, tokenizer, spec: TrainSpec, output_dir: Path, stopped_early: str | None, rows: int,
                  labels: str | None) -> Path:
    """Step 6: the adapter and tokenizer in ``output_dir/adapter``, naming its base by hub id, with what
    merge() needs to rebuild that base and the card (the recipe now; a notebook rewrites it with its figures)."""
    adapter_dir = output_dir / "adapter"
    for config in trainer.model.peft_config.values():  # the hub id, not this machine's cache folder
        if config.base_model_name_or_path:  # a model built in memory (tiny vision configs) has none
            config.base_model_name_or_path = hub_id(config.base_model_name_or_path)
    trainer.model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    four_bit = bool(getattr(trainer.model, "is_loaded_in_4bit", False))
    env.write_whole(adapter_dir / META, json.dumps(
        {"load_in_4bit": four_bit,
         "train": {"spec": asdict(spec), "global_step": trainer.state.global_step, "stopped_early": stopped_early,
                   "rows": rows, "load_in_4bit": four_bit, "label_tokens": labels}}, indent=2, default=str))
    write_card(adapter_dir)
    return adapter_dir


def _result(trainer, spec: TrainSpec, output_dir: Path, adapter_dir: Path, eval_history: list[dict],
            stopped_early: str | None, runtime: float, last: str | None) -> TrainResult:
    """Step 7: the :class:`TrainResult`, and its history written to ``output_dir/history.json``."""
    history = [
        {"step": h["step"], **{k: h[k] for k in ("loss", "learning_rate", "grad_norm") if k in h}}
        for h in trainer.state.log_history
        if "loss" in h
    ]
    result = TrainResult(
        adapter_dir=adapter_dir,
        history=history,
        runtime_s=runtime,
        global_step=trainer.state.global_step,
        resumed_from=last,
        stopped_early=stopped_early,
        spec=asdict(spec),
        model=trainer.model,
        eval_history=eval_history,
    )
    env.write_whole(output_dir / "history.json", json.dumps(
        {"history": history, "eval_history": eval_history, "global_step": result.global_step, "runtime_s": runtime,
         "resumed_from": last, "stopped_early": result.stopped_early, "spec": result.spec}, indent=2))
    return result


HISTORY_KEYS = ("history", "global_step", "spec")  # what every history.json train writes holds


def check_history_file(output_dir: Path) -> None:
    """Stop, before training, when ``output_dir/history.json`` exists and is not one :func:`train` wrote
    (a JSON object with the keys ``HISTORY_KEYS``): the run would replace it at the end."""
    path = output_dir / "history.json"
    if not path.exists() and not path.is_symlink():
        return
    why = None
    if path.is_symlink() or not path.is_file():
        why = "is a link or not a plain file"
    else:
        try:
            saved = json.loads(path.read_bytes())
        except (ValueError, RecursionError) as err:
            why = f"is not JSON ({type(err).__name__}: {str(err)[:80]})"
        else:
            if not isinstance(saved, dict) or not all(k in saved for k in HISTORY_KEYS):
                why = f"is not a training history (no {', '.join(HISTORY_KEYS)} keys)"
    if why:
        raise FileExistsError(f"{path} {why}: it was not written by gemma_helpers.train and the run would replace it; "
                              "move it or choose another output_dir")


def checkpoint_problem(folder: Path) -> str | None:
    """Why the checkpoint folder ``folder`` cannot be resumed from, or None: its ``trainer_state.json`` is
    missing or not a trainer state, a ``*.safetensors`` file's header does not read, or a ``*.pt`` /
    ``*.pth`` / ``*.bin`` file (torch's zip archives) is not a whole zip archive. The problem names the file."""
    import zipfile

    from safetensors import safe_open

    state = folder / "trainer_state.json"
    try:
        if not isinstance(json.loads(state.read_bytes()).get("global_step"), int):
            return f"{state.name} has no global_step"
    except FileNotFoundError:
        return f"no {state.name}"
    except (OSError, ValueError, AttributeError, RecursionError) as err:
        return f"{state.name} does not read ({type(err).__name__}: {str(err)[:80]})"
    for path in sorted(folder.iterdir()):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as weights:
                    weights.keys()
            elif path.suffix in (".pt", ".pth", ".bin"):
                with zipfile.ZipFile(path) as archive:
                    broken = archive.testzip()
                if broken:
                    return f"{path.name} is damaged (entry {broken} fails its CRC check)"
        except Exception as err:  # safetensors raises its own SafetensorError; zipfile BadZipFile, OSError
            return f"{path.name} does not read ({type(err).__name__}: {str(err)[:80]})"
    return None


def resume_checkpoint(output_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` folder in ``output_dir`` that reads (:func:`checkpoint_problem`), or None.
    A newer one that does not read is named, with its problem, and passed over; the line printed says
    which checkpoint the run resumes from instead."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not output_dir.is_dir():
        return None
    steps = {}
    for path in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        number = path.name[len(PREFIX_CHECKPOINT_DIR) + 1:]
        if path.is_dir() and number.isdigit():
            steps[path] = int(number)
    passed = []
    for path in sorted(steps, key=steps.get, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            if passed:
                print(f"resume: passed over {'; '.join(passed)}; resuming from {path}", flush=True)
            return str(path)
        passed.append(f"{path} ({problem})")
    if passed:
        print(f"resume: no checkpoint reads ({'; '.join(passed)}); training from step 0", flush=True)
    return None


def _run(trainer, spec, last, evaluate, stopper, patience) -> tuple[list[dict], str | None, float]:
    """Train (and validate): the validation history, why training stopped early if it did, and
    the seconds training took."""
    eval_history = []
    if evaluate and last is None:
        eval_history.append({"step": 0, "eval_loss": trainer.evaluate()["eval_loss"]})
    started = time.time()
    if last and _finished(last):  # a run that already ended: transformers would train one step more
        _load_finished(trainer, last)
    else:
        trainer.train(resume_from_checkpoint=last)
    runtime = time.time() - started
    stopped_early = stopper.reason if stopper else None
    if evaluate:
        eval_history += [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in trainer.state.log_history
                         if "eval_loss" in h and h["step"] > 0]
        final = trainer.evaluate()["eval_loss"]  # the adapter returned: the best one when it was restored
        best = trainer.state.best_model_checkpoint
        eval_history.append({"step": trainer.state.global_step, "eval_loss": final, "final": True,
                             **({"best_checkpoint": Path(best).name} if best and patience else {})})
        if patience and trainer.state.global_step < trainer.state.max_steps:
            stopped_early = stopped_early or (
                f"step {trainer.state.global_step}: validation loss did not improve for "
                f"{spec.early_stopping_patience} evaluations; restored {Path(best).name if best else 'the best'} "
                f"(validation loss {trainer.state.best_metric:.4f})")
    return eval_history, stopped_early, runtime


def _finished(checkpoint: str) -> bool:
    """Whether ``checkpoint`` was written at the run's last step (its trainer state's global_step reached max_steps)."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    return 0 < state.get("max_steps", 0) <= state["global_step"]


def _load_finished(trainer, checkpoint: str) -> None:
    """The adapter weights and trainer state of a finished run's last checkpoint, loaded instead of training
    (a notebook run again after it finished, with its outputs kept on Drive)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState

    set_peft_model_state_dict(trainer.model, load_file(str(Path(checkpoint) / "adapter_model.safetensors")))
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    print(f"resume: {checkpoint} is the run's last step ({trainer.state.global_step}); its adapter is loaded, "
          f"nothing left to train", flush=True)


def dequantise_once(model, dtype: str) -> Callable:
    """On a CPU, each of bitsandbytes' frozen 4-bit layers is dequantised once, when training starts, to
    ``dtype`` (``"bfloat16"`` under bfloat16 autocast, else ``"float32"``), and computes with that copy
    until the returned undo is called. bitsandbytes' own CPU path dequantises every layer in float32
    twice per step (its forward kernel and its backward pass), and autocast does not reach the kernel.
    The weights are frozen, so the bits are those of a per-step dequantisation; the copy costs 2
    (bfloat16) or 4 (float32) bytes per weight while training: about 0.7 GB in float32 for the 270M.
    Returns the undo (nothing to undo for a model without 4-bit layers)."""
    import types

    import torch

    dense = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]

    def linear(self, x):
        weight = self._dense_weight
        if x.dtype == weight.dtype or torch.is_autocast_enabled(x.device.type):
            return torch.nn.functional.linear(x, weight, self.bias)
        # another dtype outside autocast (a stop_when check generating under bf16 training): x's dtype out
        bias = None if self.bias is None else self.bias.to(weight.dtype)
        return torch.nn.functional.linear(x.to(weight.dtype), weight, bias).to(x.dtype)

    layers = [m for m in model.modules() if getattr(getattr(m, "weight", None), "quant_state", None) is not None
              and hasattr(m, "compute_dtype")]
    if layers:  # bitsandbytes is imported only for a 4-bit model
        from bitsandbytes.functional import dequantize_4bit
    for m in layers:
        m._dense_weight = dequantize_4bit(m.weight.data, m.weight.quant_state).to(dense)
        m.forward = types.MethodType(linear, m)

    def restore():
        for m in layers:
            del m.forward, m._dense_weight

    return restore


def clear_previous_run(output_dir: Path) -> list[Path]:
    """Remove what an earlier :func:`train` wrote into ``output_dir`` and nothing else: its
    checkpoints (``checkpoint-N`` folders holding transformers' ``trainer_state.json``), its
    adapter folder (marked by ``META``) and ``history.json``. Anything else in the folder
    stays; an ``adapter`` or ``checkpoint-N`` folder that this code did not write stops the run
    before it starts. Returns what was removed."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not output_dir.is_dir():
        return []
    adapter = output_dir / "adapter"
    if adapter.exists() and not (adapter / META).is_file():
        raise FileExistsError(f"{adapter} exists and was not written by gemma_helpers.train (no {META}): "
                              "move it or choose another output_dir; the new adapter would be saved over it")
    ours = [p for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir()]
    foreign = [p.name for p in ours if not (p / "trainer_state.json").is_file()]
    if foreign:  # transformers rotates every checkpoint-N folder it finds (save_total_limit): it would delete them
        raise FileExistsError(f"{output_dir} holds {', '.join(foreign)}, not written by transformers' Trainer (no "
                              "trainer_state.json; perhaps a save that was cut off): move it or choose another output_dir")
    ours += [p for p in (adapter, output_dir / "history.json") if p.exists()]
    for path in ours:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return ours
