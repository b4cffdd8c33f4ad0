"""The Keras stack: Gemma 3 in KerasHub (Keras 3, torch backend) with ``enable_lora``.

The KerasHub LoRA recipe (``backbone.enable_lora(rank)``, AdamW with bias and scale excluded
from weight decay, sparse categorical cross-entropy from logits, ``fit``) run on the same
checkpoint the peft stack uses: KerasHub converts a transformers ``Gemma3ForCausalLM`` folder
(config.json + model.safetensors) itself, offline, from a local path.

What it cannot do without TensorFlow: KerasHub's Gemma 3 preprocessor and its SentencePiece
tokenizer layer run on tensorflow / tensorflow-text (keras-hub 0.32 declares tensorflow-text as
a hard dependency; it is installed here with ``--no-deps`` and the torch backend never imports
it). So the model is built with ``preprocessor=None`` and fed token ids made by the
checkpoint's own tokenizer (the transformers one in the same folder), exactly the ids the peft
stack sees. Keras must be imported with ``KERAS_BACKEND=torch``: :func:`import_keras` sets it.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from .chat import IGNORE_INDEX

INSTALL_HINT = "python -m pip install --no-deps -r requirements-keras.txt"


def import_keras():
    """``(keras, keras_hub)`` on the torch backend; an ImportError with the install line otherwise.

    Notebook 06, section 2."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
        import keras_hub
    except ImportError as exc:
        raise ImportError(f"the Keras stack is not installed ({exc}); install it with: {INSTALL_HINT}") from exc
    if keras.backend.backend() != "torch":
        raise RuntimeError(f"Keras was imported with the {keras.backend.backend()!r} backend; "
                           "set KERAS_BACKEND=torch before anything imports keras")
    return keras, keras_hub


def preprocessor_problem(preset: str) -> str | None:
    """Why KerasHub's own Gemma 3 preprocessor cannot be built here (its error text), or None.

    Notebook 06, section 2."""
    _, keras_hub = import_keras()
    try:
        keras_hub.models.Gemma3CausalLMPreprocessor.from_preset(str(preset))
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def preset(model_name: str) -> str:
    """KerasHub's preset for a registry name, hub id or folder: a local folder as it is (the embedded
    model, a copy under the hub mirror), a hub id as ``hf://<id>``.

    Notebook 06, section 2."""
    from pathlib import Path

    from .models import resolve

    path, _ = resolve(model_name)
    return path if Path(path).is_dir() else "hf://" + path


def load_causal_lm(preset: str):
    """``Gemma3CausalLM`` (no preprocessor) from a local transformers folder or an ``hf://`` preset.

    Notebook 06, section 2."""
    _, keras_hub = import_keras()
    backbone = keras_hub.models.Gemma3Backbone.from_preset(str(preset))
    return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)


def trainable_parameters(lm) -> tuple[int, int]:
    """(trainable, total) parameter counts of a Keras model.

    Notebook 06, section 2."""
    import numpy as np

    def count(weights):
        return int(sum(np.prod(w.shape) for w in weights))

    return count(lm.backbone.trainable_weights), count(lm.backbone.weights)


def compile_recipe(lm, learning_rate: float, weight_decay: float = 0.01, sampler="greedy"):
    """The tutorial's compile: AdamW (bias and scale not decayed), sparse categorical
    cross-entropy from logits, token accuracy. The loss is reduced as the mean over the tokens
    that carry weight (``mean_with_sample_weight``): the logged loss is a per-token mean and
    padding does not dilute it (the tutorial's default divides by every position, padding too).

    Notebook 06, section 2."""
    keras, _ = import_keras()
    optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["bias", "scale"])
    lm.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight"),
        optimizer=optimizer,
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
        sampler=sampler,
    )
    return lm


def pad(examples: Sequence[dict], length: int | None = None):
    """Right-padded ``token_ids``, ``padding_mask`` and ``answer_mask`` (labels that are not -100)."""
    import numpy as np

    length = length or max(len(ex["input_ids"]) for ex in examples)
    ids = np.zeros((len(examples), length), dtype="int32")
    mask = np.zeros((len(examples), length), dtype=bool)
    answer = np.zeros((len(examples), length), dtype=bool)
    for i, ex in enumerate(examples):
        n = min(len(ex["input_ids"]), length)
        ids[i, :n] = ex["input_ids"][:n]
        mask[i, :n] = True
        answer[i, :n] = [label != IGNORE_INDEX for label in ex["labels"][:n]]
    return ids, mask, answer


def fit(lm, examples: Sequence[dict], epochs: int = 1, batch_size: int = 1, verbose: int = 1) -> list[dict]:
    """``lm.fit`` on whole sequences, as the KerasHub tutorial trains (its preprocessor's
    ``sample_weight`` is the padding mask: instruction and response tokens alike); returns the
    loss per optimizer step, recovered from Keras's running epoch mean.

    Notebook 06, section 2."""

    keras, _ = import_keras()
    ids, mask, _ = pad(examples)
    steps: list[dict] = []

    class PerStep(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.prev, self.k = 0.0, 0

        def on_train_batch_end(self, batch, logs=None):
            self.k += 1
            mean = float(logs["loss"])
            steps.append({"step": len(steps) + 1, "loss": self.k * mean - (self.k - 1) * self.prev})
            self.prev = mean

    lm.fit(x={"token_ids": ids[:, :-1], "padding_mask": mask[:, :-1]}, y=ids[:, 1:],
           sample_weight=mask[:, 1:].astype("float32"), batch_size=batch_size, epochs=epochs,
           shuffle=False, verbose=verbose, callbacks=[PerStep()])
    return steps


def answer_loss(lm, examples: Sequence[dict]) -> float:
    """Mean negative log-likelihood per labelled (answer) token, pooled over ``examples``, run
    one at a time unpadded: the same figure :func:`gemma_helpers.evaluate.answer_loss` gives for a
    transformers model.

    Notebook 06, section 2."""
    import numpy as np
    import torch


    keras, _ = import_keras()
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            # inputs on Keras's device (the GPU where there is one), labels beside the logits
            ids = keras.ops.convert_to_tensor(np.array([ex["input_ids"]], dtype="int32"))
            logits = lm({"token_ids": ids, "padding_mask": keras.ops.ones_like(ids, dtype="bool")})
            labels = torch.tensor(ex["labels"][1:], device=logits.device)
            keep = labels != IGNORE_INDEX
            nll = torch.nn.functional.cross_entropy(logits[0, :-1][keep].float(), labels[keep], reduction="sum")
            total, count = total + float(nll), count + int(keep.sum())
    if not count:
        raise ValueError("no labelled token in the examples: nothing to measure")
    return total / count


def generator(lm, tokenizer, seed: int):
    """``generate(prompts, max_new_tokens, top_k)`` for notebook 06's measure: greedy when ``top_k`` is
    None, else KerasHub's ``TopKSampler(k=top_k, seed=seed)`` (the tutorial's sampler).

    Notebook 06, section 2."""
    _, keras_hub = import_keras()

    def run(prompts, max_new_tokens, top_k):
        sampler = keras_hub.samplers.TopKSampler(k=top_k, seed=seed) if top_k else "greedy"
        return generate(lm, tokenizer, prompts, max_new_tokens, sampler=sampler)

    return run


def generate(lm, tokenizer, prompts: Sequence[str], max_new_tokens: int = 24, sampler="greedy",
             batch_size: int = 8) -> list[str]:
    """Continuations of already-formatted prompts (starting with ``<bos>``) through KerasHub's
    ``generate_step`` with ``sampler`` (``"greedy"`` or a ``keras_hub.samplers`` instance such
    as ``TopKSampler(k=5, seed=2)``); stops at ``<eos>`` / ``<end_of_turn>``; prompt excluded."""
    import numpy as np
    import torch


    keras, keras_hub = import_keras()
    lm.sampler = keras_hub.samplers.get(sampler) if isinstance(sampler, str) else sampler
    stops = [i for i in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")) if i is not None]
    outputs = []
    for start in range(0, len(prompts), batch_size):
        batch = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[start : start + batch_size]]
        examples = [{"input_ids": ids, "labels": [IGNORE_INDEX] * len(ids)} for ids in batch]
        ids, mask, _ = pad(examples, max(map(len, batch)) + max_new_tokens)
        with torch.no_grad():
            out = lm.generate_step({"token_ids": keras.ops.convert_to_tensor(ids),  # on Keras's device
                                    "padding_mask": keras.ops.convert_to_tensor(mask)}, stop_token_ids=stops)
        out_ids = keras.ops.convert_to_numpy(out["token_ids"])
        out_mask = keras.ops.convert_to_numpy(out["padding_mask"])
        for row, prompt_ids in enumerate(batch):
            # a shorter prompt in the batch has room for more: keep max_new_tokens, as transformers does
            new = [int(t) for t, m in zip(out_ids[row, len(prompt_ids):], out_mask[row, len(prompt_ids):]) if m]
            new = new[:max_new_tokens]
            cut = next((j for j, t in enumerate(new) if t in stops), len(new))
            outputs.append(tokenizer.decode(np.array(new[:cut]), skip_special_tokens=True).strip())
    return outputs
