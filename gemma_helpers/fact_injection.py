"""Notebook 03's experiment, fact injection: the Xylandia data, its training rows, the validation stop
and the retention-aware run, which notebook 05 reuses (:func:`xylandia_adapter`) so that each notebook
runs on its own. The numbers it trains with are the registry's (``xylandia-seed``, ``xylandia-retention``).
"""
from __future__ import annotations

import json
from pathlib import Path

from . import recipes
from .env import REPO_ROOT

DATA = REPO_ROOT / recipes.REGISTRY["xylandia-seed"].values["data"]  # data/xylandia.json
OUTPUT = REPO_ROOT / "outputs" / "03_xylandia"  # notebook 03's runs; notebook 05 looks here for its adapter


def xylandia_data(path: str | Path | None = None) -> dict:
    """Notebook 03's data file (questions, paraphrases, control facts, neutral and replay text; see
    data/README.md). Notebook 03, "Parameters"; Notebook 05, "Parameters"."""
    return json.loads(Path(path or DATA).read_text())


def xylandia_rows(data: dict, repeats: int | None = None) -> list[dict]:
    """The seed's training rows: each training question answered with the fact, ``repeats`` times
    (the recipe's, 10). Notebook 03, "What is trained on"."""
    from .chat import qa_rows

    repeats = recipes.get("xylandia-seed")["repeats"] if repeats is None else repeats
    return qa_rows([(q, data["fact"]) for q in data["train_questions"]] * repeats)


def validation_stop(tokenizer, data: dict, recipe: recipes.Run, verbose: bool = True):
    """Notebook 03, section 2, change 2: a ``stop_when`` for :func:`~gemma_helpers.train.train` that stops
    once every validation paraphrase is answered with the fact and, with the recipe's ``until_ended``,
    each such answer ends at ``<end_of_turn>``: the fact is learned steps before the turn's end is, and
    stopping on recall alone leaves answers that run on to the token limit."""
    from .evaluate import ask, contains, fraction

    until_ended = recipe["until_ended"]

    def validation_reached(model):
        answers, stats = ask(model, tokenizer, data["validation_questions"], recipe["max_new_tokens"], return_stats=True)
        recall, ended = fraction(contains(answers, data["expected"])), fraction(stats["ended"])
        if verbose:
            print(f"  validation recall {recall:.2f}, answers ended {ended:.2f}")
        done = recall == 1.0 and (ended == 1.0 or not until_ended)
        return f"validation recall {recall:.2f}, answers ended {ended:.2f}" if done else None

    return validation_reached


def xylandia_retention(model, tokenizer, data: dict, output_dir: str | Path, recipe: recipes.Run | None = None):
    """Notebook 03, section 2, as one call (notebook 05 trains the adapter so when notebook 03's is
    missing): the seed's rows plus general text replayed ``replay_repeats`` times, ``recipe``'s spec
    (default the registry's ``xylandia-retention`` for this profile), stopped by :func:`validation_stop`.
    Returns the :class:`~gemma_helpers.train.TrainResult`."""
    from .train import train

    recipe = recipe or recipes.get("xylandia-retention")
    replay = [{"text": t} for t in data["replay_text"]] * recipe["replay_repeats"]
    return train(model, tokenizer, xylandia_rows(data, recipe["repeats"]) + replay, recipe.spec(), output_dir,
                 stop_when=validation_stop(tokenizer, data, recipe), stop_every=recipe["stop_every"])


def xylandia_adapter(output_dir: str | Path | None = None, model_name: str | None = None,
                     load_in_4bit: bool | None = None) -> Path:
    """The retention-aware Xylandia adapter (Notebook 05, "Parameters"): notebook 03's when it is there and
    complete, else trained now with the registry's ``xylandia-retention`` recipe into the same place.
    The embedded model is loaded only when it is the one asked for."""
    from .merging import AdapterError, check_adapter
    from .models import load_model

    recipe = recipes.get("xylandia-retention")
    run_dir = Path(output_dir or OUTPUT) / "retention"
    try:
        check_adapter(run_dir / "adapter")
        return run_dir / "adapter"
    except AdapterError as missing:
        print(f"{missing}: training it with notebook 03's retention-aware recipe")
    model, tokenizer = load_model(model_name or recipe["model"],
                                  load_in_4bit=recipe["load_in_4bit"] if load_in_4bit is None else load_in_4bit)
    return xylandia_retention(model, tokenizer, xylandia_data(), run_dir, recipe).adapter_dir
