"""Dolly-style instruction rows: reading, the context-free filter, a fixed split, the template.

The schema is databricks-dolly-15k's: ``instruction``, ``context``, ``response``, ``category``.
The KerasHub LoRA tutorial keeps the rows whose ``context`` is empty and formats each as
``"Instruction:\\n{instruction}\\n\\nResponse:\\n{response}"``; :func:`prompt_completion` splits
that text where the response begins, so a trainer can put its labels on the response only.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .. import jsonl
from ..chat import character_problem, text_problem

FIELDS = ("instruction", "context", "response", "category")
CATEGORIES = ("open_qa", "general_qa", "classification", "closed_qa", "brainstorming",
              "information_extraction", "summarization", "creative_writing")
PROMPT = "Instruction:\n{instruction}\n\nResponse:\n"
TEMPLATE = PROMPT + "{response}"  # the KerasHub tutorial's template
HUB_ID = "databricks/databricks-dolly-15k"


def row_problem(row) -> str | None:
    """Why ``row`` is unusable (naming the field), or None when it is fine: every field text, and the
    instruction and response with something visible in them (:func:`gemma_helpers.chat.text_problem`)."""
    if not isinstance(row, dict):
        return f"not a JSON object but a {type(row).__name__}"
    for name in FIELDS:
        if not isinstance(row.get(name), str):
            return f"field '{name}' " + (text_problem(row.get(name)) or "is not text")
    for name in ("instruction", "response"):
        problem = text_problem(row[name])
        if problem:
            return f"field '{name}' {problem}"
    for name in ("context", "category"):  # may be empty, but hold text only (no NUL, no lone surrogate)
        problem = character_problem(row[name])
        if problem:
            return f"field '{name}' {problem}"
    return None


def check_row(row, where: str) -> str | None:
    """Why ``row`` is unusable, ``where`` first (:func:`row_problem`), or None when it is fine."""
    problem = row_problem(row)
    return f"{where}: {problem}" if problem else None


def read_jsonl(path: str | Path, *, errors: str, report=print) -> list[dict]:
    """The rows of a Dolly-schema JSON-lines file, read by :func:`gemma_helpers.jsonl.read_jsonl` with
    :func:`row_problem` as its check (notebook 06, section 1). The caller names the error policy:
    ``errors="raise"`` (a bundled sample: the first bad line raises
    :class:`~gemma_helpers.jsonl.JSONLError` naming the file and line) or ``errors="skip"`` (a file
    from elsewhere: each bad line is reported with its file and line and left out, then the count).

    Exact duplicates (the same four fields as an earlier line) are dropped and reported too
    (:func:`drop_duplicates`), so a split never has a row on both sides.

    Notebook 06, "The data"."""
    rows = jsonl.read_jsonl(path, errors=errors, report=report, check=row_problem)
    places = [f"{path}:{n}" for n in rows.lines]
    return drop_duplicates([{k: row[k] for k in FIELDS} for row in rows], places, str(path), report)


SHOWN_DUPLICATES = 5  # duplicates named one by one; the rest are counted


def drop_duplicates(rows: Sequence[dict], places: Sequence[str], source: str, report=print) -> list[dict]:
    """``rows`` without exact duplicates (the same four fields as an earlier row), the first kept.
    ``places`` names each row (``file:line``, ``hub row N``); the first ``SHOWN_DUPLICATES`` dropped are
    reported as ``skipped place: the same row as place`` and then the count
    (``source: dropped 3 exact duplicate rows of 40``), as a bad line is reported."""
    first: dict[tuple, int] = {}
    kept, dropped = [], 0
    for i, row in enumerate(rows):
        key = tuple(row[k] for k in FIELDS)
        if key in first:
            dropped += 1
            if report is not None and dropped <= SHOWN_DUPLICATES:
                report(f"skipped {places[i]}: the same row as {places[first[key]]} (an exact duplicate)")
            continue
        first[key] = i
        kept.append(row)
    if dropped and report is not None:
        more = f" ({dropped - SHOWN_DUPLICATES} not named above)" if dropped > SHOWN_DUPLICATES else ""
        report(f"{source}: dropped {dropped} exact duplicate rows of {len(rows)}, the first of each kept{more}")
    return kept


def from_hub(limit: int | None = None) -> list[dict]:
    """databricks-dolly-15k from the hub (Colab; CI is offline and uses the bundled sample).

    Notebook 06, "The data"."""
    from .hub import load_hub_dataset

    split = "train" if limit is None else f"train[:{limit}]"
    ds = load_hub_dataset(HUB_ID, split=split)
    rows, places = [], []
    for i, row in enumerate(ds):
        problem = check_row(row, f"{HUB_ID} row {i}")
        if problem:
            print(f"skipped {problem}")
            continue
        rows.append({k: row[k] for k in FIELDS})
        places.append(f"{HUB_ID} row {i}")
    return drop_duplicates(rows, places, HUB_ID)


def context_free(rows: Sequence[dict]) -> list[dict]:
    """The rows whose ``context`` is empty (the tutorial's filter).

    Notebook 06, "The data"."""
    return [r for r in rows if not r["context"].strip()]


def split(rows: Sequence[dict], n_train: int, n_heldout: int) -> tuple[list[dict], list[dict]]:
    """The first ``n_train`` rows to train on and the next ``n_heldout`` held out: a fixed split
    (the tutorial trains on the *first* 1,000 context-free rows, so the held-out rows follow them).
    A held-out row that is also a training row (an exact duplicate) raises ValueError naming both.

    Notebook 06, "The data"."""
    if n_train + n_heldout > len(rows):
        raise ValueError(f"asked for {n_train} training + {n_heldout} held-out rows, only {len(rows)} available")
    train, heldout = list(rows[:n_train]), list(rows[n_train : n_train + n_heldout])
    seen = {tuple(r[k] for k in FIELDS): i for i, r in enumerate(train)}
    for j, row in enumerate(heldout):
        i = seen.get(tuple(row[k] for k in FIELDS))
        if i is not None:
            raise ValueError(f"held-out row {n_train + j} is the same row as training row {i}: a copy on both sides "
                             "of the split; drop exact duplicates first (dolly.drop_duplicates)")
    return train, heldout


def prompt(row: dict) -> str:
    """The Dolly prompt of a row, ending where the response starts."""
    return PROMPT.format(instruction=row["instruction"].strip())


def text(row: dict) -> str:
    """The Dolly prompt and response of a row as one training text.

    Notebook 06, "The data"."""
    return TEMPLATE.format(instruction=row["instruction"].strip(), response=row["response"].strip())


def prompt_completion(rows: Sequence[dict]) -> list[dict]:
    """``{"prompt", "completion"}`` rows (see :func:`gemma_helpers.chat.tokenize_row`): the
    template up to ``Response:\\n``, then the response.

    Notebook 06, "What each stack trains on"."""
    return [{"prompt": prompt(r), "completion": r["response"].strip()} for r in rows]
