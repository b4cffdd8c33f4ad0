"""The setup cell: one template, stamped by ``make sync`` into the first code cell of every notebook.

On Colab the cell clones the repository from the one URL the reader gives (the form field
``REPO_URL`` or the environment variable ``GEMMA_REPO_URL``; an http(s), ssh, git or file URL or an
absolute path, passed to ``git clone`` after ``--`` so it is never read as an option) and installs the pinned stack with
Colab's torch kept (:func:`gemma_helpers.env.colab_install`); anywhere else it only imports the
package and reports the environment. What one notebook needs beyond that (llama.cpp's binding for
05, the Keras stack for 06) it asks for in its own next cell with ``gh.env.ensure(...)``.
"""
from __future__ import annotations

import re

TEMPLATE = '''\
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
            raise SystemExit(f"git clone {REPO_URL} failed: {clone.stderr.strip()}\\n{HOW}")
    sys.path.insert(0, REPO)
    from gemma_helpers import env

    env.colab_install(REPO)
    if OUTPUTS_ON_DRIVE:
        env.keep_outputs_on_drive(REPO)

import gemma_helpers as gh

gh.report();
'''

_CELL = re.compile(r"^# %%.*$", re.MULTILINE)


def _code_cells(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of each code cell of a py:percent file, its ``# %%`` line included."""
    starts = [m.start() for m in _CELL.finditer(text)]
    spans = zip(starts, [*starts[1:], len(text)])
    return [(a, b) for a, b in spans if not text[a:b].startswith("# %% [")]


def setup_cell(text: str) -> str:
    """The first code cell of a py:percent file (the setup cell), as written there."""
    cells = _code_cells(text)
    if not cells:
        raise ValueError("no code cell: a notebook's first code cell is its setup cell")
    a, b = cells[0]
    return text[a:b].rstrip("\n") + "\n"


def stamp(text: str) -> str:
    """``text`` with its first code cell replaced by :data:`TEMPLATE`."""
    a, b = _code_cells(text)[0]
    return text[:a] + TEMPLATE + "\n" + text[b:].lstrip("\n")
