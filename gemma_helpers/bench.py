"""The export benchmark (Notebook 05, section 3; ``benchmarks/export_benchmark.py``): measuring a model
the same way whatever runs it: transformers (an adapter or a merged folder) or llama.cpp (a GGUF file).

Each stage is measured in a fresh process (``spawn``), so its load time is a real load, its peak
resident memory (Linux ``VmHWM``) is its own and not the notebook's, and no stage inherits another's
caches. Every stage gets the same token ids (encoded once by the transformers tokenizer) and does
the same work:

- ``load_s``: wall time to load the model;
- ``prompt_tps``: prompt tokens / time of one forward pass over the prompt (prefill);
- ``ttft_s``: time to first token (prefill, then picking the first token);
- ``gen_tps``: greedy decoding, one token at a time with the KV cache, ``gen_tokens`` tokens
  (end-of-turn ignored, so every stage decodes the same number): (tokens - 1) / time after the first;
- ``perplexity``: exp(mean negative log-likelihood) of the held-out text's tokens after the first;
- ``heldout_recall``: share of greedy chat answers (up to ``max_new_tokens``) containing ``expected``;
- ``peak_rss_mb``: the process's peak resident memory, imports included (:func:`gemma_helpers.memory.peak_rss_mb`);
- a warm-up pass over 8 prompt tokens precedes the timings for every stage;
- ``size_mb``: bytes on disk of the files the stage loads.
"""
from __future__ import annotations

import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .memory import peak_rss_mb


# --- generation: the same measurements for a transformers model and a GGUF file --------------------

KINDS = ("adapter", "transformers", "gguf")


@dataclass
class Stage:
    """One file the export benchmark measures: a name, its kind and its path.

    Notebook 05, section 3."""

    name: str  # shown in tables: "adapter", "merged", "gguf f16", ...
    kind: str  # "adapter" (PEFT folder), "transformers" (model folder) or "gguf" (file)
    path: str
    lora: str | None = None  # a GGUF LoRA adapter applied on top of a GGUF base


@dataclass
class Workload:
    """What every stage is asked to do; token ids come from the transformers tokenizer."""

    prompt_ids: list[int]  # prefill and decode prompt (with <bos>)
    text_ids: list[int]  # perplexity text (with <bos>)
    questions: list[str] = field(default_factory=list)
    expected: str = ""
    gen_tokens: int = 64
    max_new_tokens: int = 24
    threads: int | None = None


def workload(tokenizer, prompt: str, text: str, questions=(), expected: str = "", gen_tokens: int = 64,
             max_new_tokens: int = 24, threads: int | None = None) -> Workload:
    """The token ids every stage gets; ``tokenizer`` is a transformers tokenizer or a model folder.

    Notebook 05, section 3."""
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    ids = tokenizer(prompt)["input_ids"]
    return Workload(ids, tokenizer(text)["input_ids"], list(questions), expected, gen_tokens, max_new_tokens, threads)


def size_mb(stage: Stage) -> float:
    """Bytes on disk the stage loads: the GGUF file (and its LoRA), a model folder's weights, or an
    adapter plus the base weights it is loaded on."""
    from .merging import check_adapter

    path = Path(stage.path)
    if stage.kind == "gguf":
        files = [path] + ([Path(stage.lora)] if stage.lora else [])
    elif stage.kind == "transformers":
        files = list(path.glob("*.safetensors"))
    else:
        from .models import resolve

        base, _ = resolve(check_adapter(path)["base_model_name_or_path"])
        files = list(path.glob("*.safetensors")) + list(Path(base).glob("*.safetensors"))
    return sum(f.stat().st_size for f in files) / 2**20


def _nll(logits, target: int) -> float:
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max()
    return float(top + math.log(np.exp(logits - top).sum()) - logits[target])


def _ids(model, ids) -> "torch.Tensor":
    """``ids`` as a batch of one on the device of the model's first weight (its embedding): a merged
    float model loaded on a GPU has no accelerate hooks to move CPU inputs for it."""
    import torch

    return torch.tensor([list(ids)], device=next(model.parameters()).device)


def clock(device) -> float:
    """``time.perf_counter()`` once the work queued on ``device`` has finished: CUDA runs
    asynchronously, so a timing taken without ``torch.cuda.synchronize()`` measures the launch, not
    the work. On the CPU it is the plain clock."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        torch.cuda.synchronize(device)
    return time.perf_counter()


def _measure_transformers(stage: Stage, work: Workload) -> dict:
    import torch

    from . import evaluate
    from .merging import load_adapter
    from .models import load_model

    if work.threads:
        torch.set_num_threads(work.threads)
    started = time.perf_counter()
    model, tokenizer = load_adapter(stage.path) if stage.kind == "adapter" else load_model(stage.path)
    model.eval()
    device = next(model.parameters()).device
    load_s = clock(device) - started
    with torch.inference_mode():
        model(input_ids=_ids(model, work.prompt_ids[:8]))  # warm-up, as for llama.cpp
        ids = _ids(model, work.prompt_ids)
        started = clock(device)
        out = model(input_ids=ids, use_cache=True)
        prefill = clock(device) - started
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        ttft = clock(device) - started
        cache = out.past_key_values
        started = clock(device)
        for _ in range(work.gen_tokens - 1):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        decode = clock(device) - started
        text = _ids(model, work.text_ids)
        logits = model(input_ids=text).logits[0].float()
        nll = torch.nn.functional.cross_entropy(logits[:-1], text[0, 1:])
    answers = evaluate.ask(model, tokenizer, work.questions, work.max_new_tokens) if work.questions else []
    return {"device": device.type, "load_s": load_s, "prompt_tps": len(work.prompt_ids) / prefill, "ttft_s": ttft,
            "gen_tps": (work.gen_tokens - 1) / decode, "perplexity": math.exp(nll.item()), "answers": answers}


def _last_logits(llm):
    """The logits llama.cpp computed for the last token evaluated (a view, copy before the next eval)."""
    import llama_cpp
    import numpy as np

    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))


def _measure_gguf(stage: Stage, work: Workload) -> dict:
    import numpy as np

    from .llamacpp import gguf_ask, load_gguf

    started = time.perf_counter()
    kwargs = {"lora_path": stage.lora} if stage.lora else {}
    llm = load_gguf(stage.path, n_ctx=max(512, len(work.prompt_ids) + work.gen_tokens + 8, len(work.text_ids) + 8),
                    threads=work.threads, **kwargs)
    load_s = time.perf_counter() - started
    llm.eval(work.prompt_ids[:8])  # warm-up, as for transformers
    llm.reset()
    started = time.perf_counter()
    llm.eval(work.prompt_ids)
    prefill = time.perf_counter() - started
    token = int(np.argmax(_last_logits(llm)))
    ttft = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(work.gen_tokens - 1):
        llm.eval([token])
        token = int(np.argmax(_last_logits(llm)))
    decode = time.perf_counter() - started
    llm.reset()
    nll = []
    for position, token in enumerate(work.text_ids[:-1]):  # one token at a time: the logits of every position
        llm.eval([token])
        nll.append(_nll(_last_logits(llm), work.text_ids[position + 1]))
    answers = gguf_ask(llm, work.questions, work.max_new_tokens) if work.questions else []
    return {"device": "cpu", "load_s": load_s, "prompt_tps": len(work.prompt_ids) / prefill, "ttft_s": ttft,
            "gen_tps": (work.gen_tokens - 1) / decode, "perplexity": math.exp(sum(nll) / len(nll)), "answers": answers}


def measure_here(stage: Stage, work: Workload) -> dict:
    """Measure ``stage`` in this process (use :func:`measure` for a clean one)."""
    from .evaluate import contains, fraction

    if stage.kind not in KINDS:
        raise ValueError(f"stage {stage.name}: kind {stage.kind!r} is not one of {KINDS}")
    result = (_measure_gguf if stage.kind == "gguf" else _measure_transformers)(stage, work)
    result["heldout_recall"] = fraction(contains(result["answers"], work.expected)) if work.questions else None
    result["peak_rss_mb"] = peak_rss_mb()  # this stage's own process: its high-water mark
    return {"name": stage.name, "kind": stage.kind, "size_mb": size_mb(stage), **result}


def measure(stage: Stage, work: Workload) -> dict:
    """Measure ``stage`` in a fresh process; the figures in this module's docstring, as a dict."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure_here, stage, work).result()


def measure_all(stages, work: Workload, progress: bool = True) -> list[dict]:
    """Every stage in turn, each in its own process, with a progress bar.

    Notebook 05, section 3."""
    from tqdm.auto import tqdm

    results = []
    for stage in tqdm(stages, desc="benchmarking", disable=not progress):
        results.append(measure(stage, work))
    return results


def table(results) -> str:
    """One row per stage: the columns of the notebook's table.

    Notebook 05, section 3."""
    from .results import table as fmt

    columns = ("size_mb", "load_s", "prompt_tps", "gen_tps", "ttft_s", "peak_rss_mb", "perplexity", "heldout_recall")
    return fmt({r["name"]: {c: r[c] for c in columns} for r in results})


def speedup(results, numerator: str, denominator: str, key: str = "gen_tps") -> float:
    """The ratio of one stage's ``key`` (generation tokens/s by default) over another's.

    Both stages must have run on the same kind of device: a GPU transformers stage against a CPU
    llama.cpp one is two machines, not one speed-up, and raises ``ValueError`` naming both.

    Notebook 05, section 4."""
    by_name = {r["name"]: r for r in results}
    top, bottom = by_name[numerator], by_name[denominator]
    if top.get("device", "cpu") != bottom.get("device", "cpu"):
        raise ValueError(f"{numerator!r} ran on {top.get('device', 'cpu')} and {denominator!r} on "
                         f"{bottom.get('device', 'cpu')}: their {key} are not one comparison")
    return top[key] / bottom[key]


def speedup_over(results, numerator: str, candidates) -> tuple[str, float]:
    """``(name, ratio)``: ``numerator``'s generation tokens/s over the first of ``candidates`` measured on
    the same kind of device. On a CPU the merged transformers model is the baseline; on a GPU, where the
    merged model runs on CUDA and llama.cpp on the CPU, the next candidate (the f16 GGUF) is.

    Notebook 05, section 4."""
    by_name = {r["name"]: r for r in results}
    device = by_name[numerator].get("device", "cpu")
    for name in candidates:
        if name in by_name and by_name[name].get("device", "cpu") == device:
            return name, speedup(results, numerator, name)
    raise ValueError(f"none of {list(candidates)} ran on {device} like {numerator!r}: no speed-up to state")
