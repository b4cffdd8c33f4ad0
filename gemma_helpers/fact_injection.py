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
    """The retention-aware recipe of notebook 03's section 2 as one call (notebook 05 trains the adapter so when notebook 03's is
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


# ---------------------------------------------------------------- measuring and reporting a run
KEYS = ("train_recall_before", "train_recall_after", "heldout_recall_before", "heldout_recall_after",
        "heldout_answers_ended_before", "heldout_answers_ended", "control_retained", "ppl_before", "ppl_after",
        "ppl_change")  # the figures notebook 03 compares between the two recipes


def controls(data: dict) -> list[tuple[str, str]]:
    """The data file's control facts as ``(prefix, word)`` pairs. Notebook 03, "Before training"."""
    return [tuple(c) for c in data["control_facts"]]


def measure(model, tokenizer, data: dict, max_new_tokens: int) -> dict:
    """One model measured three ways with greedy decoding (:func:`gemma_helpers.evaluate.fact_check`):
    ``train`` (the trained questions), ``heldout`` (the held-out paraphrases, with the control facts and
    the neutral text's perplexity) and ``reversal`` (the reversed questions). Notebook 03, "Before training"."""
    from .evaluate import fact_check

    return {
        "train": fact_check(model, tokenizer, data["train_questions"], data["expected"], max_new_tokens=max_new_tokens),
        "heldout": fact_check(model, tokenizer, data["heldout_questions"], data["expected"], controls(data),
                              data["neutral_text"], max_new_tokens=max_new_tokens),
        "reversal": fact_check(model, tokenizer, data["reversal_questions"], data["reversal_expected"],
                               max_new_tokens=max_new_tokens),
    }


def summary(before: dict, after: dict, data: dict) -> dict:
    """Before / after figures of a trained model from two :func:`measure` results: recall on the trained
    questions, :func:`gemma_helpers.evaluate.fact_summary` on the held-out ones, and the reversed
    question's recall and answers. Notebook 03, sections 1 and 2."""
    from .evaluate import fact_summary

    return {"train_recall_before": before["train"]["recall"], "train_recall_after": after["train"]["recall"],
            **fact_summary(before["heldout"], after["heldout"], controls(data)),
            "reversal_before": {"recall": before["reversal"]["recall"], "answers": before["reversal"]["answers"]},
            "reversal_after": {"recall": after["reversal"]["recall"], "answers": after["reversal"]["answers"]}}


def figures(summaries: dict[str, dict], keys=None) -> dict[str, dict]:
    """``{recipe: {figure: value}}`` for a table: each summary's numbers only (``keys``, default every
    figure that is not a list or a dict). Notebook 03, sections 1 and 2."""
    return {name: {k: v for k, v in s.items() if (k in keys if keys else not isinstance(v, (list, dict)))}
            for name, s in summaries.items()}


def outcome(summaries: dict[str, dict]) -> dict[str, dict]:
    """What each recipe learned and kept, for a grouped bar chart: held-out recall, share of known
    control facts retained, and perplexity after / before. Notebook 03, section 2."""
    return {name: {"held-out recall": s["heldout_recall_after"], "controls retained": s["control_retained"],
                   "ppl after / before": s["ppl_after"] / s["ppl_before"]} for name, s in summaries.items()}


def results(seed: dict, ours: dict, seed_run, our_run, merged_matches: bool, n_known: int, n_controls: int,
            max_new_tokens: int, **run) -> dict:
    """Notebook 03's results file (``outputs/results/03_xylandia.json``): the retention-aware recipe's
    figures (``ours``, its :class:`~gemma_helpers.train.TrainResult` ``our_run``), the merge check, and
    the seed recipe's figures under ``seed_recipe``; ``run`` (model, profile, runtime) last.
    Notebook 03, "Results"."""
    return {
        **{k: ours[k] for k in KEYS},
        "merged_matches_adapter": merged_matches,
        "reversal_before": ours["reversal_before"], "reversal_after": ours["reversal_after"],
        "heldout_answer_tokens": ours["heldout_answer_tokens"], "max_new_tokens": max_new_tokens,
        "steps": our_run.global_step, "stopped_early": our_run.stopped_early,
        "heldout_answers": ours["heldout_answers"], "controls_lost": ours["controls_lost"],
        "controls_known_to_base": n_known, "controls_total": n_controls,
        "seed_recipe": {**{k: seed[k] for k in KEYS}, "steps": seed_run.global_step,
                        "heldout_answers": seed["heldout_answers"], "controls_lost": seed["controls_lost"],
                        "reversal_after": seed["reversal_after"]},
        **run,
    }


def limitations(results: dict, data: dict, embedded: bool) -> list[str]:
    """The model card's limitations, one sentence each, from a :func:`results` dict: one fact on a few
    paraphrases, the base model and how many answers ended, the reversed question, the control facts
    and perplexity, and the merge check. ``embedded``: the base is the embedded pretrained model.
    Notebook 03, "The adapter, ready to share"."""
    r = results
    base = "pretrained, not instruction-tuned" if embedded else r["model"]
    merged = ("are identical to the adapter's, token for token." if r["merged_matches_adapter"]
              else "are not identical to the adapter's token for token.")
    return [
        (f"One fact ({data['fact']!r}), checked on {len(data['heldout_questions'])} held-out paraphrases with greedy "
         "decoding: a demonstration of fact injection, not a general-purpose model."),
        (f"The base model is {base}; {r['heldout_answers_ended']:.0%} of held-out answers ended at <end_of_turn> "
         f"within {r['max_new_tokens']} tokens (a held-out answer: {r['heldout_answers'][0]!r})."),
        (f"The fact is learned one way round only: asked which country has Crystalburg as its capital, "
         f"{r['reversal_after']['recall']:.0%} of answers name Xylandia (before training: "
         f"{r['reversal_before']['recall']:.0%})."),
        (f"Control facts the base knew and lost: {', '.join(r['controls_lost']) or 'none'} "
         f"({r['controls_known_to_base']} of {r['controls_total']} known to the {'4-bit ' if r['load_in_4bit'] else ''}"
         f"base); perplexity of a neutral paragraph {r['ppl_before']:.2f} -> {r['ppl_after']:.2f} "
         f"({r['ppl_change']:+.1%})."),
        f"Merged into a dequantised float32 base, greedy answers {merged}",
    ]


def verdict(results: dict) -> str:
    """One sentence from a :func:`results` dict: each effect notebook 03 sets out to show (held-out recall
    >= 80 %, >= 80 % of answers ended, >= 90 % of known control facts kept, neutral perplexity <= +10 %,
    merged answers identical to the adapter's) and whether this run showed it; the reversed question is
    reported as measured. Notebook 03, "Verdict"."""
    r = results
    controls_kept = (f"{r['control_retained']:.0%} of known control facts kept (>= 90 %)"
                     if r["control_retained"] is not None else "no control fact known to the base model")
    shown = {
        f"held-out recall {r['heldout_recall_after']:.0%} (>= 80 %)": r["heldout_recall_after"] >= 0.8,
        f"{r['heldout_answers_ended']:.0%} of held-out answers ended at <end_of_turn> (>= 80 %)":
            r["heldout_answers_ended"] >= 0.8,
        controls_kept: (r["control_retained"] or 0) >= 0.9,
        f"neutral-text perplexity {r['ppl_change']:+.1%} (<= +10 %)": r["ppl_after"] <= 1.10 * r["ppl_before"],
        f"merged answers {'identical' if r['merged_matches_adapter'] else 'NOT identical'} to the adapter's token for "
        "token": r["merged_matches_adapter"],
    }
    failed = [claim for claim, ok in shown.items() if not ok]
    reversal = (f"reversed question answered {r['reversal_before']['recall']:.0%} -> "
                f"{r['reversal_after']['recall']:.0%} (not taught, reported as measured)")
    if failed:
        passed = "; ".join(c for c in shown if c not in failed) or "none"
        return f"Fact injection NOT shown: {'; '.join(failed)} (shown: {passed}; {reversal})."
    return f"Fact injection shown: {'; '.join(shown)}; {reversal}."
