"""A Hugging Face Hub dataset, read through ``datasets.load_dataset``: from the hub, or from a local
copy under ``$GEMMA_HUB_MIRROR`` (``<mirror>/datasets/<owner>/<name>``, a clone of the dataset's
repository: its data files in their own schema; see :mod:`gemma_helpers.env`).
"""
from __future__ import annotations

from ..env import hub_mirror


def load_hub_dataset(hub_id: str, split: str = "train"):
    """``datasets.load_dataset(hub_id, split=split)``; with a mirror that holds ``hub_id``, the same call
    on that folder (``load_dataset`` reads its data files by their extension), and a line saying so.

    Notebook 02, section 1."""
    from datasets import load_dataset

    local = hub_mirror(hub_id, "dataset")
    if local is None:
        return load_dataset(hub_id, split=split)
    print(f"{hub_id}: read from the local mirror {local}", flush=True)
    return load_dataset(str(local), split=split)
