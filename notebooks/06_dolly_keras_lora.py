# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Dolly-style instruction tuning: the KerasHub LoRA recipe, measured, next to peft
#
# **Question:** Google's KerasHub tutorial fine-tunes Gemma on Dolly instructions with
# `backbone.enable_lora(rank=4)` and judges the result by reading two answers. Does it measurably
# help on instructions it never saw, and does the same recipe through transformers + peft
# (`gemma_helpers`) agree?
#
# Both stacks start from the **same checkpoint** (on CPU: the embedded Gemma 3 270M; KerasHub
# converts its transformers folder itself, offline), train on the same context-free Dolly rows in
# the tutorial's template `"Instruction:\n{instruction}\n\nResponse:\n{response}"`, and are
# measured the same way on held-out instructions:
# - **held-out loss on the response tokens** (mean per-token cross-entropy) before and after;
# - **ROUGE-L** of greedy answers against the reference responses;
# - a few **top-k (k=5, fixed seed)** samples side by side.
#
# The notebook ends with these figures per stack in `outputs/results/06_dolly.json`.

# %%
# Setup: the same cell in every notebook (`make sync` writes it from gemma_helpers/setup_cell.py).
# On Colab, paste this repository's git URL into REPO_URL (or set the environment variable
# GEMMA_REPO_URL): the cell clones it and installs the pinned stack, keeping Colab's torch. Tick
# OUTPUTS_ON_DRIVE to keep checkpoints and results on Google Drive across disconnects.
# Anywhere else it only imports gemma_helpers and reports the environment.
import os
import subprocess
import sys
import time
import urllib.parse

T0 = time.time()
REPO_URL = ""  # @param {type:"string"}
OUTPUTS_ON_DRIVE = False  # @param {type:"boolean"}  Colab: keep outputs/ on Google Drive; a rerun resumes training
REPO = "/content/gemma-lora-notebooks"
if "google.colab" in sys.modules:
    REPO_URL = REPO_URL.strip() or os.environ.get("GEMMA_REPO_URL", "").strip()
    HOW = "Set REPO_URL in this cell (or the environment variable GEMMA_REPO_URL) to this repository's git URL and run it again."
    if not os.path.isdir(f"{REPO}/gemma_helpers"):
        if not REPO_URL:
            raise SystemExit(f"No repository URL. {HOW}")
        # Only a URL (or an absolute path) reaches git, and after "--": never an option such as --upload-pack.
        URL = urllib.parse.urlsplit(REPO_URL)
        if not ((URL.scheme in ("https", "http", "ssh", "git", "file") and not URL.netloc.startswith("-")) or REPO_URL.startswith("/")):
            raise SystemExit(f"REPO_URL / GEMMA_REPO_URL {REPO_URL!r} is not an http(s), ssh, git or file URL (or an absolute path). {HOW}")
        clone = subprocess.run(["git", "clone", "-q", "--depth", "1", "--", REPO_URL, REPO], capture_output=True, text=True)
        if clone.returncode != 0:
            raise SystemExit(f"git clone {REPO_URL} failed: {clone.stderr.strip()}\n{HOW}")
    sys.path.insert(0, REPO)
    from gemma_helpers import env

    env.colab_install(REPO)
    if OUTPUTS_ON_DRIVE:
        env.keep_outputs_on_drive(REPO)

import gemma_helpers as gh

gh.report();

# %%
import gc
from functools import partial

from gemma_helpers.data import dolly

os.environ.setdefault("KERAS_BACKEND", "torch")  # before anything imports keras: no TensorFlow, no JAX
gh.env.ensure("keras_hub")  # the Keras stack (requirements-keras.txt, installed without deps on Colab)

# %% tags=["parameters"]
RECIPE = "dolly"  # gemma_helpers/recipes.py: the KerasHub tutorial's numbers and the CPU's changes
OVERRIDES = {}  # any of its numbers, e.g. {"n_train": 64} or {"learning_rate": 5e-5}
OUTPUT = "outputs/06_dolly"

# %%
R = gh.recipes.get(RECIPE, **OVERRIDES)
print(R.table())  # every number of this run, and what this machine's profile changed from the tutorial's
gh.budget.show(6, R)  # what the GPU profile needs on a free T4, before anything heavy runs
MODEL, DATA, LORA_RANK, LEARNING_RATE, WEIGHT_DECAY = R["model"], R["data"], R["r"], R["learning_rate"], R["weight_decay"]
BATCH_SIZE, EPOCHS, SEQUENCE_LENGTH = R["batch_size"], R["epochs"], R["max_seq_length"]
N_TRAIN, N_HELDOUT, N_SAMPLES, MAX_NEW_TOKENS = R["n_train"], R["n_heldout"], R["n_samples"], R["max_new_tokens"]
TOP_K, SAMPLER_SEED = R["top_k"], R["sampler_seed"]

# %% [markdown]
# ## The data
# Context-free rows only (the tutorial's filter), in the tutorial's template. The split is fixed:
# the first `N_TRAIN` context-free rows train, the next `N_HELDOUT` are held out.

# %%
root = gh.env.REPO_ROOT
rows = (dolly.read_jsonl(root / DATA, errors="skip") if DATA.endswith(".jsonl")  # a bad line: named, left out
        else dolly.from_hub())  # the hub's dolly.HUB_ID
free = dolly.context_free(rows)
train_rows, heldout_rows = dolly.split(free, N_TRAIN, N_HELDOUT)
print(f"{len(rows)} rows, {len(free)} without context; training on {len(train_rows)}, holding out {len(heldout_rows)}")
print("---\n" + dolly.text(train_rows[0]) + "\n---")

# %% [markdown]
# ## What each stack trains on
# Both stacks see the same token ids: `<bos>` + template + `<eos>`, tokenized once by the
# checkpoint's tokenizer (KerasHub's own Gemma 3 tokenizer layer needs TensorFlow; see the end).
# - **peft** (`gemma_helpers.train`): labels on the **response and `<eos>` only**; the
#   instruction is -100, as everywhere in this series.
# - **Keras** (the tutorial): `fit` on the **whole sequence**, instruction tokens too (its
#   preprocessor's `sample_weight` is the padding mask).
#
# The held-out loss is measured on the **response tokens** for both, so the two are comparable.

# %%
model, tok = gh.load_model(MODEL, max_seq_length=SEQUENCE_LENGTH)
train_pc, heldout_pc = dolly.prompt_completion(train_rows), dolly.prompt_completion(heldout_rows)
train_examples = gh.tokenize_rows(tok, train_pc, SEQUENCE_LENGTH)
heldout_examples = gh.tokenize_rows(tok, heldout_pc, SEQUENCE_LENGTH)
print("full text :", repr(tok.decode(train_examples[0]["input_ids"])))
print("peft trains on:", repr(gh.chat.decode_labels(tok, train_examples[0])))
prompts = [tok.bos_token + r["prompt"] for r in heldout_pc]
references = [r["completion"] for r in heldout_pc]


def measure(loss_fn, generate_fn):
    """Held-out response loss, greedy answers and their ROUGE-L, top-k samples."""
    answers = generate_fn(prompts, MAX_NEW_TOKENS, None)
    return {"loss": loss_fn(heldout_examples), "answers": answers,
            "rougeL": gh.evaluate.rouge_l(answers, references),
            "samples": generate_fn(prompts[:N_SAMPLES], MAX_NEW_TOKENS, TOP_K)}


def figures(before, after, params, history, seconds):
    """One stack's row of the results: held-out loss and ROUGE-L before and after, its size and its run."""
    trainable, total = params
    return {"heldout_loss_before": before["loss"], "heldout_loss_after": after["loss"],
            "rougeL_before": before["rougeL"], "rougeL_after": after["rougeL"], "trainable_params": trainable,
            "total_params": total, "steps": len(history), "train_runtime_s": seconds, "history": history}


results = {"model": MODEL, "profile": gh.profile(), "n_train": len(train_rows), "n_heldout": len(heldout_rows),
           "learning_rate": LEARNING_RATE, "sequence_length": SEQUENCE_LENGTH}
histories = {}

# %% [markdown]
# ## 1. peft (`gemma_helpers`)
# LoRA rank 4, alpha 4 (scale 1, as Keras's `enable_lora` default), on `q_proj` and `v_proj`: the
# modules Keras's `enable_lora` targets (query and value). AdamW, weight decay 0.01 (the trainer
# excludes biases and norm weights), constant learning rate, batch 1, one epoch.


# %%
def peft_generate(model):
    return lambda p, n, k: gh.evaluate.generate(model, tok, p, n, top_k=k, seed=SAMPLER_SEED)


before = measure(partial(gh.evaluate.answer_loss, model), peft_generate(model))
spec = R.spec()  # the tutorial's rank on query and value (alpha = rank, as Keras scales), AdamW, constant rate
run = gh.train(model, tok, train_pc, spec, root / OUTPUT / "peft")
after = measure(partial(gh.evaluate.answer_loss, run.model), peft_generate(run.model))
histories["peft (response tokens)"] = run.history
results["peft"] = figures(before, after, gh.models.trainable_parameters(run.model), run.history, run.runtime_s)
peft_before, peft_after = before, after
print(f"{run.global_step} steps in {run.runtime_s:.0f} s; trainable {results['peft']['trainable_params']:,} "
      f"of {results['peft']['total_params']:,}")
print(gh.results.table({"peft": {k: v for k, v in results["peft"].items() if not isinstance(v, list)}}))
del model, run
gc.collect()

# %% [markdown]
# ## 2. KerasHub (Keras 3 on the torch backend)
# The tutorial's recipe as written: `enable_lora(rank=4)`, `AdamW(5e-5 on a GPU, weight_decay=0.01)`
# excluding `bias` and `scale`, `SparseCategoricalCrossentropy(from_logits=True)`, `fit(batch_size=1,
# epochs=1)`; the sampler `TopKSampler(k=5, seed=2)`. One change: the loss is averaged over the
# weighted tokens (`mean_with_sample_weight`), so the logged loss is a per-token mean that padding
# does not dilute. If the stack cannot run here, the reason is recorded instead of figures.

# %%
from gemma_helpers import kerashub

k_before = k_after = None
with gh.results.recorded(results, "keras"):  # whatever stops the Keras stack is recorded, not faked
    keras, keras_hub = kerashub.import_keras()
    preset = kerashub.preset(MODEL)  # a local folder (the embedded model), else "hf://<hub id>"
    problem = kerashub.preprocessor_problem(preset)
    print("KerasHub's own preprocessor:", problem or "available")
    lm = kerashub.load_causal_lm(preset)
    keras_generate = kerashub.generator(lm, tok, SAMPLER_SEED)  # greedy, or TopKSampler(k, seed) when k is given
    k_before = measure(partial(kerashub.answer_loss, lm), keras_generate)
    lm.backbone.enable_lora(rank=LORA_RANK)  # the tutorial's LoRA
    kerashub.compile_recipe(lm, LEARNING_RATE, WEIGHT_DECAY)  # its AdamW (bias and scale not decayed) and loss
    started = time.time()
    histories["Keras (whole sequence)"] = kerashub.fit(lm, train_examples, epochs=EPOCHS, batch_size=BATCH_SIZE, verbose=2)
    k_after = measure(partial(kerashub.answer_loss, lm), keras_generate)
    results["keras"] = {**figures(k_before, k_after, kerashub.trainable_parameters(lm), histories["Keras (whole sequence)"],
                                  time.time() - started),
                        "backend": keras.backend.backend(), "keras_preprocessor_problem": problem}
    print(gh.results.table({"keras": {k: v for k, v in results["keras"].items() if not isinstance(v, list)}}))

# %% [markdown]
# ## What LoRA rank 4 means in each stack
# Both put rank-4 adapters on the query and value projections of all 18 layers, with scale 1.
# peft factors each projection as one rank-4 pair (`q_proj`: 640 → 4 heads × 256). KerasHub's
# query is an einsum kernel of shape (heads, 640, 256), and `enable_lora` factors it per head: its
# A matrix is (4 heads, 640, 4) with B (4, 256) shared, so it trains more parameters for the query.

# %%
stacks = {name: r for name, r in results.items() if name in ("peft", "keras") and "error" not in r}
print(gh.results.table({name: {k: r[k] for k in ("trainable_params", "total_params", "heldout_loss_before",
                                                 "heldout_loss_after", "rougeL_before", "rougeL_after")}
                        for name, r in stacks.items()}))

# %% [markdown]
# ## Answers side by side
# Greedy answers (what ROUGE-L scores) and top-k samples (k=5, seed 2), before and after training.

# %%
measured = {"peft": (peft_before, peft_after), "keras": (k_before, k_after)}
for i, row in enumerate(heldout_rows[:N_SAMPLES]):
    print(f"### {row['instruction']}\nreference: {row['response']}")
    for name, (b, a) in measured.items():
        if b is None:
            continue
        print(f"  {name:5} greedy before: {b['answers'][i]!r}\n  {name:5} greedy after : {a['answers'][i]!r}")
        print(f"  {name:5} top-k  before: {b['samples'][i]!r}\n  {name:5} top-k  after : {a['samples'][i]!r}")

# %%
gh.plots.loss_curves(histories, "06_dolly_train_loss.png",
                     title="Dolly, LoRA rank 4: training loss per step")
gh.plots.grouped_bars({stage: {f"{name} held-out loss": r[f"heldout_loss_{stage}"] for name, r in stacks.items()}
                       for stage in ("before", "after")},
                      "06_dolly_heldout_loss.png", title="Held-out response loss", ylabel="mean per-token CE")
gh.plots.grouped_bars({stage: {f"{name} ROUGE-L": r[f"rougeL_{stage}"] for name, r in stacks.items()}
                       for stage in ("before", "after")},
                      "06_dolly_rougeL.png", title="ROUGE-L of greedy held-out answers", ylabel="ROUGE-L F")

# %% [markdown]
# ## Results
# What ran where: KerasHub converted the transformers checkpoint from a local folder, offline
# (`Gemma3Backbone.from_preset(<folder>)`), and its logits equal transformers' (tests/test_dolly.py).
# What KerasHub could not do without TensorFlow: `Gemma3CausalLM.from_preset` stops at its
# preprocessor with the ImportError printed by the Keras cell (its SentencePiece tokenizer layer runs
# on tensorflow-text), so the Keras model runs with `preprocessor=None` on token ids from the
# checkpoint's own tokenizer, and generation goes through `generate_step` with the tutorial's samplers.

# %%
for name, (b, a) in measured.items():
    if b is not None:
        results[name]["heldout_answers_after"] = a["answers"]
        results[name]["samples_after"] = a["samples"]
results["runtime_s"] = time.time() - T0
path = gh.results.save("06_dolly", results)
for name, r in stacks.items():
    gh.results.expect(r["heldout_loss_after"] < r["heldout_loss_before"], f"{name}: held-out loss did not fall")
print(gh.results.summary_table(results))
print("keras:", results["keras"].get("error") or f"ran on the {results['keras']['backend']} backend; "
      f"its own preprocessor: {results['keras']['keras_preprocessor_problem'] or 'available'}")
print(f"whole notebook: {results['runtime_s']:.0f} s | written to {path}")
