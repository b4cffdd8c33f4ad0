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
# GEMMA_REPO_URL): the cell clones it and installs the pinned stack, keeping Colab's torch.
# Anywhere else it only imports gemma_helpers and reports the environment.
import os
import subprocess
import sys
import time

T0 = time.time()
REPO_URL = ""  # @param {type:"string"}
REPO = "/content/gemma-lora-notebooks"
if "google.colab" in sys.modules:
    REPO_URL = REPO_URL.strip() or os.environ.get("GEMMA_REPO_URL", "").strip()
    HOW = "Set REPO_URL in this cell (or the environment variable GEMMA_REPO_URL) to this repository's git URL and run it again."
    if not os.path.isdir(f"{REPO}/gemma_helpers"):
        if not REPO_URL:
            raise SystemExit(f"No repository URL. {HOW}")
        clone = subprocess.run(["git", "clone", "-q", "--depth", "1", REPO_URL, REPO], capture_output=True, text=True)
        if clone.returncode != 0:
            raise SystemExit(f"git clone {REPO_URL} failed: {clone.stderr.strip()}\n{HOW}")
    sys.path.insert(0, REPO)
    from gemma_helpers import env

    env.colab_install(REPO)

import gemma_helpers as gh

gh.report();

# %% tags=["parameters"]
MODEL = None  # None: "gemma-3n-e4b-it" on a GPU (the seed's model), the embedded "gemma-3-270m" on CPU
DATA = None  # None: the hub's "mshojaei77/persian-gk" on a GPU, the bundled "data/persian_chat.jsonl" on CPU
LOAD_IN_4BIT = True  # the seed: FastModel.from_pretrained(..., load_in_4bit=True)
HOLDOUT = None  # held-out conversations for perplexity; None: 200 on a GPU, 6 on CPU

# The seed recipe (mshojaei77, Gemma3N_(4B)_Persian.ipynb): LoRA on the MLP only
# (finetune_mlp_modules=True, attention off), r=8, alpha 16, dropout 0; SFTConfig below.
SEED = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ("gate_proj", "up_proj", "down_proj"),
        "learning_rate": 2e-5, "lr_scheduler": "linear", "epochs": 1, "batch_size": 2, "grad_accum": 4,
        "warmup_steps": 10, "weight_decay": 0.01, "optim": "adamw_8bit", "seed": 3407, "max_seq_length": 4000}
# GPU profile (a T4, 15 GB): the seed's batch 2 x 4000 tokens does not fit. Estimate for Gemma 3n E4B's
# text stack (Gemma3nTextConfig: 35 layers, hidden 2048, 4 AltUp streams, MLP 16384, vocabulary 262,400),
# 4 bytes per float32 activation (unsloth trains Gemma 3n in float32 on a T4: no bf16):
#   weights: 3.94e9 linear parameters in NF4 (~0.52 byte each) = 2.0 GB, plus 2.90e9 embedding parameters
#     (embed_tokens 262400 x 2048, per-layer embeddings 262144 x 8960) that bitsandbytes does not quantise:
#     5.8 GB in 16-bit, 11.6 GB if held in float32;
#   logits and their gradient: 2 x batch x tokens x 262400 x 4 B = 16.8 GB at 2 x 4000 (the seed) alone;
#   checkpointed layer inputs: 35 x 4 streams x batch x tokens x 2048 x 4 B = 9.2 GB at 2 x 4000;
#   one layer recomputed (MLP 16384 wide, ~4 tensors): batch x tokens x 16384 x 16 B = 2.1 GB at 2 x 4000.
# At 1 x 1024 (below): logits 2.1 GB + checkpoints 1.2 GB + one layer 0.3 GB + LoRA with AdamW 0.3 GB
#   + weights 7.8 GB (16-bit embeddings) = ~11.7 GB, under 15 GB; with float32 embeddings it would be
#   ~17.5 GB, which does not fit: that case is not measured (no GPU was at hand), so watch the memory
#   table of section 4 on the first run. Gradient accumulation 8 keeps the seed's 8 conversations per
#   step; rows longer than 1024 tokens are cut (section 2 prints the lengths).
T4 = {"batch_size": 1, "grad_accum": 8, "max_seq_length": 1024}
# CPU profile (2 cores, a few minutes): the seed runs 738 steps of 8 conversations at lr 2e-5; here
# 5 steps of 2 x 2 conversations (20 of the 64 training rows) fit the time, and in 5 steps 2e-5
# barely moves the weights, so the rate is 5e-4 with no warm-up (linear decay to 0); adamw_torch
# because bitsandbytes' 8-bit AdamW needs a GPU; 512 tokens is more than the longest bundled row.
CPU = {"learning_rate": 5e-4, "warmup_steps": 0, "grad_accum": 2, "max_steps": 5, "optim": "adamw_torch",
       "max_seq_length": 512}

SAMPLING = {"temperature": 0.7, "top_p": 0.95, "seed": 3407}  # the seed's reported sampling, fixed seed
MAX_NEW_TOKENS = None  # generated tokens per answer in the speed test; None: 128 on a GPU, 16 on CPU
OUTPUT = "outputs/02_persian"

# %%
cpu = gh.profile() == "cpu"
MODEL = MODEL or (gh.EMBEDDED if cpu else "gemma-3n-e4b-it")
DATA = DATA or ("data/persian_chat.jsonl" if cpu else "mshojaei77/persian-gk")
HOLDOUT = HOLDOUT or (6 if cpu else 200)
MAX_NEW_TOKENS = MAX_NEW_TOKENS or (16 if cpu else 128)
spec = gh.TrainSpec(**{**SEED, **(CPU if cpu else T4)}, save_steps=1000)
root = gh.env.REPO_ROOT
out = root / OUTPUT
print(f"model {MODEL} | data {DATA} | {'CPU profile' if cpu else 'GPU profile'}")
print(spec)

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

if DATA.endswith(".jsonl"):
    raw = gh.jsonl.read_jsonl(root / DATA, errors="raise")
else:
    raw = list(gh.rehearsal.load_hub_dataset(DATA, split="train"))  # datasets.load_dataset(DATA, split="train")
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
step = len(rows) // HOLDOUT
held_idx = set(range(0, step * HOLDOUT, step))
heldout = [r for i, r in enumerate(rows) if i in held_idx]
train_rows = [r for i, r in enumerate(rows) if i not in held_idx]
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
# The merged model must answer like the adapter (greedy) and score the same held-out perplexity.

# %%
if cpu:
    merged_dir = gh.merge(run.adapter_dir, out / "merged")
else:  # E4B dequantised to float32 does not fit a T4 or Colab's RAM: unsloth merges in 16-bit, shard by shard
    merged_dir = gh.export.merge_16bit(run.model, tok, run.adapter_dir, out / "merged")  # save_pretrained_merged
merged, merged_tok = gh.load_model(str(merged_dir), load_in_4bit=not cpu)
adapter_answers = gh.ask(run.model, tok, questions, max_new_tokens=MAX_NEW_TOKENS)
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
                  results=results, data=DATA, data_card="data/README.md" if cpu else None)
HUB_REPO = "your-name/gemma-persian-qlora"  # the repository to create or update
gh.hub.push_to_hub(run.adapter_dir, HUB_REPO)
