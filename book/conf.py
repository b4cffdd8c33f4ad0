"""Sphinx configuration of the book (`make book`): book/ pages plus the notebooks as `make test` executed them.

book/book.py stages the sources into outputs/book-src/ and runs Sphinx with this folder as its
configuration directory (`-c book`); nothing is executed here (`nb_execution_mode = "off"`)."""
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # autodoc imports gemma_helpers from this checkout


def _git(*args):
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


project = "gemma-lora-notebooks"
author = "gemma-lora-notebooks contributors"
copyright = "the gemma-lora-notebooks contributors, Apache-2.0"
BUILT = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
COMMIT = _git("rev-parse", "--short=10", "HEAD")

extensions = ["myst_nb", "sphinx.ext.autodoc"]
nb_execution_mode = "off"  # the outputs are those of the run by `make test`; the book never executes
nb_output_stderr = "show"
nb_merge_streams = True
nb_ipywidgets_js = {}  # no widget JavaScript from a CDN: the site works offline
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "_results_files.md"]

autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True

html_theme = "sphinx_book_theme"
html_title = "gemma-lora-notebooks"
html_static_path = []
html_theme_options = {
    "show_toc_level": 2,
    "extra_footer": f"Built {BUILT} from commit {COMMIT}. Each notebook page names the run its outputs come from.",
}
html_show_sourcelink = False
html_copy_source = False
