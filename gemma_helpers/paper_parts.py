"""Notebook 01's experiment, naming the part of a paper a passage comes from: where the papers come from
in each profile, and the tables, charts' data and results file it reports. The scoring itself is
:mod:`gemma_helpers.evaluate`'s; the papers, rows and splits are :mod:`gemma_helpers.data.papers`'."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

SOURCES = ("arxiv", "sample")  # the recipe's paper_source: arXiv (the seed's list) or the bundled mini-papers


def paper_list(source: str) -> tuple[list, Callable[[], None]]:
    """``(papers, stop)`` for the recipe's ``paper_source``: ``"arxiv"``, the seed's 22 arXiv papers
    (:func:`gemma_helpers.data.papers.arxiv_papers`, ``stop`` does nothing), or ``"sample"``, the
    project's mini-papers served on 127.0.0.1 with one flaky server and three bad entries
    (:func:`gemma_helpers.offline.sample_papers`), whose server ``stop`` stops. Notebook 01, section 1."""
    if source == "arxiv":
        from .data import papers as gp

        return gp.arxiv_papers(), lambda: None
    if source == "sample":
        from .offline import sample_papers

        server, papers, _ = sample_papers()
        return papers, server.stop
    raise ValueError(f"paper_source {source!r}: expected one of {SOURCES}")


def cloud_labels(freqs: Mapping[str, Mapping], n: int = 3) -> dict:
    """Word counts per paper keyed ``"<key>\\n<its n most common words>"``, the titles of the word clouds.
    Notebook 01, section 3."""
    return {f"{key}\n{', '.join(w for w, _ in counts.most_common(n))}": counts for key, counts in freqs.items()}


def paper_table(papers: Sequence[dict], freqs: Mapping[str, Mapping], n: int = 5) -> dict:
    """``{key: {field, pages, words, top words}}``, one row per paper. Notebook 01, section 3."""
    return {p["key"]: {"field": p["field"], "pages": p["pages"], "words": p["words"],
                       "top words": ", ".join(w for w, _ in freqs[p["key"]].most_common(n))} for p in papers}


def accuracy_table(scores: Mapping[str, dict], bootstrap: Mapping) -> dict:
    """``{split: {accuracy, 95% CI, mixed, overlap, relevance, n}}`` from :func:`gemma_helpers.evaluate.mixed_accuracy`
    results, the interval a bootstrap over the split's rows. Notebook 01, sections 6 and 8."""
    from .evaluate import bootstrap_ci, correct

    return {name: {"accuracy": s["accuracy"], "95% CI": "[{:.2f}, {:.2f}]".format(*bootstrap_ci(correct(s), **bootstrap)),
                   "mixed": s["mixed"], "overlap": s["overlap"], "relevance": s["relevance"], "n": s["n"]}
            for name, s in scores.items()}


def trivials(scored: Mapping[str, Sequence[dict]], answers: Sequence[str], **mix) -> dict:
    """``{split: {baseline name: scores}}``: :func:`gemma_helpers.evaluate.trivial_scores` of each split's
    rows (copying the passage back, or one of ``answers`` for every row). Notebook 01, section 8."""
    from .evaluate import trivial_scores

    return {name: trivial_scores([x["passage"] for x in rows], [x["messages"][-1]["content"] for x in rows],
                                 answers=answers, **mix) for name, rows in scored.items()}


def trivial_table(trivial: Mapping[str, dict]) -> dict:
    """``{"<split>: <baseline>": {accuracy, mixed}}``, every trivial baseline of every split. Notebook 01, section 8."""
    return {f"{name}: {t}": {"accuracy": s["accuracy"], "mixed": s["mixed"]}
            for name, scores in trivial.items() for t, s in scores.items()}


def stage_table(stages: Mapping[str, Mapping[str, dict]], bootstrap: Mapping) -> dict:
    """``{"<stage> <split>": row}``: :func:`accuracy_table` of each stage (baseline, tuned, best trivial).
    Notebook 01, section 8."""
    return {f"{stage} {name}": row for stage, scores in stages.items()
            for name, row in accuracy_table(scores, bootstrap).items()}


def panels(stages: Mapping[str, Mapping[str, dict]], threshold: float) -> dict:
    """The four bar panels of the accuracy chart, ``{panel: {stage: {split: value}}}``: accuracy, the mean
    mixed score, overlap and relevance. Notebook 01, section 8."""
    metrics = {f"accuracy (mixed >= {threshold})": "accuracy", "mean mixed score": "mixed",
               "overlap (ROUGE-L F1)": "overlap", "relevance (cosine)": "relevance"}
    return {title: {stage: {split: s[metric] for split, s in scores.items()} for stage, scores in stages.items()}
            for title, metric in metrics.items()}


def examples(rows: Sequence[dict], before: dict, after: dict, every: int = 10) -> list[dict]:
    """Every ``every``-th row with its passage, right part, paper and the answer and mixed score before and
    after fine-tuning (``before`` / ``after``: two :func:`gemma_helpers.evaluate.mixed_accuracy_rows`
    results on ``rows``). Notebook 01, section 8."""
    return [{"passage": x["passage"], "reference": t["reference"], "paper": t["paper"], "before": b["prediction"],
             "after": t["prediction"], "mixed_before": b["mixed"], "mixed_after": t["mixed"]}
            for x, b, t in list(zip(rows, before["items"], after["items"]))[::every]]


def confusion(items: Sequence[dict], roles: Sequence[str]) -> dict:
    """``{right part: {answered part or "other": count}}`` over scored items. Notebook 01, section 8."""
    table = {r: {a: 0 for a in (*roles, "other")} for r in roles}
    for item in items:
        answer = item["prediction"].strip(" .").lower()
        table[item["reference"]][answer if answer in roles else "other"] += 1
    return table


def results(corpus, splits: dict, rows: dict, scores: Mapping[str, dict], trivial: Mapping[str, dict], run,
            memory: dict, trainable: int, holdout_examples: Sequence[dict], setup: Mapping, **run_info) -> dict:
    """Notebook 01's results file (``outputs/results/01_papers.json``): accuracy with intervals per stage
    and split (``scores``: ``{"baseline": ..., "tuned": ...}``; ``trivial``: :func:`trivials`), the gain's
    paired interval, the validation loss, the download report, papers, splits, examples, memory and the
    training run (a :class:`~gemma_helpers.train.TrainResult`). ``setup`` holds the fixed choices:
    ``task``, ``roles``, ``bootstrap``, ``max_new_tokens``, ``mix_weight``, ``mix_threshold``;
    ``run_info`` (model, profile, runtime) comes last. Notebook 01, "Results"."""
    from .evaluate import best_trivial, bootstrap_ci, correct, gain_ci

    bootstrap, roles = setup["bootstrap"], setup["roles"]
    best = {name: best_trivial(ts) for name, ts in trivial.items()}
    stages = {**scores, "trivial": {name: s for name, (_, s) in best.items()}}
    accuracy = {stage: {k: v["accuracy"] for k, v in x.items()} for stage, x in stages.items()}
    accuracy_ci = {stage: {k: bootstrap_ci(correct(v), **bootstrap) for k, v in x.items()} for stage, x in stages.items()}
    gain = {k: gain_ci(scores["tuned"][k], scores["baseline"][k], **bootstrap) for k in scores["tuned"]}
    weight, threshold = setup["mix_weight"], setup["mix_threshold"]
    return {
        "accuracy": accuracy, "accuracy_ci": accuracy_ci, "holdout_gain_ci": gain["holdout"], "gain_ci": gain,
        "trivial_baseline": {name: n for name, (n, _) in best.items()},
        "scores": {**{stage: accuracy_table(s, bootstrap) for stage, s in scores.items()},
                   "trivial": {name: accuracy_table(ts, bootstrap) for name, ts in trivial.items()}},
        "task": setup["task"], "bootstrap": bootstrap, "max_new_tokens": setup["max_new_tokens"],
        "holdout_confusion": confusion(scores["tuned"]["holdout"]["items"], roles),
        "metric": {"overlap": "ROUGE-L F1", "relevance": "cosine of all-MiniLM-L6-v2 embeddings",
                   "mixed": f"{weight} * overlap + {1 - weight} * relevance", "correct_when": f"mixed >= {threshold}"},
        "val_loss_baseline": run.eval_history[0]["eval_loss"], "val_loss_tuned": run.eval_history[-1]["eval_loss"],
        "eval_history": run.eval_history, "stopped_early": run.stopped_early,
        "download_report": [{k: r[k] for k in ("key", "url", "status", "reason", "bytes", "attempts", "http_status")}
                            for r in corpus.report],
        "papers": [{k: p[k] for k in ("key", "title", "field", "pages", "words", "problems")} for p in corpus.papers],
        "splits": splits, "rows": {k: len(v) for k, v in rows.items()},
        "holdout_examples": [{k: e[k] for k in ("passage", "reference", "before", "after")} for e in holdout_examples],
        "memory": memory, "steps": run.global_step, "train_runtime_s": run.runtime_s,
        "loss_first": run.losses[0][1], "loss_last": run.losses[-1][1], "trainable_parameters": trainable,
        **run_info,
    }


def accuracy_summary(results: Mapping) -> dict:
    """``{stage: {"<split> acc": "0.50 [0.30, 0.70]"}}`` from a :func:`results` dict. Notebook 01, "Results"."""
    return {stage: {f"{k} acc": f"{v:.2f} [{results['accuracy_ci'][stage][k][0]:.2f}, {results['accuracy_ci'][stage][k][1]:.2f}]"
                    for k, v in row.items()} for stage, row in results["accuracy"].items()}
