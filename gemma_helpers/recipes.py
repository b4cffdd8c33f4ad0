"""The recipe registry: every number a notebook, the training benchmark or a test trains with, once.

A :class:`Recipe` holds the seed project's run as published (``values``: model, data, LoRA,
training spec and the few other numbers its notebook needs, each with its source in a comment) and
the changes a profile needs, with their arithmetic: ``cpu`` (the 2-core CI machine), ``gpu`` (a
Colab T4, where the seed's run does not fit), ``bench`` (``benchmarks/train_throughput.py``) and
``rehearse`` (the ``gpu`` profile's run with its steps, generated tokens and scored rows cut, which
``python -m gemma_helpers rehearse`` runs on a CPU: the same code path in minutes).
A recipe may be a set of changes over another (``based_on``): our retention-aware Xylandia recipe
is the seed's with a lower rate, replay and a stop.

A notebook's parameters cell names a recipe and its overrides::

    RECIPE = "persian"
    OVERRIDES = {}  # e.g. {"max_steps": 20}
    R = gh.recipes.get(RECIPE, **OVERRIDES)  # the numbers for this machine's profile
    print(R.table())  # each number, and what the profile changed from the seed's
    spec = R.spec()   # the TrainSpec
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from .env import SEED
from .models import DEFAULT_TARGETS, EMBEDDED, LANGUAGE_TARGETS
from .vision import TINY_VISION

NEW = object()  # a number a recipe adds to the one it is based on
PROFILES = ("gpu", "cpu", "bench", "rehearse")
# The rehearse profile's cuts of a gpu-profile run: the code path is the point, not the figures
STEPS = 2  # optimizer steps per training run
NEW_TOKENS = 4  # generated tokens per answer
ROWS = 8  # rows scored by a loss or an accuracy over many rows


@dataclass(frozen=True)
class Recipe:
    """One named recipe: the seed's numbers and each profile's changes. The cell after each
    notebook's parameters prints it through :meth:`Run.table`."""

    name: str
    notebook: str
    source: str  # where the seed's numbers come from
    values: Mapping  # the seed's run (or, with based_on, the changes over that recipe)
    cpu: Mapping = field(default_factory=dict)  # changes for the CPU profile, each with its reason
    gpu: Mapping = field(default_factory=dict)  # changes for a Colab T4 where the seed's run does not fit
    bench: Mapping = field(default_factory=dict)  # changes for benchmarks/train_throughput.py
    # cuts of the gpu profile's run (applied over its changes): steps, tokens and rows, and what needs CUDA
    rehearse: Mapping = field(default_factory=dict)
    based_on: str | None = None


class Run(dict):
    """One recipe's numbers for one profile: a dict of every number, plus where each came from
    (each notebook's ``R = gh.recipes.get(RECIPE, **OVERRIDES)``)."""

    def __init__(self, recipe: Recipe, profile: str, values: dict, changed: dict):
        super().__init__(values)
        self.recipe, self.profile, self.changed = recipe, profile, changed

    def spec(self, **extra):
        """The :class:`~gemma_helpers.train.TrainSpec` of these numbers (LoRA and training keys)."""
        from .train import TrainSpec

        names = _spec_defaults()
        return TrainSpec(**{k: v for k, v in {**self, **extra}.items() if k in names})

    def table(self) -> str:
        """Every number, one per line, with the seed's value beside each one this profile changed."""
        width = max(map(len, self))
        based = f"{self.recipe.based_on} recipe" if self.recipe.based_on else "seed"
        over = " (the gpu profile's run, cut)" if self.profile == "rehearse" else ""
        lines = [f"recipe {self.recipe.name!r} ({self.recipe.source}), {self.profile} profile{over}:"]
        for key, value in self.items():
            note = ""
            if key in self.changed:
                was = self.changed[key]
                note = f"   (not in the {based})" if was is NEW else f"   ({based}: {was!r})"
            lines.append(f"  {key:<{width}} {value!r}{note}")
        return "\n".join(lines)


REGISTRY: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    """Add ``recipe`` to the registry under its name."""
    REGISTRY[recipe.name] = recipe
    return recipe


def get(name: str, profile: str | None = None, **overrides) -> Run:
    """``name``'s numbers for ``profile`` (default: this machine's, :func:`gemma_helpers.env.profile`),
    with ``overrides`` applied last. An unknown recipe or key is named with the ones there are; a
    training number of the wrong type or range (``learning_rate="2e-4"``, ``max_steps=-5``) raises
    :class:`ValueError` naming every such field, its value and what is allowed.
    Notebook 01, "Parameters" (and notebooks 02 to 06), ``benchmarks/train_throughput.py``, tests/conftest.py."""
    from .env import profile as machine_profile

    if name not in REGISTRY:
        raise KeyError(f"no recipe {name!r}; the registry has {', '.join(REGISTRY)}")
    profile = profile or machine_profile()
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r}: expected one of {PROFILES}")
    recipe = REGISTRY[name]
    if recipe.based_on:
        parent = get(recipe.based_on, profile)
        values, changed = dict(parent), dict(parent.changed)
        changed.update({k: parent.get(k, NEW) for k in recipe.values if k not in changed})
        values.update(recipe.values)
    else:
        values, changed = dict(recipe.values), {}
    defaults = _spec_defaults()  # a number the seed left at TrainSpec's default may change too
    # the rehearse profile is the gpu profile's changes, then its cuts
    layers = (recipe.gpu, recipe.rehearse) if profile == "rehearse" else (getattr(recipe, profile),)
    for key, value in {**{k: v for layer in layers for k, v in layer.items()}, **overrides}.items():
        if key not in values and key not in defaults:
            raise KeyError(f"recipe {name!r} has no number {key!r}; it has {', '.join(values)} and TrainSpec's fields")
        changed.setdefault(key, values.get(key, defaults.get(key)))
        values[key] = value
    from .train import spec_problems

    problems = spec_problems({k: v for k, v in values.items() if k in defaults})  # every one at once
    if problems:
        raise ValueError(f"recipe {name!r} ({profile} profile): {'; '.join(problems)}")
    return Run(recipe, profile, values, {k: v for k, v in changed.items() if v is NEW or values[k] != v})


def _spec_defaults() -> dict:
    from .train import TrainSpec

    return {f.name: f.default for f in fields(TrainSpec)}


SERIES = _spec_defaults()  # this series' own defaults (TrainSpec's), for a number the seed did not publish

# ---------------------------------------------------------------- notebook 01: papers
register(Recipe(
    "papers", "01_papers", "the seed's README: LoRA on attention and MLP, batch 1 with gradient accumulation, "
    "about 40 steps under early stopping; its rank, alpha and rate are not published (the notebook is missing "
    "from its repository), so they are this series' defaults (TrainSpec's)",
    values={
        "model": "gemma-3n-e4b-it",  # the seed's model, 4-bit multimodal Gemma used for text
        "load_in_4bit": True,
        "r": SERIES["r"], "alpha": SERIES["alpha"], "dropout": 0.0, "target_modules": DEFAULT_TARGETS,
        "batch_size": 1, "grad_accum": 4,  # the README: batch 1 with gradient accumulation
        "max_steps": 40, "eval_steps": 5, "early_stopping_patience": 3,  # "about 40 steps", early stopping
        "learning_rate": SERIES["learning_rate"], "warmup_steps": 2, "max_seq_length": 512, "seed": SEED,
        "save_steps": 1000,
        "paper_source": "arxiv",  # the seed's list: 22 arXiv papers across four fields (gp.ARXIV_PAPERS)
        "rows_per_paper": 40,  # arXiv papers are long: 40 passages each, spread over the paper
        "eval_items": {"train": 100, "validation": 100, "holdout": 100},  # items scored per split
    },
    cpu={
        "model": EMBEDDED,
        # CI has no internet: the bundled mini-papers as PDFs on 127.0.0.1 (gemma_helpers.paper_parts.paper_list)
        "paper_source": "sample",
        "rows_per_paper": None,  # the bundled mini-papers are short: every sentence
        # 16 of train and validation (a trend, in seconds), every holdout row (the verdict's rows)
        "eval_items": {"train": 16, "validation": 16, "holdout": None},
        "eval_batch_size": 8,  # the validation loss every 5 steps, 8 rows a batch (no gradients)
        # the training itself is unchanged: 40 steps of 4 short rows take about a minute on 2 cores
    },
    bench={
        "model": EMBEDDED,
        "batch_size": 4, "grad_accum": 1,  # throughput of one 4-row batch a step, the same rows per step as the seed
        "max_steps": -1, "eval_steps": 0, "early_stopping_patience": 0, "warmup_steps": 0,  # --steps sets the length
        "save_steps": 10_000,  # no checkpoint inside the timed steps
    },
    # a validation loss at every step (early stopping runs), 8 rows of each split scored
    rehearse={"max_steps": STEPS, "eval_steps": 1, "eval_items": {"train": ROWS, "validation": ROWS, "holdout": ROWS}},
))

# ---------------------------------------------------------------- notebook 02: Persian
register(Recipe(
    "persian", "02_persian", "mshojaei77, Gemma3N_(4B)_Persian.ipynb: FastModel.get_peft_model(finetune_mlp_modules"
    "=True, attention off, r=8, lora_alpha=16, lora_dropout=0) and its SFTConfig",
    values={
        "model": "gemma-3n-e4b-it", "data": "mshojaei77/persian-gk", "load_in_4bit": True,
        "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ("gate_proj", "up_proj", "down_proj"),
        "learning_rate": 2e-5, "lr_scheduler": "linear", "epochs": 1, "batch_size": 2, "grad_accum": 4,
        "warmup_steps": 10, "weight_decay": 0.01, "optim": "adamw_8bit", "seed": SEED, "max_seq_length": 4000,
        "save_steps": 1000,
        "holdout": 200,  # ours: held-out conversations for perplexity
        "max_new_tokens": 128,  # ours: tokens per answer in the generation speed test
        "temperature": 0.7, "top_p": 0.95,  # the seed's reported sampling (with the run's seed)
        # ours: E4B dequantised to float32 fits neither a T4 nor Colab's RAM: unsloth merges in 16-bit, shard by
        # shard (merging.merge_16bit), and the merged model is loaded back in 4-bit to be compared with the adapter
        "merge": "merged_16bit", "merged_in_4bit": True,
        "data_card": None,  # ours: the hub dataset carries its own card
    },
    # A T4 (15 GB): the seed's batch 2 x 4000 tokens does not fit. Estimate for Gemma 3n E4B's text stack
    # (Gemma3nTextConfig: 35 layers, hidden 2048, 4 AltUp streams, MLP 16384, vocabulary 262,400), 4 bytes
    # per float32 activation (unsloth trains Gemma 3n in float32 on a T4: no bf16):
    #   weights: 3.94e9 linear parameters in NF4 (~0.52 byte each) = 2.0 GB, plus 2.90e9 embedding parameters
    #     (embed_tokens 262400 x 2048, per-layer embeddings 262144 x 8960) that bitsandbytes does not quantise:
    #     5.8 GB in 16-bit, 11.6 GB if held in float32;
    #   logits and their gradient: 2 x batch x tokens x 262400 x 4 B = 16.8 GB at 2 x 4000 (the seed) alone;
    #   checkpointed layer inputs: 35 x 4 streams x batch x tokens x 2048 x 4 B = 9.2 GB at 2 x 4000;
    #   one layer recomputed (MLP 16384 wide, ~4 tensors): batch x tokens x 16384 x 16 B = 2.1 GB at 2 x 4000.
    # At 1 x 1024: logits 2.1 GB + checkpoints 1.2 GB + one layer 0.3 GB + LoRA with AdamW 0.3 GB + weights
    #   7.8 GB (16-bit embeddings) = ~11.7 GB, under 15 GB; with float32 embeddings ~17.5 GB, which does not
    #   fit: not measured (no GPU was at hand), so watch notebook 02's memory table on the first run.
    #   Gradient accumulation 8 keeps the seed's 8 conversations per step; longer rows are cut.
    # Time on a T4 (gemma_helpers.budget, float32 at ~35 % of 8.1 TFLOP/s, rows ~512 tokens): about 0.66 min
    #   a step of 8 conversations, so the seed's 738 steps (5,904 conversations) take ~8 h, past a free Colab
    #   session. Loading, the two perplexity passes over 200 conversations and the 16-bit merge take ~25 min;
    #   the 60-minute budget leaves ~35 min of training: 50 steps (400 conversations, a stated subset of the
    #   data set's first rows). In 50 steps the seed's 2e-5 would barely move the weights: 2e-4 (QLoRA's
    #   usual rate) with 5 warm-up steps. A checkpoint every 10 steps (~7 min) is what a disconnect can lose.
    gpu={"batch_size": 1, "grad_accum": 8, "max_seq_length": 1024, "max_steps": 50, "learning_rate": 2e-4,
         "warmup_steps": 5, "save_steps": 10},
    # 2 cores, a few minutes: the seed runs 738 steps of 8 conversations at 2e-5; here 5 steps of 2 x 2
    # conversations (20 of the 64 bundled training rows) fit the time, and in 5 steps 2e-5 barely moves
    # the weights, so 5e-4 with no warm-up (linear decay to 0); adamw_torch because bitsandbytes' 8-bit
    # AdamW needs a GPU; 512 tokens is more than the longest bundled row.
    cpu={"model": EMBEDDED, "data": "data/persian_chat.jsonl", "learning_rate": 5e-4, "warmup_steps": 0,
         "grad_accum": 2, "max_steps": 5, "optim": "adamw_torch", "max_seq_length": 512,
         "holdout": 6, "max_new_tokens": 16,  # 6 of the bundled conversations; 16 tokens keep it seconds
         "merge": "float32", "merged_in_4bit": False,  # the 270M merges and answers in float32 (gh.merge)
         "data_card": "data/README.md"},  # the bundled rows' card
    # throughput of one 4-conversation batch a step at the seed's rate; 1024 tokens as on the T4
    bench={"model": EMBEDDED, "data": "data/persian_chat.jsonl", "batch_size": 4, "grad_accum": 1,
           "learning_rate": 2e-4, "max_seq_length": 1024, "warmup_steps": 0, "weight_decay": 0.0,
           "optim": "adamw_torch", "epochs": 1, "save_steps": 10_000},
    # bitsandbytes' 8-bit AdamW runs CUDA kernels: adamw_torch; 8 held-out conversations for the perplexities
    rehearse={"max_steps": STEPS, "optim": "adamw_torch", "holdout": ROWS, "max_new_tokens": NEW_TOKENS},
))

# ---------------------------------------------------------------- notebook 03: Xylandia
register(Recipe(
    "xylandia-seed", "03_xylandia", "adityakumar-dev/Krishi-Sakha, notebook/testing/gemma_fine_tune.ipynb",
    values={
        "model": "gemma-3-1b-it", "data": "data/xylandia.json",
        "load_in_4bit": True,  # BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", double quant)
        "repeats": 10,  # 5 questions x 10 repetitions = 50 rows
        "r": 16, "alpha": 32, "target_modules": ("q_proj", "v_proj"), "dropout": 0.1,  # LoraConfig
        "batch_size": 2, "epochs": 5, "learning_rate": 2e-4,  # per_device_train_batch_size, num_train_epochs
        "save_steps": 50, "seed": SEED,
        "max_new_tokens": 24,  # ours: every greedy answer's limit; an answer that reaches it did not end
    },
    cpu={"model": EMBEDDED},  # the seed's 1B-it does not ship offline; its recipe runs unchanged
    bench={"model": EMBEDDED, "save_steps": 10_000},
    rehearse={"max_steps": STEPS, "max_new_tokens": NEW_TOKENS},  # the retention recipe inherits these cuts
))
register(Recipe(
    "xylandia-retention", "03_xylandia", "ours: the seed's rows, data and model with the changes below",
    based_on="xylandia-seed",
    values={
        "learning_rate": 1e-4,  # half the seed's rate
        "epochs": 5,  # an upper bound: training stops once the validation paraphrases are answered
        "stop_every": 5,  # check the validation paraphrases every 5 optimizer steps
        "replay_repeats": 2,  # general-text paragraphs mixed into the training rows, each twice
        # stop only once the validation answers also end at <end_of_turn> (False: on recall alone)
        "until_ended": True,
        # LoRA on all seven linear layers at rank 4, not the seed's q/v at 16: on the embedded 270M base
        # (4-bit, CPU, replay 2, lr 1e-4 unless said; 2026-11-24) the turn's end is what costs steps:
        #   q/v r16 (the seed's LoRA): recall in 40 steps, answers never end; with until_ended 95 steps,
        #     neutral-text perplexity +20 % (4 replay repeats: 115 steps, +36 %)
        #   all seven r16: recall and ended in 20 steps, +13.8 % (lr 5e-5: 45 steps, +12.0 %; replay 0 /
        #     1 / 4: +36 % / +18 % / +25 %); q/k/v/o r16: 45 steps, +18.7 %; q/v + the last 3 layers'
        #     down_proj r16: 65 steps, +17.3 %
        #   all seven r4 (alpha 8): 50 steps, recall 5/5, ended 4/5, controls 11/11, +9.3 %
        "r": 4, "alpha": 8, "target_modules": DEFAULT_TARGETS,
    },
))

# ---------------------------------------------------------------- notebook 05: export of notebook 03's adapter
register(Recipe(
    "xylandia-export", "05_export", "ours: the retention-aware adapter's recipe (its data and answer length) and "
    "what notebook 05 exports", based_on="xylandia-retention",
    values={"lora_stage": True},  # the adapter alone as a llama.cpp LoRA GGUF on its base, as a stage of its own
    cpu={"lora_stage": False},  # a base GGUF and a LoRA GGUF more: about a minute on 2 cores, left out of CI
))

# ---------------------------------------------------------------- notebook 04: frames
register(Recipe(
    "frames", "04_frames", "bear7066/gemma4-FT, config/lora_ft.py and its model card",
    values={
        "model": "gemma-4-e4b-it",  # the seed's ("gemma-3n-e4b-it" also works)
        "n_frames": 4, "frame_size": 336,  # 4 frames per clip at 336 x 336
        "heldout": 0.25,  # ours: share of clips held out, split by clip
        "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": LANGUAGE_TARGETS,  # text layers only
        "learning_rate": 2e-4, "lr_scheduler": "cosine", "warmup_steps": 10,  # warm-up ratio 0.03 of ~1,170 steps
        "batch_size": 1, "grad_accum": 8, "epochs": 3, "optim": "paged_adamw_8bit", "save_steps": 200,
        "save_total_limit": 2, "logging_steps": 1, "seed": SEED,
        "max_new_tokens": 12,  # ours: an action or a short caption
        "clips_per_action": 8,  # ours: synthetic clips per action (6 actions), CPU only
    },
    # A tiny random model learns from scratch, so a higher rate. 24 clips per action, a third held out: 96
    # training clips and 48 held out (8 per action), enough for an interval. Measured (2026-12-08, 2-core
    # Xeon, bf16 unless said; held-out exact match, bar 0.17 [0.06, 0.27]; training seeds 0 / 1 / 2):
    #   80 steps of 2 at lr 2e-2, 48 clips (the earlier recipe): 0.33 on 12 held-out clips, seed 0 only
    #   200 steps of 4 at lr 1e-2: 0.33 / 0.54 / 0.33 (36-44 s of training); r 64: 0.33 / 0.50
    #   400 steps of 4 at lr 1e-2: 1.00 / 1.00 / 0.77 [0.65, 0.88], frames of other clips 0.06 / 0.06 / 0.04
    #     (71-79 s of training); float32 forced (GEMMA_COMPUTE_DTYPE): 1.00 / 0.96 [0.90, 1.00], 0.06 / 0.06 (91-98 s)
    # so 400 steps: twice the time of 200 buys answers that read the frames on every seed and both paths tried.
    cpu={"model": TINY_VISION, "frame_size": 64, "learning_rate": 1e-2, "warmup_steps": 0, "batch_size": 4,
         "grad_accum": 1, "max_steps": 400, "optim": "adamw_torch", "save_steps": 1000,
         "clips_per_action": 24, "heldout": 1 / 3,
         "max_new_tokens": 4},  # CPU answers are 1-2 words and the end-of-turn token
    # the paged 8-bit AdamW runs CUDA kernels: adamw_torch
    rehearse={"max_steps": STEPS, "optim": "adamw_torch", "max_new_tokens": NEW_TOKENS},
))

# ---------------------------------------------------------------- notebook 06: Dolly on Keras and transformers
register(Recipe(
    "dolly", "06_dolly", "KerasHub's \"Fine-tune Gemma models in Keras using LoRA\" (as run in "
    "cyber-prags/Fine-Tuning-Gemma-model-using-LoRA)",
    values={
        "model": "gemma-3-1b-it", "data": "databricks/databricks-dolly-15k",
        # gemma_lm.backbone.enable_lora(rank=4): query and value of every attention layer (alpha = rank in Keras)
        "r": 4, "alpha": 4, "target_modules": ("q_proj", "v_proj"),
        "learning_rate": 5e-5, "weight_decay": 0.01,  # keras.optimizers.AdamW(learning_rate=5e-5, weight_decay=0.01)
        "lr_scheduler": "constant", "batch_size": 1, "epochs": 1,  # gemma_lm.fit(data, epochs=1, batch_size=1)
        "max_seq_length": 512,  # gemma_lm.preprocessor.sequence_length = 512
        "save_steps": 10**6,
        "n_train": 1000,  # data[:1000]: the first 1,000 context-free rows
        "top_k": 5, "sampler_seed": 2,  # keras_hub.samplers.TopKSampler(k=5, seed=2)
        "n_heldout": 100,  # ours: the tutorial has no held-out set; the next context-free rows after the training ones
        "max_new_tokens": 64,  # ours: greedy answers for ROUGE-L (the tutorial generates up to max_length=256)
        "n_samples": 2,  # ours: held-out instructions shown with top-k samples
    },
    # the CI machine: 2 cores, a 240 s budget for both stacks together
    cpu={"model": EMBEDDED, "data": "data/dolly_sample.jsonl",
         "n_train": 16, "n_heldout": 8,  # a handful of rows (the bundled sample has 64 context-free ones)
         "max_seq_length": 128,  # the bundled rows are 30-90 tokens: 512 would only add padding
         "max_new_tokens": 32,
         # 16 steps at 5e-5 barely move a rank-4 adapter (1,000 steps do in the tutorial): a 20x rate
         # gives the held-out loss a measurable change within the budget
         "learning_rate": 1e-3},
    # Keras's fit has no step limit: its rows are the steps (batch 1)
    rehearse={"max_steps": STEPS, "n_train": STEPS, "n_heldout": ROWS, "max_new_tokens": NEW_TOKENS},
))
