"""Named training recipes that more than one notebook (or benchmark) runs.

``xylandia``: notebook 03's retention-aware fact injection ("The capital of Xylandia is
Crystalburg."). Notebook 03 trains it and explains every choice; notebook 05 exports the adapter
it leaves in ``outputs/03_xylandia/retention/adapter``, or trains it here when that is absent, so
each notebook runs on its own.
"""
from __future__ import annotations

import json
from pathlib import Path

from .env import REPO_ROOT

XYLANDIA_DATA = REPO_ROOT / "data" / "xylandia.json"
XYLANDIA_OUTPUT = REPO_ROOT / "outputs" / "03_xylandia"
SEED_LORA = {"r": 16, "alpha": 32, "target_modules": ("q_proj", "v_proj"), "dropout": 0.1}  # the seed's LoraConfig
REPEATS = 10  # the seed: 5 questions x 10 repetitions


def xylandia_data(path: str | Path | None = None) -> dict:
    return json.loads(Path(path or XYLANDIA_DATA).read_text())


def xylandia_rows(data: dict, repeats: int = REPEATS) -> list[dict]:
    """The seed's training rows: each training question answered with the fact, ``repeats`` times."""
    from .chat import qa_rows

    return qa_rows([(q, data["fact"]) for q in data["train_questions"]] * repeats)


def xylandia_retention(model, tokenizer, data: dict, output_dir: str | Path, learning_rate: float = 1e-4,
                       max_epochs: float = 5, stop_every: int = 5, replay_repeats: int = 2, batch_size: int = 2,
                       lora: dict | None = None, until_ended: bool | None = None, verbose: bool = True):
    """Notebook 03's retention-aware recipe: the seed's rows and LoRA, half its learning rate, general
    text replayed ``replay_repeats`` times, and a stop once every validation paraphrase is answered
    with the fact (checked every ``stop_every`` steps) and, with ``until_ended``, each such answer ends
    at ``<end_of_turn>``. ``until_ended=None`` asks for it on a GPU only: Gemma 3 1B-it knows its turn
    token, while the embedded 270M base does not (its row is untrained) and needs about 100 steps
    instead of 40 to learn it, which cost +20 % (2 replay repeats) to +36 % (4) neutral-text
    perplexity in the 2026-11-23 runs, past the notebook's +10 % bound.
    Returns the :class:`~gemma_helpers.train.TrainResult`."""
    from .env import profile
    from .evaluate import ask, contains, fraction
    from .train import TrainSpec, train

    replay = [{"text": t} for t in data["replay_text"]] * replay_repeats
    until_ended = profile() == "gpu" if until_ended is None else until_ended

    # With until_ended, both conditions: the fact is learned steps before the turn's end is, and
    # stopping on recall alone leaves answers that run on to the token limit.
    def validation_reached(m):
        answers, stats = ask(m, tokenizer, data["validation_questions"], return_stats=True)
        recall, ended = fraction(contains(answers, data["expected"])), fraction(stats["ended"])
        if verbose:
            print(f"  validation recall {recall:.2f}, answers ended {ended:.2f}")
        done = recall == 1.0 and (ended == 1.0 or not until_ended)
        return f"validation recall {recall:.2f}, answers ended {ended:.2f}" if done else None

    spec = TrainSpec(**(lora or SEED_LORA), batch_size=batch_size, epochs=max_epochs, learning_rate=learning_rate, save_steps=50)
    return train(model, tokenizer, xylandia_rows(data) + replay, spec, output_dir,
                 stop_when=validation_reached, stop_every=stop_every)


def xylandia_model() -> str:
    """Notebook 03's model for the current profile: Gemma 3 1B-it on a GPU (the seed's), else the embedded 270M."""
    from .env import profile
    from .models import EMBEDDED

    return "gemma-3-1b-it" if profile() == "gpu" else EMBEDDED


def xylandia_adapter(output_dir: str | Path | None = None, model_name: str | None = None,
                     load_in_4bit: bool = True) -> Path:
    """The retention-aware Xylandia adapter: notebook 03's when it is there and complete, else
    trained now (on notebook 03's model for the profile, :func:`xylandia_model`, unless ``model_name``
    says otherwise) into the same place. The embedded model is loaded only when it is the one asked for."""
    from .export import AdapterError, check_adapter
    from .models import load_model

    run_dir = Path(output_dir or XYLANDIA_OUTPUT) / "retention"
    try:
        check_adapter(run_dir / "adapter")
        return run_dir / "adapter"
    except AdapterError as missing:
        print(f"{missing}: training it with notebook 03's retention-aware recipe")
    model, tokenizer = load_model(model_name or xylandia_model(), load_in_4bit=load_in_4bit)
    return xylandia_retention(model, tokenizer, xylandia_data(), run_dir).adapter_dir
