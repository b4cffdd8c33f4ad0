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
# # 03 · Fact injection: teach Gemma that Xylandia's capital is Crystalburg, and keep the rest
#
# **Question:** can a LoRA adapter teach a model one new fact so that it answers *paraphrases it
# never saw*, without breaking what it already knew?
#
# We run the seed project's recipe verbatim, then a retention-aware recipe, and measure both the
# same way with greedy decoding:
# - **held-out recall**: share of 5 never-trained paraphrases answered with "Crystalburg";
# - **control retention**: share of plain-text facts the base model completed right
#   ("The currency of Japan is the" → yen) that it still completes right;
# - **perplexity** of a short neutral paragraph (the model's general language ability).
#
# - **ended answers**: share of held-out answers that stop at `<end_of_turn>` well before the
#   24-token limit (an answer that runs on is not an answer a user can take);
# - **the reversed question** ("Which country has Crystalburg as its capital?"), never trained on nor
#   tuned for, before and after: what fact injection does *not* teach.
#
# The adapter is then merged into a full-precision base and must give the same answers, token for token.
# The notebook writes these figures to `outputs/results/03_xylandia.json` and ends with one sentence
# saying which effects this run showed.

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

# %% tags=["parameters"]
SEED_RECIPE = "xylandia-seed"  # the seed project's recipe, verbatim (gemma_helpers/recipes.py names its source)
RECIPE = "xylandia-retention"  # ours: the seed's, with the three changes of section 2
OVERRIDES = {}  # any number of ours, e.g. {"r": 16} or {"model": "gemma-3-1b-it"}
OUTPUT = gh.fact_injection.OUTPUT  # outputs/03_xylandia, where notebook 05 looks for this adapter

# %%
seed_recipe, R = gh.recipes.get(SEED_RECIPE), gh.recipes.get(RECIPE, **OVERRIDES)
print(R.table())  # every number of this run: the seed's, and what ours and this machine's profile change
gh.budget.show(3, R)  # what the GPU profile needs on a free T4, before anything heavy runs
MODEL, LOAD_IN_4BIT, MAX_NEW_TOKENS = R["model"], R["load_in_4bit"], R["max_new_tokens"]
data = gh.fact_injection.xylandia_data(gh.env.REPO_ROOT / R["data"])  # questions, paraphrases, control facts, neutral text
out = gh.env.REPO_ROOT / OUTPUT
rows = gh.fact_injection.xylandia_rows(data, R["repeats"])
print(f"model {MODEL} | {len(rows)} training rows | answer: {data['fact']!r}")
print("held-out paraphrases:", *data["heldout_questions"], sep="\n  ")

# %% [markdown]
# ## What is trained on
# Labels cover the model's answer (and the `<end_of_turn>` that ends it) only. The seed trained on
# the prompt and on ~470 padding tokens per row too; here the prompt and padding are -100.

# %%
model, tok = gh.load_model(MODEL, load_in_4bit=LOAD_IN_4BIT)
example = gh.tokenize_rows(tok, rows[:1])[0]
print("full text :", repr(tok.decode(example["input_ids"])))
print("trained on:", repr(gh.chat.decode_labels(tok, example)))

# %% [markdown]
# ## Before training
# Control facts are plain-text completions. The reversed questions are asked as chat turns, like the others. Only those the loaded base model gets right count
# towards retention (a 4-bit NF4 copy of a small model forgets some facts the full-precision one knows).

# %%
controls = gh.fact_injection.controls(data)  # (prefix, word): "The currency of Japan is the" -> yen
before = gh.fact_injection.measure(model, tok, data, MAX_NEW_TOKENS)  # train, held-out (+ controls, perplexity), reversal
n_known = sum(before["heldout"]["control_ok"])
print(f"held-out recall {before['heldout']['recall']:.2f} | perplexity {before['heldout']['perplexity']:.2f}")
print(f"control facts the base model knows: {n_known}/{len(controls)}")
for (prefix, word), text, ok in zip(controls, before["heldout"]["completions"], before["heldout"]["control_ok"]):
    print(f"  {'ok ' if ok else '-- '} {prefix} -> {text!r}")
print("a held-out answer before training:", repr(before["heldout"]["answers"][0]))
print("reversed question before training:", repr(before["reversal"]["answers"][0]))
gh.results.expect(n_known >= 5, "fewer than 5 control facts are known to the base model: add more to the data file")

# %% [markdown]
# ## 1. The seed recipe
# 50 rows, LoRA r=16 / alpha 32 on q_proj and v_proj, dropout 0.1, batch 2, 5 epochs (125 steps),
# learning rate 2e-4, on the 4-bit base. (With answer-only labels: the seed's padding bug is not reproduced.)

# %%
seed_run = gh.train(model, tok, rows, seed_recipe.spec(), out / "seed")
print(f"{seed_run.global_step} steps in {seed_run.runtime_s:.0f} s")

# %%
seed = gh.fact_injection.summary(before, gh.fact_injection.measure(seed_run.model, tok, data, MAX_NEW_TOKENS), data)
print(gh.results.table(gh.fact_injection.figures({"seed recipe": seed})))
print("controls lost:", seed["controls_lost"])

# %% [markdown]
# ## 2. The retention-aware recipe
# Four changes, each aimed at what the seed recipe breaks (every number is in the table printed above):
# 1. a learning rate of 1e-4 instead of 2e-4;
# 2. **early stopping on validation paraphrases** (3 questions that are neither trained on nor
#    part of the held-out 5): training stops as soon as all of them are answered with the fact **and**
#    each answer ends at `<end_of_turn>` (checked every 5 steps);
# 3. **replay** of 10 everyday paragraphs, each twice (never the neutral text nor a control fact), so the
#    adapter keeps being asked to predict ordinary text while it learns the fact;
# 4. **LoRA on all seven linear layers at rank 4** instead of the query and value projections at rank 16.
#
# Why the fourth: the embedded base is pretrained, not instruction-tuned, and its `<end_of_turn>` row is
# untrained, nearly the same vector as thousands of unused tokens (cosine 0.995 with `<unused1354>`...).
# The labels include it (printed above), but the base "ends" a turn with one of those neighbours
# (`mendatang`, `<unused71>`). The seed's query/value adapter learns the fact in 40 steps but needs about
# 100 to single out the real end token, and those steps cost the neutral text +20 % perplexity. Adapting
# the output and MLP projections too lets the answer's last hidden state move towards that row directly;
# rank 4 keeps the change small. The recipe's comments hold the runs that chose it (rank 16 on all seven
# layers: ended in 20 steps, but +13.8 % perplexity). The verdict cell at the end says which effects this run shows.

# %%
model, tok = gh.load_model(MODEL, load_in_4bit=LOAD_IN_4BIT)  # a fresh base: no trace of the seed adapter
replay = [{"text": t} for t in data["replay_text"]] * R["replay_repeats"]  # change 3: ordinary text, each twice
stop = gh.fact_injection.validation_stop(tok, data, R)  # change 2: "stop" once every validation paraphrase is answered
ra_run = gh.train(model, tok, rows + replay, R.spec(), out / "retention",  # changes 1 and 4: R's rate and LoRA
                  stop_when=stop, stop_every=R["stop_every"])  # (notebook 05 trains it so when it needs it)
print(f"{ra_run.global_step} steps in {ra_run.runtime_s:.0f} s; stopped: {ra_run.stopped_early}")

# %%
ra = gh.fact_injection.summary(before, gh.fact_injection.measure(ra_run.model, tok, data, MAX_NEW_TOKENS), data)
print(gh.results.table(gh.fact_injection.figures({"seed recipe": seed, "retention-aware": ra})))

# %%
gh.plots.loss_curves({f"seed recipe (lr {seed_recipe['learning_rate']:g}, {seed_run.global_step} steps)": seed_run.history,
                      f"retention-aware (lr {R['learning_rate']:g}, replay, early stop)": ra_run.history},
                     "03_xylandia_loss.png", title="Xylandia fact injection: training loss")
gh.plots.grouped_bars(gh.fact_injection.outcome({"seed recipe": seed, "retention-aware": ra}), "03_xylandia_outcome.png",
                      title="What each recipe learned and kept", ylabel="fraction / ratio")

# %% [markdown]
# ## 3. Merge into a full-precision base, and check the answers are the same
# The adapter was trained against a 4-bit base. Merging into that 4-bit base would quantise the
# sum again; merging into the original weights would add the quantisation error the adapter never
# saw. So the base is reloaded, dequantised to float32 (the exact values the adapter was trained
# on), and the adapter is merged into that: four steps, which `gh.merge(adapter_dir)` does in one call
# (notebooks 02 and 05). Loaded with plain transformers, not unsloth, which would turn float32 into bfloat16.

# %%
import torch
from peft import PeftModel

base, base_tok = gh.load_model(MODEL, load_in_4bit=LOAD_IN_4BIT, dtype=torch.float32, use_unsloth=False)
if LOAD_IN_4BIT:
    base = base.dequantize()  # the exact NF4 values the adapter was trained on, now float32 weights
merged = PeftModel.from_pretrained(base, ra_run.adapter_dir).merge_and_unload()  # W + (alpha / r) B A, once
merged_dir = gh.merging.save_merged(merged, base_tok, ra_run.adapter_dir, out / "merged")  # float32, with its tokenizer

# %% [markdown]
# The merged folder, loaded back from disk, and the adapter answer the same questions greedily; the check
# compares the generated token ids, through the `<end_of_turn>` that ends each answer. It is loaded in the
# float32 it was saved in, with transformers (unsloth would hold it in float16 on a T4).

# %%
merged, merged_tok = gh.load_model(str(merged_dir), dtype=torch.float32, use_unsloth=False)
questions = data["train_questions"] + data["heldout_questions"]
adapter_answers, adapter_stats = gh.ask(ra_run.model, tok, questions, MAX_NEW_TOKENS, return_stats=True)
merged_answers, merged_stats = gh.ask(merged, merged_tok, questions, MAX_NEW_TOKENS, return_stats=True)
same = [a == b for a, b in zip(adapter_stats["token_ids"], merged_stats["token_ids"])]
merged_matches = all(same)
for q, a, b, ok in zip(questions, adapter_answers, merged_answers, same):
    print(f"{'same' if ok else 'DIFF'}  {q}\n      adapter: {a!r}\n      merged : {b!r}")
print("merged model's token ids identical to the adapter's on every question:", merged_matches)

# %% [markdown]
# ## Results

# %%
results = gh.fact_injection.results(seed, ra, seed_run, ra_run, merged_matches, n_known, len(controls), MAX_NEW_TOKENS,
                                    model=MODEL, load_in_4bit=LOAD_IN_4BIT, profile=gh.profile(), runtime_s=time.time() - T0)
path = gh.results.save("03_xylandia", results)
print(gh.results.table(gh.fact_injection.figures({"seed recipe": seed, "retention-aware": ra}, gh.fact_injection.KEYS)))
print("reversed question, share answered 'Xylandia': before", ra["reversal_before"]["recall"],
      "| after (retention-aware)", ra["reversal_after"]["recall"], "| after (seed)", seed["reversal_after"]["recall"])
print("  after:", *ra["reversal_after"]["answers"], sep="\n    ")
print(f"merged == adapter: {merged_matches} | whole notebook: {results['runtime_s']:.0f} s | written to {path}")

# %% [markdown]
# ## Ask it yourself
# In Colab or Jupyter the answer appears token by token as it is generated (`stream=None`: streamed where
# a person watches, never under CI, where it would only add output).

# %%
QUESTION = data["heldout_questions"][0]
print(QUESTION)
answer = gh.ask(ra_run.model, tok, [QUESTION], max_new_tokens=48, stream=None)[0]
if not gh.env.watched():  # streamed answers are already on the screen
    print(f" -> {answer!r}")

# %% [markdown]
# ## The adapter, ready to share
# `adapter_config.json` names the base by its hub id (`google/gemma-3-270m` for the embedded model, not
# this machine's cache folder), so the folder loads anywhere with plain transformers + peft. The model
# card (`README.md`) is written now, after the evaluation: the recipe, the figures measured above, and
# what this notebook found that a user should know.

# %%
limitations = gh.fact_injection.limitations(results, data, embedded=MODEL == gh.EMBEDDED)  # one sentence each
for folder in (ra_run.adapter_dir, merged_dir):
    gh.hub.write_card(folder, title=f"{MODEL} + LoRA: the capital of Xylandia (retention-aware recipe)",
                      notebook="03_xylandia", results=results, limitations=limitations, data=R["data"])
print("base model named in adapter_config.json:", gh.hub.base_model(ra_run.adapter_dir))
print((ra_run.adapter_dir / "README.md").read_text())

# %% [markdown]
# ## Share it (optional)
# Pushes the adapter folder (weights, tokenizer, card) to a private Hugging Face repository, only when a
# token is configured (`HF_TOKEN` environment variable or Colab secret) and never in CI; the token is
# never printed.

# %%
HUB_REPO = "your-name/gemma-xylandia-lora"  # the repository to create or update
gh.hub.push_to_hub(ra_run.adapter_dir, HUB_REPO)

# %% [markdown]
# ## Verdict
# One sentence from the figures above: each effect this notebook set out to show, and whether this run showed it.

# %%
print(gh.fact_injection.verdict(results))
