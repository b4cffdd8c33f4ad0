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
# # 00 · Install and environment
#
# **Question:** is this runtime set up the way the rest of the series expects?
# The notebook ends with one report: installed versions against the pins, Python, the GPU and its
# compute capability, bf16, 4-bit (bitsandbytes) support, and whether unsloth will be used.
#
# **The install order.** Two pinned files, with the *same* pins for every package they share
# (a unit test fails when they drift apart):
#
# | where | command | what it keeps |
# | --- | --- | --- |
# | Colab (T4) | the setup cell: `pip install -c colab-constraints.txt -r requirements-colab.txt` (the constraints pin Colab's installed torch, torchvision, torchaudio) then `pip install --no-deps -e .` | Colab's own CUDA torch; adds transformers 5.17.0, trl 1.15.0, peft, datasets 4.x, bitsandbytes, then unsloth 2026.10.7 (2026.10.8 and .9 need a certifi the package index lacks) |
# | local CPU venv / CI | `make setup` (= `pip install -r requirements-local.txt` then `pip install --no-deps -e .`) | torch 2.13.0 CPU build, the same Hugging Face pins, no unsloth |
#
# unsloth 2026.10.x caps transformers at 5.17.0 and trl at 1.15.0 and wants datasets below 5, so
# those are the pins everywhere. unsloth needs CUDA: `gemma_helpers` imports it only when a GPU is
# present, and falls back to transformers + peft otherwise.

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
REQUIREMENTS = None  # None: requirements-colab.txt on Colab, requirements-local.txt elsewhere

# %% [markdown]
# ## The report
# `profile` is `gpu` with a CUDA GPU and `cpu` otherwise (override with `GEMMA_PROFILE`; `rehearse` is the
# `gpu` path cut to a few steps, for `python -m gemma_helpers rehearse`). It picks
# the model and the size of each run in later notebooks. Training runs in bfloat16 where the GPU
# has it and in float32 elsewhere: never float16, which overflows in Gemma 3 / 3n / 4 (a T4 has no
# bf16, so there it is float32).

# %%
rep = gh.report(REQUIREMENTS)

# %% [markdown]
# ## Checks
# The packages shared by the two requirement files carry the same pins, and what is installed
# matches them. A mismatch is printed above and stops here.

# %%
assert not rep.pin_problems, rep.pin_problems
assert not rep.off_pin, f"installed versions differ from the pins: {rep.off_pin}"
print("profile:", rep.profile, "| training dtype:", "bfloat16" if rep.bf16 else "float32",
      "| 4-bit:", rep.four_bit, "| unsloth:", rep.unsloth)
