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
# # 04 · Action recognition from video frames: LoRA on a multimodal Gemma's language layers
#
# **Question:** given 4 evenly spaced frames of a clip, can a LoRA adapter on the *language* layers of
# a multimodal Gemma (vision tower and projector frozen) learn to name the action, on clips it never saw?
#
# The seed project trained Gemma 4 E4B this way on 3,115 Kinetics clips and reported a train loss of
# 14.45, above ln(262144) = 12.5 for a model that knows language: a logging or masking bug, and it had
# no held-out evaluation. Here:
# - labels cover the answer only (prompt, image placeholder tokens and padding are -100), checked by decoding;
# - the logged loss is the mean per-token loss (the tests check it against a hand computation with
#   gradient accumulation 8);
# - clips are split into train and held-out **by clip**, and held-out exact match / token F1 are measured
#   before and after training;
# - the same adapter then answers the held-out questions with frames from *other* held-out clips: if its
#   answers come from the frames, its score falls back to the most-common-answer bar. The last cell says, from
#   the measured figures, whether that was shown.
#
# On a GPU it trains the real `google/gemma-4-e4b-it` (4-bit, unsloth) on clips you supply. On CPU (CI) it
# writes synthetic clips of moving shapes with PyAV and trains a tiny random-weight
# `Gemma3ForConditionalGeneration` with a real `Gemma3Processor` (why not Gemma 4 there: see
# `gemma_helpers.vision.tiny_vision_model`). Results go to `outputs/results/04_frames.json`.

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
from gemma_helpers import evaluate, offline, vision
from gemma_helpers.chat import IGNORE_INDEX, VisionCollator
from gemma_helpers.data import frames

# %% tags=["parameters"]
CLIPS_DIR = None  # GPU: a folder with clips/*.mp4 and annotations.csv (clip,answer), see below; None: synthetic clips
RECIPE = "frames"  # gemma_helpers/recipes.py: the seed's numbers (bear7066/gemma4-FT) and the CPU's changes
OVERRIDES = {}  # any of its numbers, e.g. {"max_steps": 40} or {"model": "gemma-3n-e4b-it"}
OUTPUT = "outputs/04_frames"

# %%
R = gh.recipes.get(RECIPE, **OVERRIDES)
print(R.table())  # every number of this run, and what this machine's profile changed from the seed's
gh.budget.show(4, R)  # what the GPU profile needs on a free T4, before anything heavy runs
MODEL, N_FRAMES, FRAME_SIZE, HELDOUT, MAX_NEW_TOKENS = R["model"], R["n_frames"], R["frame_size"], R["heldout"], R["max_new_tokens"]

# %% [markdown]
# ## Data
# **Your own clips (GPU).** Put the videos in `CLIPS_DIR/clips/` and a `CLIPS_DIR/annotations.csv` with
# columns `clip,answer` (file name, the action or caption to learn). For Kinetics, download a split with the
# CVDF download scripts (`github.com/cvdfoundation/kinetics-dataset`: `k400_downloader.sh` then
# `k400_extractor.sh`), and write one row per clip with its class label (or a caption) as the answer.
#
# **Synthetic clips (CPU).** One white shape (square or circle) per clip starts near the centre and moves
# left, right, up or down, grows or shrinks; 12 frames at 64x64, written as MPEG-4 with PyAV. The action is
# the answer. One colour for all: under the tiny model's *random* vision tower a change of colour moves the
# image features more than the motion does (measured on the seed's clips: a nearest-centroid readout of the
# frozen features of 4 frames tells the 6 actions apart in 36% of clips with four colours, 92% with one),
# and a few dozen training clips cannot teach an adapter to look past it. On CPU: 24 clips per action, a
# third of them held out (96 train, 48 held out: enough for an interval, see below).
#
# Either way, `frames.build_rows` samples 4 evenly spaced frames per clip, writes them as JPEGs, and
# builds rows in the seed's format; a clip that cannot be decoded or is too short is named and skipped.

# %%
root = gh.env.REPO_ROOT
out = root / OUTPUT
if CLIPS_DIR:
    clips, clip_source = frames.clips_from_csv(CLIPS_DIR), str(CLIPS_DIR)
else:
    clips, clip_source = offline.synthetic_clips(out / "clips", per_action=R["clips_per_action"], seed=0), frames.SYNTHETIC
    print("CLIPS_DIR is None: synthetic moving-shape clips; the accuracy below checks the pipeline, not real "
          "actions (on a GPU, set CLIPS_DIR in the parameters cell to a folder of your clips).")
rows, skipped = frames.build_rows(clips, out, n=N_FRAMES, size=FRAME_SIZE)
train_rows, heldout_rows = frames.split_by_clip(rows, heldout=HELDOUT, seed=0)
print(f"{len(rows)} clips ({len(skipped)} skipped) -> {len(train_rows)} train, {len(heldout_rows)} held out")
print("a row:", train_rows[0]["messages"])


def load_images(row):
    return frames.load_images(row, out)


# %% [markdown]
# ## Model, and what is trained on
# The collator renders the prompt exactly as generation will see it (the template's generation prompt,
# thinking off) and appends the answer and its end-of-turn token; only those carry labels. Gemma 3 / 3n
# get `token_type_ids` (which tokens are image placeholders), which they need in training.

# %%
model, processor = vision.load_vision_model(MODEL)
collate = VisionCollator(processor, load_images)
batch = collate(train_rows[:2])
tok = processor.tokenizer
for i in range(2):
    labels = batch["labels"][i]
    print(f"row {i}: {int(batch['attention_mask'][i].sum())} tokens, "
          f"{int((batch['input_ids'][i] == tok.image_token_id).sum())} image placeholders, "
          f"{int((labels != IGNORE_INDEX).sum())} labelled: {tok.decode(labels[labels != IGNORE_INDEX])!r}")
print("batch keys:", sorted(batch))

# %% [markdown]
# ## Before training: held-out clips

# %%
references = [frames.answer_of(r) for r in heldout_rows]
before_answers = evaluate.answer_rows(model, processor, heldout_rows, load_images, MAX_NEW_TOKENS)
before = evaluate.action_scores(before_answers, references)
print(f"held-out exact match {before['exact_match']:.2f}, token F1 {before['token_f1']:.2f} on {before['n']} clips")
print("first answers:", before_answers[:3])

# %% [markdown]
# ## Train
# LoRA r=16, alpha 32, dropout 0.05 on q/k/v/o/gate/up/down of the text layers only (a regular expression
# over module names: the vision tower has q/k/v projections of its own). On a GPU: the seed's batch 1 x
# accumulation 8, 3 epochs, lr 2e-4 cosine, paged AdamW 8-bit, bf16 where available (never fp16).
#
# Reading the loss: for a pretrained model a mean per-token loss above ln(262144) = 12.5 is a bug (the
# seed's 14.45). The CPU model is *random*: its logits are noise of some spread, which costs more than a
# uniform guess, so its first loss can be above 12.5; what matters is that it falls.

# %%
spec = R.spec()
run = gh.train(model, processor, train_rows, spec, out / "run", data_collator=collate)
check = vision.vision_report(run.model)
losses = [loss for _, loss in run.losses]
print(f"{run.global_step} steps in {run.runtime_s:.0f} s; loss {losses[0]:.3f} -> {losses[-1]:.3f}")
print(f"trainable parameters {check['trainable_params']:,}; vision tower and projector frozen: {check['frozen_vision']}; "
      f"LoRA outside the language model: {check['lora_outside_language_model']}")
assert check["frozen_vision"] and not check["lora_outside_language_model"]

# %% [markdown]
# ## After training: the same held-out clips
# Compare with the bar a model reaches without looking at the frames: always giving the most common
# training answer. On CPU the vision tower and projector are *random* and frozen, so the adapter must
# learn to read the clips from random features within 400 steps (`recipes.py` shows the sweep: 200 steps
# stopped at about 0.33 to 0.54); a score at that bar means it learned
# the answer format and vocabulary, not the motion. The real checkpoint's vision tower is trained.
#
# Each exact match carries a 95 % bootstrap interval over the held-out clips (the clips resampled with
# replacement, `evaluate.bootstrap_ci`): with 48 clips one answer moves the score by 0.02, and the interval
# says how far chance alone would move it. The verdict at the end stands on the intervals, not the points.

# %%
after_answers = evaluate.answer_rows(run.model, processor, heldout_rows, load_images, MAX_NEW_TOKENS)
after = evaluate.action_scores(after_answers, references)
lo, hi = after["exact_match_ci"]
print(f"held-out exact match {before['exact_match']:.2f} -> {after['exact_match']:.2f} [{lo:.2f}, {hi:.2f}], "
      f"token F1 {before['token_f1']:.2f} -> {after['token_f1']:.2f}")
# the bar a model that ignores the frames can reach: always give the most common training answer
train_answers = [frames.answer_of(r) for r in train_rows]
majority = max(sorted(set(train_answers)), key=train_answers.count)
baseline = evaluate.action_scores([majority] * len(references), references)
print(f"always answering {majority!r}: exact match {baseline['exact_match']:.2f} "
      f"[{baseline['exact_match_ci'][0]:.2f}, {baseline['exact_match_ci'][1]:.2f}], token F1 {baseline['token_f1']:.2f}")
for ref, ans in list(zip(references, after_answers))[:6]:
    print(f"  {ref:>14} <- {ans!r}")

# %% [markdown]
# ## Ablation: the same adapter, frames from other clips
# A model that answers from the prompt alone would keep its score when the frames change. Here every
# held-out clip gets the frames of another held-out clip (one random cycle through them, so none keeps
# its own), with the same question and the same reference answer. If the answers come from the frames,
# the score falls back to about the most-common-answer bar, and the answers name the *other* clip's action.

# %%
swapped_rows = frames.swap_frames(heldout_rows, seed=0)
ablated_answers = evaluate.answer_rows(run.model, processor, swapped_rows, load_images, MAX_NEW_TOKENS)
ablated = evaluate.action_scores(ablated_answers, references)
answer_of_clip = {r["clip"]: frames.answer_of(r) for r in heldout_rows}
follows = evaluate.action_scores(ablated_answers, [answer_of_clip[r["frames_from"]] for r in swapped_rows])
print(f"frames from other clips: exact match {ablated['exact_match']:.2f} against the clip's own answer, "
      f"{follows['exact_match']:.2f} against the answer of the clip the frames came from")

# %%
gh.plots.loss_curves({f"LoRA r={spec.r} on the language layers": run.history}, "04_frames_loss.png",
                     title="Frames -> action: training loss (mean per answer token)")
gh.plots.grouped_bars({"before": {"exact match": before["exact_match"], "token F1": before["token_f1"]},
                       "after": {"exact match": after["exact_match"], "token F1": after["token_f1"]},
                       "frames from other clips": {"exact match": ablated["exact_match"], "token F1": ablated["token_f1"]},
                       "most common answer": {"exact match": baseline["exact_match"], "token F1": baseline["token_f1"]}},
                      "04_frames_heldout.png", title=f"Held-out clips ({after['n']}), greedy answers",
                      ylabel="score", ylim=(0, 1.05))

# %% [markdown]
# ## Scale-out: several GPUs
# The same `gh.train` call runs data-parallel under `accelerate`; the Trainer reads the launch.
# `configs/accelerate_multi_gpu.yaml` selects DeepSpeed ZeRO-2 with `configs/ds_zero2.json` (optimizer
# states and gradients sharded, as in the seed; `auto` values come from the `TrainSpec`):
#
# ```
# pip install deepspeed
# accelerate launch --config_file configs/accelerate_multi_gpu.yaml --num_processes 4 my_train.py
# ```
# where `my_train.py` holds the cells of this notebook from *Data* to *Train*. Without DeepSpeed,
# `accelerate launch --num_processes N my_train.py` gives plain DDP. With N processes the effective batch is
# N x batch x accumulation: divide the accumulation by N to keep the seed's effective batch of 8.
# Neither is run in CI (it has no GPU).

# %% [markdown]
# ## Results

# %%
results = {
    "loss_first": losses[0], "loss_last": losses[-1],
    "heldout_accuracy_before": before["exact_match"], "heldout_accuracy_after": after["exact_match"],
    "heldout_token_f1_before": before["token_f1"], "heldout_token_f1_after": after["token_f1"],
    "heldout_accuracy_after_ci": after["exact_match_ci"],
    "heldout_accuracy_majority_answer": baseline["exact_match"], "heldout_accuracy_majority_answer_ci": baseline["exact_match_ci"],
    "heldout_accuracy_frames_ablated": ablated["exact_match"], "heldout_accuracy_frames_ablated_ci": ablated["exact_match_ci"], "heldout_ablation": "frames of another held-out clip",
    "heldout_ablated_follows_frames": follows["exact_match"], "heldout_answers_frames_ablated": ablated_answers,
    "heldout_clips": after["n"], "train_clips": len(train_rows), "skipped_clips": [s.clip for s in skipped],
    "trainable_params": check["trainable_params"], "frozen_vision": check["frozen_vision"],
    "steps": run.global_step, "train_runtime_s": run.runtime_s,
    "heldout_answers_after": after_answers, "heldout_references": references,
    "clips": clip_source, "model": MODEL, "profile": gh.profile(), "runtime_s": time.time() - T0,
}
path = gh.results.save("04_frames", results)
print(gh.results.summary_table(results))
print(f"whole notebook: {results['runtime_s']:.0f} s | written to {path}")

# %%
shown, sentence = frames.verdict(after["exact_match"], after["exact_match_ci"], baseline["exact_match"],
                                 baseline["exact_match_ci"], ablated["exact_match"], after["n"], clip_source)
print(sentence)
