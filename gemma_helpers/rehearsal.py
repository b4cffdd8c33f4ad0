"""The GPU-profile rehearsal: every notebook's GPU / Colab code path, run on a CPU against local stand-ins.

The GPU profile of every notebook loads hub checkpoints (Gemma 3 1B-it, Gemma 3n E4B, Gemma 4 E4B)
through unsloth, hub datasets and arXiv PDFs. None of that can be reached here or in CI, so the
rehearsal runs the GPU profile's own code (its model ids, recipes, dataset loaders, merge and export
calls) against stand-ins:

- random-weight checkpoints of the real architectures at a small width, saved as safetensors folders
  under ``<cache>/standins/``, carrying the real tokenizer quirks (Gemma 3 1B-it's 262,145-entry
  tokenizer against 262,144 embedding rows);
- the hub datasets' files in their own schemas (from the bundled samples), loaded through
  ``datasets.load_dataset``;
- arXiv through the loopback HTTP server, serving PDFs under the real papers' titles;
- training cut to :data:`STEPS` optimizer steps and generation to :data:`NEW_TOKENS` tokens.

One switch selects all of it: ``GEMMA_REHEARSAL=1`` (with ``GEMMA_PROFILE=gpu``); no notebook is
edited for it. unsloth's calls and CUDA kernels are not executed: each is announced on a line
``rehearsal: would call unsloth ...`` and the plain transformers / PEFT path runs instead.
``python -m gemma_helpers rehearse notebooks`` runs every notebook so and writes
``outputs/results/rehearsal.json``.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .models import cache_root, embedded_path, prepare_tokenizer

STEPS = 2  # optimizer steps per training run in the rehearsal
NEW_TOKENS = 4  # generated tokens per answer in the rehearsal
ITEMS = 8  # rows scored by a loss or accuracy over many rows in the rehearsal
IMAGE_SOFT_TOKEN = "<image_soft_token>"
REAL_VOCAB = 262144  # every Gemma 3 size's embedding rows
WOULD_CALL = "rehearsal: would call "


class StandInUnavailable(RuntimeError):
    """A stand-in that cannot be built in this environment; the runner records the notebook as
    ``"no stand-in"`` with this message instead of failing the run."""


def rehearsing() -> bool:
    """``GEMMA_REHEARSAL=1``: the GPU profile runs on the stand-ins of this module."""
    return os.environ.get("GEMMA_REHEARSAL", "").strip().lower() in ("1", "true", "yes")


def note(call: str) -> None:
    """Announce an unsloth call (or a download) that the rehearsal does not make."""
    print(WOULD_CALL + call, flush=True)


def standins_root() -> Path:
    return cache_root() / "standins"


# ---------------------------------------------------------------- training and generation, cut
def cut_steps(spec):
    """``spec`` with at most :data:`STEPS` optimizer steps (and an evaluation every step) when rehearsing."""
    from dataclasses import replace

    if not rehearsing():
        return spec
    print(f"rehearsal: training cut to {STEPS} steps (max_steps {spec.max_steps}, epochs {spec.epochs})", flush=True)
    optim = spec.optim
    if "8bit" in optim:  # bitsandbytes' 8-bit optimisers run CUDA kernels
        note(f"bitsandbytes optim={optim!r} (CUDA kernels); adamw_torch runs instead")
        optim = "adamw_torch"
    return replace(spec, max_steps=STEPS, eval_steps=min(spec.eval_steps, 1), save_steps=max(spec.save_steps, STEPS),
                   optim=optim)


def cut_tokens(max_new_tokens: int) -> int:
    return min(max_new_tokens, NEW_TOKENS) if rehearsing() else max_new_tokens


def cut_items(items):
    """The first :data:`ITEMS` of ``items`` scored by an aggregate (a perplexity, an accuracy) when rehearsing."""
    return list(items)[:ITEMS] if rehearsing() and items is not None else items


def cut_rows(rows: list, batch_size: int = 1) -> list:
    """The first :data:`STEPS` batches of ``rows`` when rehearsing (a framework without a step limit)."""
    return list(rows)[: STEPS * batch_size] if rehearsing() else rows


# ---------------------------------------------------------------- checkpoints
def checkpoint(spec) -> Path:
    """The stand-in folder for a registry entry (built once, under :func:`standins_root`)."""
    builders = {"gemma3": gemma3_text_checkpoint, "gemma3n": gemma3n_text_checkpoint, "gemma4": gemma4_checkpoint}
    if spec.family not in builders:
        raise ValueError(f"no rehearsal stand-in for {spec.name} (family {spec.family})")
    return builders[spec.family](standins_root() / spec.name)


def gemma3_text_tokenizer(extra_special: tuple[str, ...] = (IMAGE_SOFT_TOKEN,)):
    """The embedded Gemma 3 tokenizer plus ``extra_special`` special tokens: with the default, the
    1B-it layout (262,145 entries, ``<image_soft_token>`` at id 262144)."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_path())
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in extra_special], special_tokens=True)
    prepare_tokenizer(tok)
    return tok


def _layer_types(layers: int) -> list[str]:
    return (["sliding_attention", "full_attention"] * layers)[:layers]


def gemma3_text_checkpoint(folder: str | Path, hidden_size: int = 64, layers: int = 2, seed: int = 0,
                           init_range: float = 0.2) -> Path:
    """A random-weight ``Gemma3ForCausalLM`` with Gemma 3 1B-it's vocabulary layout (262,144 embedding
    rows, a 262,145-entry tokenizer), saved as a safetensors folder with its tokenizer."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    folder = Path(folder)
    if (folder / ".complete").exists():
        return folder
    tok = gemma3_text_tokenizer()
    config = Gemma3TextConfig(
        vocab_size=REAL_VOCAB, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=max(hidden_size // 32, 1), num_key_value_heads=1,
        head_dim=32, sliding_window=128, layer_types=_layer_types(layers),
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        # wider than the real 0.02, so that a tiny width's logits are not all near zero
        initializer_range=init_range)
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config).float()
    return _save(folder, model, tok, "Gemma 3 1B-it layout: 262,144 embedding rows, 262,145 tokenizer entries")


def gemma3n_text_checkpoint(folder: str | Path, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A random-weight ``Gemma3nForCausalLM``: Gemma 3n's text decoder (AltUp streams, LAuReL, per-layer
    embeddings, 262,400 embedding rows against a smaller tokenizer) at a small width.

    The real checkpoint is ``Gemma3nForConditionalGeneration``; its vision tower is a timm model and timm
    is not installed here, so the stand-in is the text decoder that notebooks 01 and 02 train."""
    import torch
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

    folder = Path(folder)
    if (folder / ".complete").exists():
        return folder
    tok = gemma3_text_tokenizer((IMAGE_SOFT_TOKEN, "<audio_soft_token>", "<start_of_audio>", "<end_of_audio>"))
    config = Gemma3nTextConfig(
        vocab_size=262400, vocab_size_per_layer_input=REAL_VOCAB, hidden_size=hidden_size,
        hidden_size_per_layer_input=16, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=128,
        layer_types=_layer_types(layers), num_kv_shared_layers=0, laurel_rank=8,
        activation_sparsity_pattern=[0.95] + [0.0] * (layers - 1), altup_num_inputs=4,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        initializer_range=0.2)
    torch.manual_seed(seed)
    model = Gemma3nForCausalLM(config).float()
    # the real checkpoint's multimodal class maps ids past the per-layer vocabulary (audio and image tokens)
    # to 0 before its per-layer embedding; this text-only class cannot, so it never generates one (random
    # weights would, and the next step would index past that embedding)
    model.generation_config.suppress_tokens = list(range(REAL_VOCAB, config.vocab_size))
    return _save(folder, model, tok, "Gemma 3n text decoder, 262,400 embedding rows")


def gemma4_checkpoint(folder: str | Path, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A random-weight ``Gemma4ForConditionalGeneration`` with its ``Gemma4Processor``: not buildable here.

    transformers 5.17's ``processing_gemma4`` imports ``image_processing_gemma4``, which imports
    torchvision unconditionally; PyPI's torchvision wheels are CUDA builds that do not load next to the
    CPU build of torch this environment uses, and the CPU wheel index cannot be reached."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        raise StandInUnavailable("rehearsal: no Gemma 4 stand-in: transformers' Gemma4Processor imports torchvision, "
                           "which is not installed here (PyPI has no CPU build for this torch)")
    raise NotImplementedError("rehearsal: the Gemma 4 stand-in is not written yet")


def _save(folder: Path, model, processor, what: str) -> Path:
    """Write a stand-in into ``folder`` through a temporary folder renamed when complete."""
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    (tmp / ".complete").write_text(json.dumps({"standin": what}) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, folder)
    return folder


# ---------------------------------------------------------------- data
def _persian_rows() -> list[dict]:
    """mshojaei77/persian-gk's schema, 400 rows: the bundled conversations, numbered so that none
    repeats another (the cleaning drops repeats, and the GPU profile holds 200 out)."""
    from .chat import read_jsonl
    from .env import REPO_ROOT

    base = [r for r in read_jsonl(REPO_ROOT / "data" / "persian_chat.jsonl") if isinstance(r, dict)
            and isinstance(r.get("messages"), list) and all(isinstance(m, dict) and m.get("content") for m in r["messages"])]
    return [{"messages": [{**m, "content": f"{m['content']} ({i})"} for m in base[i % len(base)]["messages"]]}
            for i in range(400)]


def _dolly_rows() -> list[dict]:
    """databricks/databricks-dolly-15k's schema, enough context-free rows for the GPU split (1,000 + 100)."""
    from .data import dolly
    from .env import REPO_ROOT

    base = dolly.read_jsonl(REPO_ROOT / "data" / "dolly_sample.jsonl")
    return [{**base[i % len(base)], "instruction": f"{base[i % len(base)]['instruction']} ({i})"}
            for i in range(1200 * len(base) // max(len(dolly.context_free(base)), 1))]


DATASETS = {"mshojaei77/persian-gk": _persian_rows, "databricks/databricks-dolly-15k": _dolly_rows}


def dataset_file(hub_id: str) -> Path:
    """The stand-in data file for a hub dataset, in that dataset's schema (JSON lines)."""
    if hub_id not in DATASETS:
        raise ValueError(f"no rehearsal stand-in for the dataset {hub_id}; known: {sorted(DATASETS)}")
    path = standins_root() / "datasets" / hub_id.replace("/", "--") / "train.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in DATASETS[hub_id]()), encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_hub_dataset(hub_id: str, split: str = "train"):
    """``datasets.load_dataset(hub_id, split=split)``; in the rehearsal, the same call on the stand-in file."""
    from datasets import load_dataset

    if not rehearsing():
        return load_dataset(hub_id, split=split)
    path = dataset_file(hub_id)
    print(f"rehearsal: {hub_id} read from {path} (its schema, stand-in rows)", flush=True)
    return load_dataset("json", data_files={"train": str(path)}, split=split)


_SERVER = None


def arxiv_papers(papers) -> list:
    """``papers`` (:data:`~gemma_helpers.data.papers.ARXIV_PAPERS`) served by the loopback server: each
    under its real title, with the sections of a bundled mini-paper, so the download, title check and
    cleaning code runs as on arXiv."""
    from dataclasses import replace

    from .data import papers as gp

    global _SERVER
    sample = gp.sample()
    files = {p.key: gp.write_pdf(None, p.title, [(s["heading"], s["text"]) for s in sample[i % len(sample)]["sections"]],
                                 authors=sample[i % len(sample)].get("authors", ""),
                                 running_header=f"rehearsal stand-in - {p.field}")
             for i, p in enumerate(papers)}
    if _SERVER is not None:
        _SERVER.stop()
    _SERVER = gp.LoopbackServer(files).start()
    print(f"rehearsal: {len(papers)} arXiv PDFs served by the loopback server under their titles", flush=True)
    return [replace(p, url=_SERVER.url(p.key)) for p in papers]


# ---------------------------------------------------------------- the runner
SWITCH = {"GEMMA_PROFILE": "gpu", "GEMMA_REHEARSAL": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
          "WANDB_MODE": "disabled"}
COPIED = ("gemma_helpers", "notebooks", "data", "requirements-local.txt", "requirements-colab.txt",
          "requirements-keras.txt", "pyproject.toml")


def _scratch_repo(root: Path, scratch: Path) -> Path:
    """A copy of the code, notebooks and data under ``scratch``: the rehearsal's outputs, charts and
    results land there, never over the real runs' (notebook 05 reuses notebook 03's adapter)."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for name in COPIED:
        source = root / name
        if source.is_dir():
            shutil.copytree(source, scratch / name, ignore=shutil.ignore_patterns("__pycache__", "*.py[co]"))
        elif source.is_file():
            shutil.copy2(source, scratch / name)
    return scratch


def _said(executed: Path) -> list[str]:
    """The ``rehearsal: ...`` lines a notebook printed (the calls it did not make, what was cut)."""
    import nbformat

    lines = []
    for cell in nbformat.read(executed, as_version=4).cells:
        for output in cell.get("outputs", []):
            lines += [line for line in output.get("text", "").splitlines() if line.startswith("rehearsal: ")]
    return list(dict.fromkeys(lines))


def _error_text(text: str) -> str:
    """The failing cell's first lines and the error's last lines, without terminal colours."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    at = text.find("An error occurred while executing the following cell")
    head = text[at:at + 1200] if at >= 0 else ""
    return (head + "\n...\n" if head else "") + text[-1500:]


def _text(output) -> str:
    """What a timed-out subprocess had written (bytes or str or None)."""
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def run_notebooks(folder: str | Path, only: tuple[str, ...] = (), timeout: int = 900,
                  out: str | Path | None = None) -> dict:
    """Execute every notebook of ``folder`` with the GPU profile on the stand-ins, each in a fresh
    process, and write per-notebook status and seconds to ``outputs/results/rehearsal.json``."""
    import subprocess
    import sys
    import time

    from .env import REPO_ROOT
    from .results import save

    folder = Path(folder).resolve()
    root = REPO_ROOT
    scratch = _scratch_repo(root, root / "outputs" / "rehearsal")
    notebooks = sorted(p.name for p in folder.glob("[0-9][0-9]_*.ipynb") if not only or p.name[:2] in only)
    env = {**os.environ, **SWITCH, "PYTHONPATH": str(scratch)}
    report = {"switch": " ".join(f"{k}={v}" for k, v in SWITCH.items() if k.startswith("GEMMA")),
              "standins": str(standins_root()), "steps": STEPS, "new_tokens": NEW_TOKENS, "notebooks": []}
    started_all = time.time()
    for name in notebooks:
        started = time.time()
        print(f"rehearsing {name} ...", flush=True)
        try:
            done = subprocess.run([sys.executable, "-m", "gemma_helpers", "run", str(scratch / "notebooks" / name)],
                                  cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as late:  # one slow notebook is an entry, not the end of the report
            done = subprocess.CompletedProcess(late.cmd, returncode=-1, stdout="",
                                               stderr=f"{_text(late.stderr)}\n{name}: timed out after {timeout} s")
        seconds = round(time.time() - started, 1)
        entry = {"notebook": name.removesuffix(".ipynb"), "status": "ok" if done.returncode == 0 else "error",
                 "seconds": seconds}
        executed = scratch / "outputs" / "notebooks" / name
        if done.returncode != 0:
            entry["error"] = _error_text(done.stderr or done.stdout)
            unavailable = [line for line in entry["error"].splitlines() if line.startswith("StandInUnavailable: ")]
            if unavailable:  # known and stated: not a failure of the notebook's code path
                entry.update(status="no stand-in", reason=unavailable[-1].removeprefix("StandInUnavailable: "))
        elif executed.is_file():
            entry["rehearsal_lines"] = _said(executed)
            entry["not_executed"] = [line.removeprefix(WOULD_CALL) for line in entry["rehearsal_lines"]
                                     if line.startswith(WOULD_CALL)]
        report["notebooks"].append(entry)
        print(f"  {entry['status']} in {seconds} s", flush=True)
        if entry["status"] == "error":
            print(entry["error"][-1500:], flush=True)
        elif entry["status"] == "no stand-in":
            print(f"  {entry['reason']}", flush=True)
    if only:  # a partial run updates those notebooks' entries in the last full report
        from .results import RESULTS

        last = Path(out or RESULTS) / "rehearsal.json"
        if last.is_file():
            ran = {e["notebook"] for e in report["notebooks"]}
            kept = [e for e in json.loads(last.read_text())["notebooks"] if e["notebook"] not in ran]
            report["notebooks"] = sorted(kept + report["notebooks"], key=lambda e: e["notebook"])
    report["total_seconds"] = round(sum(e["seconds"] for e in report["notebooks"]), 1)
    report["wall_seconds_this_run"] = round(time.time() - started_all, 1)
    path = save("rehearsal", report, out)
    print(f"rehearsal: {sum(e['status'] == 'ok' for e in report['notebooks'])}/{len(report['notebooks'])} ok in "
          f"{report['total_seconds']} s; written to {path}", flush=True)
    return report
