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
# # 02 · Persian conversations with QLoRA: clean data, answer-only labels, measured memory and speed, a true 16-bit merge
#
# **Question:** fine-tuning a 4-bit Gemma on Persian chat, does held-out perplexity on the *answers*
# drop, and what does it cost in memory and generation speed?
#
# The seed project (Gemma 3n E4B on `mshojaei77/persian-gk`) trained on user turns too, "cleaned" its
# data after formatting (a no-op), merged into a 4-bit base (which quantises again) and reported a
# speed table with no code behind it. Here every step is done and measured:
# 1. clean the conversations (Persian normalisation, empty turns, role order, exact and near
#    duplicates) with a report of what was dropped and why;
# 2. token-length statistics;
# 3. labels on every assistant turn and nothing else;
# 4. memory measured at each stage, the peak counter reset after loading;
# 5. generation speed, one prompt against a batch of 4, counting only tokens really generated;
# 6. the adapter merged into a full-precision base reloaded for the purpose, checked against the adapter;
# 7. answer perplexity on held-out conversations before and after training.
#
# It ends with those figures in `outputs/results/02_persian.json` and charts in `charts/02_persian_*`.

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
RECIPE = "persian"  # gemma_helpers/recipes.py: the seed's numbers, the T4's and the CPU's changes, each with its reason
OVERRIDES = {}  # any of its numbers, e.g. {"max_steps": 20} or {"data": "my_rows.jsonl"}
OUTPUT = "outputs/02_persian"

# %%
R = gh.recipes.get(RECIPE, **OVERRIDES)
print(R.table())  # every number of this run, and what this machine's profile changed from the seed's
gh.budget.show(2, R)  # what the GPU profile needs on a free T4, before anything heavy runs
MODEL, DATA, LOAD_IN_4BIT, HOLDOUT, MAX_NEW_TOKENS = R["model"], R["data"], R["load_in_4bit"], R["holdout"], R["max_new_tokens"]
spec = R.spec()
SAMPLING = {"temperature": R["temperature"], "top_p": R["top_p"], "seed": R["seed"]}  # the seed's sampling, seeded
out = gh.env.REPO_ROOT / OUTPUT

# %% [markdown]
# ## 1. Clean the conversations
# On the messages, before any formatting. Each turn is normalised (Arabic ي/ك to Persian ی/ک,
# Arabic-Indic digits to Persian ones, stray half-spaces and whitespace); then a row is dropped when
# it is empty, has an empty turn, has its roles out of order, or repeats an earlier row exactly or up
# to punctuation, spacing and diacritics. A system turn is folded into the first user turn, which is
# what Gemma's chat template does with it. The bundled sample has bad rows planted on purpose; its
# data card (`data/README.md`) lists them, and the report below must find exactly those.

# %%
from gemma_helpers.data import persian
from gemma_helpers.data.hub import load_hub_dataset

if DATA.endswith(".jsonl"):
    raw = gh.jsonl.read_jsonl(gh.env.REPO_ROOT / DATA, errors="raise")
else:
    raw = list(load_hub_dataset(DATA, split="train"))  # datasets.load_dataset(DATA, split="train")
rows, cleaning = persian.clean_conversations(raw)
print(cleaning)
for d in cleaning.dropped[:20]:
    print(f"  row {d['row']:>4}  {d['reason']:<18} {d['detail']}")

# %% [markdown]
# A row that is not a list of `{role, content}` is not a "bad row" to drop silently: it means the
# file is not in this schema, and the error names the row and the field.

# %%
try:
    persian.clean_conversations(rows[:3] + [{"messages": "سلام"}])
except gh.DataError as err:
    print("DataError:", err)

# %% [markdown]
# ## 2. Held-out split and token lengths

# %%
train_rows, heldout = persian.holdout_split(rows, HOLDOUT)  # evenly spaced over the file
questions = [r["messages"][0]["content"] for r in heldout[:4]]  # for the speed test and the merge check

# %%
from transformers import AutoTokenizer

tok = AutoTokenizer.from_pretrained(gh.models.resolve(MODEL)[0])
gh.models.prepare_tokenizer(tok)
lengths, tokens = gh.chat.token_length_stats(tok, rows)
print(f"{len(train_rows)} training and {len(heldout)} held-out conversations")
print("tokens per conversation:", {k: round(v, 1) for k, v in tokens.items()})
gh.plots.token_histogram(lengths, tokens, "02_persian_token_lengths.png",
                         title="طول گفتگوها به توکن", xlabel="توکن در هر گفتگو")

# %% [markdown]
# ## 3. What is trained on
# Labels are -100 everywhere except the assistant turns (each answer and the `<end_of_turn>` that
# closes it), in **every** turn of a multi-turn conversation. Below: a multi-turn row and exactly the
# text that carries a label.

# %%
multi = next(r for r in train_rows if sum(m["role"] == "assistant" for m in r["messages"]) >= 3)
example = gh.tokenize_rows(tok, [multi])[0]
trained = gh.chat.decode_labels(tok, example)
print("full text :", tok.decode(example["input_ids"]))
print("trained on:", trained)
assert trained == "".join(m["content"] + "<end_of_turn>\n" for m in multi["messages"] if m["role"] == "assistant")

# %% [markdown]
# ## 4. Load in 4-bit, attach LoRA, and measure memory at each stage
# The monitor takes a baseline now, marks the memory after loading and after attaching the adapter,
# then (as a trainer callback) resets the peak when training starts and reads it when it ends. On a GPU
# these are CUDA allocations; on CPU the process's resident memory, sampled every 10 ms. Optimiser state
# and gradients are counted exactly from their tensors; the rest of the training peak is activations.

# %%
from transformers import set_seed

mem = gh.memory_monitor()
model, tok = gh.load_model(MODEL, load_in_4bit=LOAD_IN_4BIT, max_seq_length=spec.max_seq_length)
mem.mark("loaded")
set_seed(spec.seed)  # LoRA's A matrices are drawn now
model = gh.attach_lora(model, r=spec.r, alpha=spec.alpha, dropout=spec.dropout,
                       target_modules=spec.target_modules, seed=spec.seed)
mem.mark("adapter")
trainable, total = gh.models.trainable_parameters(model)
print(f"trainable parameters {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")

# %% [markdown]
# ## 5. Perplexity of the held-out answers, before training

# %%
ppl_before = gh.evaluate.answer_perplexity(model, tok, heldout, spec.max_seq_length)
print(f"held-out answer perplexity before training: {ppl_before:.2f}")

# %% [markdown]
# ## 6. Train

# %%
run = gh.train(model, tok, train_rows, spec, out / "run", callbacks=[mem])
memory = mem.report()
print(f"{run.global_step} steps in {run.runtime_s:.0f} s; loss {run.losses[0][1]:.3f} -> {run.losses[-1][1]:.3f}")
print(gh.results.table({k: {"MB": v} for k, v in memory.items() if isinstance(v, float)}))
assert memory["training_added_mb"] > 0, "the training peak was not measured"

# %%
ppl_after = gh.evaluate.answer_perplexity(run.model, tok, heldout, spec.max_seq_length)
print(f"held-out answer perplexity: {ppl_before:.2f} before -> {ppl_after:.2f} after")
gh.plots.loss_curves({gh.plots.rtl("زیان آموزش") + " (train loss)": run.history}, "02_persian_loss.png",
                     title=gh.plots.rtl("آموزش روی گفتگوهای فارسی") + f"  ppl {ppl_before:.1f} -> {ppl_after:.1f}")

# %% [markdown]
# ## 7. Generation speed: one prompt at a time against a batch of 4
# The same 4 held-out questions, sampled with temperature 0.7 and top-p 0.95 from a fixed seed. Only
# tokens each answer really generated count (up to its end of turn), not the padding a finished row
# gets while the others in its batch go on; a short warm-up call is not timed.

# %%
single = gh.evaluate.generation_speed(run.model, tok, questions, batch_size=1, max_new_tokens=MAX_NEW_TOKENS, **SAMPLING)
batch4 = gh.evaluate.generation_speed(run.model, tok, questions, batch_size=4, max_new_tokens=MAX_NEW_TOKENS, **SAMPLING)
inference = {"single_tps": single["tokens_per_s"], "batch4_tps": batch4["tokens_per_s"],
             "single_tokens": single["generated_tokens"], "batch4_tokens": batch4["generated_tokens"],
             "single_s": single["seconds"], "batch4_s": batch4["seconds"], "max_new_tokens": MAX_NEW_TOKENS,
             **{k: SAMPLING[k] for k in ("temperature", "top_p", "seed")}}
print(gh.results.table({"one prompt at a time": {"tokens": single["generated_tokens"], "seconds": single["seconds"],
                                                 "tokens/s": single["tokens_per_s"]},
                        "batch of 4": {"tokens": batch4["generated_tokens"], "seconds": batch4["seconds"],
                                       "tokens/s": batch4["tokens_per_s"]}}))
for q, a in zip(questions, batch4["answers"]):
    print(f"  {q}\n    -> {a}")

# %% [markdown]
# ## 8. Merge into a 16/32-bit base reloaded for the purpose
# The adapter was trained against the 4-bit base. `gh.merge` reloads that base, dequantises it (the
# exact values the adapter saw) and merges in full precision, then saves the model with the tokenizer
# and chat template; merging into the 4-bit model, as the seed did, would quantise the sum again.
# The merged model must answer like the adapter (greedy) and score the same held-out perplexity. The
# adapter answers first; then the trained model is dropped before the merged one loads: two E4B copies
# (about 19 GB) do not fit a 15 GB T4 (`gh.budget.for_notebook(2)` counts both, section 8). On a T4 the
# merged E4B is loaded back in 4-bit, which quantises the merged weights again: small differences from
# the adapter's answers are expected there, and the perplexity is the check.

# %%
adapter_answers = gh.ask(run.model, tok, questions, max_new_tokens=MAX_NEW_TOKENS)
if R["merge"] == "merged_16bit":  # E4B in float32 does not fit a T4 or Colab's RAM: unsloth, shard by shard
    merged_dir = gh.merging.merge_16bit(run.model, tok, run.adapter_dir, out / "merged")  # save_pretrained_merged
else:  # "float32": dequantised and merged in float32
    merged_dir = gh.merge(run.adapter_dir, out / "merged")
model = run.model = None  # the trained model goes before the merged one loads
print(f"GPU memory still allocated: {gh.memory.release():.0f} MiB")
merged, merged_tok = gh.load_model(str(merged_dir), load_in_4bit=R["merged_in_4bit"])
merged_answers = gh.ask(merged, merged_tok, questions, max_new_tokens=MAX_NEW_TOKENS)
ppl_merged = gh.evaluate.answer_perplexity(merged, merged_tok, heldout, spec.max_seq_length)
merged_matches = adapter_answers == merged_answers
for q, a, b in zip(questions, adapter_answers, merged_answers):
    print(f"{'same' if a == b else 'DIFF'}  {q}\n      adapter: {a}\n      merged : {b}")
print(f"merged == adapter: {merged_matches}; held-out perplexity adapter {ppl_after:.3f}, merged {ppl_merged:.3f}")
print("saved with the tokenizer and its chat template:", sorted(p.name for p in merged_dir.iterdir()))

# %% [markdown]
# ## 9. The corpus at a glance

# %%
gh.plots.word_cloud([m["content"] for r in rows for m in r["messages"]], "02_persian_wordcloud.png",
                    title="واژه‌های پرتکرار گفتگوها")

# %% [markdown]
# ## Results

# %%
results = {
    "cleaning": {k: v for k, v in cleaning.as_dict().items() if k in ("rows_in", "rows_out", "removed", "fixed")},
    "cleaning_dropped": cleaning.dropped,
    "tokens": tokens,
    "ppl_before": ppl_before, "ppl_after": ppl_after, "ppl_merged": ppl_merged,
    "memory": memory,
    "inference": inference,
    "merged_matches_adapter": merged_matches,
    "train_rows": len(train_rows), "heldout_rows": len(heldout),
    "steps": run.global_step, "train_runtime_s": run.runtime_s,
    "loss_first": run.losses[0][1], "loss_last": run.losses[-1][1],
    "trainable_parameters": trainable,
    "model": MODEL, "data": DATA, "load_in_4bit": LOAD_IN_4BIT, "profile": gh.profile(), "spec": run.spec,
    "runtime_s": time.time() - T0,
}
path = gh.results.save("02_persian", results)
print(gh.results.table({"held-out answer perplexity": {"before": ppl_before, "after": ppl_after, "merged": ppl_merged},
                        "tokens/s (sampled)": {"single": inference["single_tps"], "batch of 4": inference["batch4_tps"]}}))
print(f"whole notebook: {results['runtime_s']:.0f} s | written to {path}")
gh.results.expect(ppl_after < ppl_before, "held-out perplexity did not drop")

# %% [markdown]
# ## Share it (optional)
# The adapter folder names its base by hub id and carries a model card with the recipe; the figures are
# added here. The push runs only when a token is configured (`HF_TOKEN` environment variable or Colab
# secret) and never in CI; the token is never printed.

# %%
gh.hub.write_card(run.adapter_dir, title=f"{MODEL} + QLoRA: Persian conversations", notebook="02_persian",
                  results=results, data=DATA, data_card=R["data_card"])
HUB_REPO = "your-name/gemma-persian-qlora"  # the repository to create or update
gh.hub.push_to_hub(run.adapter_dir, HUB_REPO)
