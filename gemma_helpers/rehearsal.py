"""The GPU-profile rehearsal: every notebook's GPU / Colab code path, run on a CPU against local stand-ins.

The GPU profile of every notebook loads hub checkpoints (Gemma 3 1B-it, Gemma 3n E4B, Gemma 4 E4B)
through unsloth, hub datasets and arXiv PDFs. None of that can be reached here or in CI, so
``python -m gemma_helpers rehearse notebooks`` runs the GPU profile's own code (its model ids,
recipes, dataset loaders, merge and export calls) with the ``rehearse`` profile and stand-ins. Core
modules never ask whether they are rehearsing; everything is set up here, at the edge, before a
notebook starts:

- the cuts are the ``rehearse`` profile of the recipe registry (:mod:`gemma_helpers.recipes`): the
  gpu profile's run with :data:`~gemma_helpers.recipes.STEPS` optimizer steps, a few generated
  tokens and scored rows, adamw_torch for bitsandbytes' CUDA-only optimisers; each notebook's
  parameters cell prints them (``R.table()``), chosen as any profile is (``GEMMA_PROFILE=rehearse``);
  the outcome bars are declared not applicable to that profile (``env.OUTCOMES_CHECKED``), and each
  unmet one is printed, not asserted;
- random-weight checkpoints of the real architectures at a small width, with the real tokenizer
  quirks (Gemma 3 1B-it's 262,145-entry tokenizer against 262,144 embedding rows), are saved under
  their real hub ids in a local hub mirror (``<cache>/standins/hub/unsloth/gemma-3-1b-it``, ...), and
  the hub datasets' files in their own schemas (from the bundled samples) under
  ``<mirror>/datasets/<id>``; ``GEMMA_HUB_MIRROR`` points the notebooks there, so
  ``gemma_helpers.models`` loads ``unsloth/gemma-3n-E4B-it`` and ``datasets.load_dataset`` reads
  ``mshojaei77/persian-gk`` the normal way and finds the stand-in;
- arXiv is a loopback HTTP server in this process, serving PDFs under the real papers' titles at
  arXiv's paths, reached through ``GEMMA_ARXIV_MIRROR``;
- unsloth's calls and CUDA kernels are not executed. ``gemma_helpers.models`` logs every unsloth call
  of the GPU path, made or not, on the ``gemma_helpers.unsloth`` logger (silent by default). The
  rehearsal puts one first cell into the scratch copy of each notebook it executes, which shows
  that logger's calls not made as ``rehearsal: would call unsloth ...`` lines. That is the least
  magical way found: no module is replaced, so the notebook runs the very functions a user's would (a
  stand-in ``unsloth`` package would have had to re-implement ``FastModel`` and would never be
  imported anyway: without CUDA the code takes the transformers + peft path); the injected cell is
  visible in the executed copy, and notebooks/ is never edited;
- the T4 budget is checked live: the same first cell wraps the two loaders (``load_model``,
  ``load_vision_model``), in that kernel only and without changing what they do, so that every load
  is entered in a :class:`~gemma_helpers.budget.LiveLedger` as the real model it stands for (real-size
  config) and checked before it runs beside every model the notebook still references; a load that
  would not fit a T4 fails the notebook with a BudgetError naming the live models and the line to
  change (:func:`watch_budget`).

``python -m gemma_helpers rehearse notebooks`` runs every notebook so and writes
``outputs/results/rehearsal.json``: each notebook's status, seconds, the calls not executed, the
outcome checks not applied and its budget (the static walk and the live ledger's peak).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from .embedded import EMBEDDED_HUB_ID, cache_root, embedded_path
from .models import REGISTRY, UNSLOTH_LOG, prepare_tokenizer
from .vision import gemma4_processor_without_video

IMAGE_SOFT_TOKEN = "<image_soft_token>"
REAL_VOCAB = 262144  # every Gemma 3 size's embedding rows
WOULD_CALL = "rehearsal: would call "
NOT_APPLIED = "outcome check not applicable"


class StandInUnavailable(RuntimeError):
    """A stand-in that cannot be built in this environment; the runner records the notebook as
    ``"no stand-in"`` with this message instead of failing the run."""


class _WouldCall(logging.Handler):
    """Prints each unsloth call the GPU path did not make (a ``gemma_helpers.unsloth`` record, ``made`` False)."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "made", True) is False:
            print(f"{WOULD_CALL}unsloth {record.unsloth_call}", flush=True)


def show_unsloth_calls() -> None:
    """Print, from now on in this process, every unsloth call that ``gemma_helpers`` logs as not made
    (``rehearsal: would call unsloth ...``); once is enough, a second call adds nothing."""
    UNSLOTH_LOG.setLevel(logging.INFO)
    UNSLOTH_LOG.propagate = False  # the kernel's own handlers would print the record a second time
    if not any(isinstance(h, _WouldCall) for h in UNSLOTH_LOG.handlers):
        UNSLOTH_LOG.addHandler(_WouldCall())


def standins_root() -> Path:
    """The folder that holds the rehearsal's stand-ins."""
    return cache_root() / "standins"


def mirror_root() -> Path:
    """The local hub mirror the rehearsal fills with stand-ins (``GEMMA_HUB_MIRROR`` of the notebooks it runs)."""
    return standins_root() / "hub"


# ---------------------------------------------------------------- checkpoints
def checkpoint(spec) -> Path:
    """The stand-in of a registry entry, built once in the hub mirror under its real hub id."""
    builders = {"gemma3": gemma3_text_checkpoint, "gemma3n": gemma3n_text_checkpoint, "gemma4": gemma4_checkpoint}
    if spec.family not in builders or spec.source == "embedded":
        raise ValueError(f"no rehearsal stand-in for {spec.name} (family {spec.family}, source {spec.source})")
    return builders[spec.family](mirror_root() / spec.source)


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

    The real checkpoint is ``Gemma3nForConditionalGeneration``; its vision tower is timm's MobileNetV5, and
    timm imports torchvision, which cannot be loaded beside the CPU build of torch 2.13.0 installed here:
    PyPI's only torchvision for it (0.28.0) is the CUDA build, whose ``_C.so`` needs ``libc10_cuda.so``
    (``import torchvision``: "operator torchvision::nms does not exist"), and PyTorch's CPU wheel index is not
    a package registry this project installs from. So the stand-in is the text decoder that notebooks 01 and
    02 train."""
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


# Gemma 4's multimodal tokens at the ids its config names (``Gemma4Config``'s defaults, the real
# checkpoints' ids) and its turn markers at Gemma 3's turn ids: id -> (the embedded Gemma 3
# tokenizer's token there, Gemma 4's)
GEMMA4_TOKENS = {105: ("<start_of_turn>", "<|turn>"), 106: ("<end_of_turn>", "<turn|>"),
                 255999: ("<start_of_image>", "<|image>"), 256000: ("<end_of_image>", "<|audio>"),
                 258880: ("<unused2978>", "<|image|>"), 258881: ("<unused2979>", "<|audio|>"),
                 258882: ("<unused2980>", "<image|>"), 258883: ("<unused2981>", "<audio|>"),
                 258884: ("<unused2982>", "<|video|>")}
GEMMA4_ROLES = {"image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
                "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>"}
# Gemma 4's turn format (``<|turn>role ... <turn|>``, the assistant as ``model``, ``<|image|>`` where an
# image goes); E2B / E4B's generation prompt is the bare ``<|turn>model`` opener. The stand-in has no
# thinking mode and says so rather than render a thought channel its vocabulary lacks.
GEMMA4_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if enable_thinking is defined and enable_thinking -%}"
    "{{- raise_exception('the Gemma 4 rehearsal stand-in has no thinking mode') -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- '<|turn>' + role + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] | trim -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}{{- item['text'] | trim -}}"
    "{%- elif item['type'] == 'image' -%}{{- '\\n\\n<|image|>\\n\\n' -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<turn|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|turn>model\\n' -}}{%- endif -%}")


def gemma4_tokenizer():
    """The embedded Gemma 3 tokenizer (262,144 entries) with Gemma 4's multimodal and turn tokens at
    their ids (:data:`GEMMA4_TOKENS`), its ``image_token`` / ``boi_token`` / ... roles, which
    ``Gemma4Processor`` reads, and a chat template in Gemma 4's turn format."""
    import tempfile

    from transformers import AutoTokenizer

    src = embedded_path()
    # renamed in the file's text (each token is written twice: its vocabulary entry and its added-token
    # entry), which is what a fresh tokenizer then reads; parsing the 33 MB JSON would cost seconds
    text = (src / "tokenizer.json").read_text(encoding="utf-8")
    for old, new in GEMMA4_TOKENS.values():
        if text.count(f'"{old}"') != 2:
            raise ValueError(f"{src / 'tokenizer.json'}: expected {old!r} twice (vocabulary and added tokens)")
        text = text.replace(f'"{old}"', f'"{new}"')
        # and special, as Gemma 4's are (Gemma 3's image markers are not)
        text = re.sub(rf'("content": "{re.escape(new)}",[^{{}}]*?"special": )false', r"\1true", text)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "tokenizer.json").write_text(text, encoding="utf-8")
        shutil.copy(src / "tokenizer_config.json", tmp)
        tok = AutoTokenizer.from_pretrained(tmp, extra_special_tokens=GEMMA4_ROLES)
    tok.chat_template = GEMMA4_CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = "<pad>"
    placed = {tid: tok.convert_tokens_to_ids(new) for tid, (_, new) in GEMMA4_TOKENS.items()}
    if any(tid != at for tid, at in placed.items()):
        raise ValueError(f"Gemma 4 stand-in tokenizer: tokens at the wrong ids: {placed}")
    return tok


def gemma4_checkpoint(folder: str | Path, hidden_size: int = 64, layers: int = 2, seed: int = 0,
                      init_range: float = 0.2) -> Path:
    """A random-weight ``Gemma4ForConditionalGeneration`` (Gemma 4's vision encoder at a small width,
    its text decoder with per-layer inputs, 262,144 embedding rows; no audio tower) with its processor:
    :func:`gemma4_tokenizer`, ``Gemma4ImageProcessorPil`` at the real settings (patch 16, pooling 3,
    280 soft tokens per image) and Gemma 4's audio feature extractor, saved as a safetensors folder in
    the real checkpoint's layout (``processor_config.json`` names ``Gemma4Processor``). No video
    processor is saved: it needs torchvision (see :func:`gemma_helpers.vision.gemma4_processor`)."""
    import torch
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    folder = Path(folder)
    if (folder / ".complete").exists():
        return folder
    tok = gemma4_tokenizer()
    text = {"vocab_size": REAL_VOCAB, "vocab_size_per_layer_input": REAL_VOCAB, "hidden_size": hidden_size,
            "hidden_size_per_layer_input": 16, "intermediate_size": 2 * hidden_size, "num_hidden_layers": layers,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "global_head_dim": 32,
            "sliding_window": 128, "layer_types": _layer_types(layers), "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id, "eos_token_id": [tok.eos_token_id, tok.convert_tokens_to_ids("<turn|>")],
            "initializer_range": init_range}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "num_key_value_heads": 2, "head_dim": 16, "patch_size": 16, "pooling_kernel_size": 3,
              "position_embedding_size": 1024}
    ids = {role.replace("_token", "_token_id"): tok.convert_tokens_to_ids(t) for role, t in GEMMA4_ROLES.items()}
    config = Gemma4Config(text_config=text, vision_config=vision, audio_config=None,
                          image_token_id=ids["image_token_id"], boi_token_id=ids["boi_token_id"],
                          eoi_token_id=ids["eoi_token_id"], audio_token_id=ids["audio_token_id"],
                          boa_token_id=ids["boa_token_id"], eoa_token_index=ids["eoa_token_id"],
                          video_token_id=tok.convert_tokens_to_ids("<|video|>"))
    torch.manual_seed(seed)
    model = Gemma4ForConditionalGeneration(config).float()
    model.generation_config.eos_token_id = text["eos_token_id"]
    model.generation_config.pad_token_id = tok.pad_token_id
    return _save(folder, model, gemma4_processor(tok), "Gemma 4 (vision + text, no audio tower), 262,144 embedding "
                 "rows, Gemma4Processor without its video processor")


def gemma4_processor(tok=None):
    """``Gemma4Processor`` without its video processor around ``tok`` (default :func:`gemma4_tokenizer`):
    ``Gemma4ImageProcessorPil`` at the real settings and Gemma 4's audio feature extractor."""
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    tok = tok or gemma4_tokenizer()
    return gemma4_processor_without_video()(
        feature_extractor=Gemma4AudioFeatureExtractor(), image_processor=Gemma4ImageProcessorPil(), tokenizer=tok,
        video_processor=None, chat_template=tok.chat_template)


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
    from .env import REPO_ROOT
    from .jsonl import read_jsonl

    base = [r for r in read_jsonl(REPO_ROOT / "data" / "persian_chat.jsonl", errors="raise") if isinstance(r, dict)
            and isinstance(r.get("messages"), list) and all(isinstance(m, dict) and m.get("content") for m in r["messages"])]
    return [{"messages": [{**m, "content": f"{m['content']} ({i})"} for m in base[i % len(base)]["messages"]]}
            for i in range(400)]


def _dolly_rows() -> list[dict]:
    """databricks/databricks-dolly-15k's schema, enough context-free rows for the GPU split (1,000 + 100)."""
    from .data import dolly
    from .env import REPO_ROOT

    base = dolly.read_jsonl(REPO_ROOT / "data" / "dolly_sample.jsonl", errors="raise")
    return [{**base[i % len(base)], "instruction": f"{base[i % len(base)]['instruction']} ({i})"}
            for i in range(1200 * len(base) // max(len(dolly.context_free(base)), 1))]


DATASETS = {"mshojaei77/persian-gk": _persian_rows, "databricks/databricks-dolly-15k": _dolly_rows}


def dataset_folder(hub_id: str, mirror: str | Path | None = None) -> Path:
    """The stand-in of a hub dataset in the mirror (``<mirror>/datasets/<id>/train.jsonl``, in that
    dataset's schema), written afresh; ``mirror`` defaults to :func:`mirror_root`."""
    if hub_id not in DATASETS:
        raise ValueError(f"no rehearsal stand-in for the dataset {hub_id}; known: {sorted(DATASETS)}")
    folder = Path(mirror or mirror_root()) / "datasets" / hub_id
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".train.jsonl.tmp-{os.getpid()}"
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in DATASETS[hub_id]()), encoding="utf-8")
    os.replace(tmp, folder / "train.jsonl")
    return folder


def arxiv_files() -> dict[str, bytes]:
    """The arXiv stand-ins, at arXiv's own paths (``pdf/<id>``): each of
    :data:`~gemma_helpers.data.papers.ARXIV_PAPERS` under its real title, with the sections of a bundled
    mini-paper, so the download, title check and cleaning code runs as on arXiv."""
    from . import offline
    from .data import papers as gp

    sample = gp.sample()
    return {f"pdf/{p.arxiv_id}": offline.write_pdf(
                None, p.title, [(x["heading"], x["text"]) for x in sample[i % len(sample)]["sections"]],
                authors=sample[i % len(sample)].get("authors", ""), running_header=f"rehearsal stand-in - {p.field}")
            for i, p in enumerate(gp.ARXIV_PAPERS)}


def fill_mirror() -> Path:
    """Every registry model's stand-in (built once) and every hub dataset's, in :func:`mirror_root`."""
    for spec in REGISTRY.values():
        if spec.source != "embedded":
            checkpoint(spec)
    for hub_id in DATASETS:
        dataset_folder(hub_id)
    return mirror_root()


# ---------------------------------------------------------------- the live budget
LIVE_FOLDER = "budget-live"  # <scratch>/outputs/budget-live/NN.json: each notebook's live ledger, as it runs


def stands_for(name: str, _seen: int = 0) -> str | None:
    """The registry model (a :data:`gemma_helpers.budget.MODELS` name) that a load of ``name`` is on the GPU
    profile: a registry name or hub id directly; a folder by what it was made from (a merged folder's
    ``gemma_helpers.json`` names its base, a stand-in in the hub mirror sits under its hub id, a saved
    model's ``config.json`` names its base in ``_name_or_path``); None for anything else (the embedded
    model, a tiny test model), which is counted at its own size."""
    from . import budget
    from .hub import META
    from .models import resolve

    by_source = {spec.source.lower(): spec.name for spec in REGISTRY.values()}
    found = str(name) if str(name) in REGISTRY else by_source.get(str(name).lower())
    if found is not None or str(name) == EMBEDDED_HUB_ID:
        return found if found in budget.MODELS else None
    folder = Path(resolve(str(name))[0]).expanduser()
    if _seen > 3 or not folder.is_dir():
        return None
    try:
        hub_id = folder.resolve().relative_to(mirror_root().resolve()).as_posix()
        if hub_id.lower() in by_source:
            return stands_for(by_source[hub_id.lower()], _seen + 1)
    except ValueError:
        pass
    for file, key in ((META, "base"), ("config.json", "_name_or_path")):
        try:
            base = json.loads((folder / file).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError):
            continue
        if base and str(base) != str(name):
            found = stands_for(str(base), _seen + 1)
            if found:
                return found
    return None


def _caller():
    """The innermost frame outside gemma_helpers (the notebook's line) and that line's text."""
    import inspect
    import linecache

    package = str(Path(__file__).resolve().parent)
    frame = inspect.currentframe()
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame = frame.f_back
    if frame is None:
        return None, ""
    return frame, linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()


def _inner(value, attr: str):
    """``value``'s own attribute or submodule ``attr`` (no ``__getattr__`` delegation), or None."""
    try:
        found = vars(value).get(attr)
        modules = vars(value).get("_modules")
        return found if found is not None else (modules or {}).get(attr)
    except TypeError:  # no __dict__
        return None


def _holders(obj, namespace: dict) -> list[str]:
    """The names in ``namespace`` (the notebook's) that reach ``obj``: itself, or through ``.model`` /
    ``.base_model`` (a training result, a PEFT wrapper) a few attributes deep; a path is named down to its
    first torch module (``run.model``, ``model``)."""
    import types

    import torch

    found = []
    for name, value in list(namespace.items()):
        if name.startswith("_") or value is None or isinstance(value, (str, int, float, bool, type, types.ModuleType)):
            continue
        frontier = [(name, value)]
        for _ in range(4):
            hit = next((path for path, v in frontier if v is obj), None)
            if hit:
                found.append(hit)
                break
            frontier = [(path if isinstance(v, torch.nn.Module) else f"{path}.{attr}", inner)
                        for path, v in frontier for attr in ("model", "base_model")
                        if (inner := _inner(v, attr)) is not None]
    return list(dict.fromkeys(found))


def watch_budget(notebook: str, out: str | Path | None = None):
    """Feed a :class:`gemma_helpers.budget.LiveLedger` with this process's model loads and frees, as the
    notebook makes them: ``gemma_helpers.models.load_model`` and ``gemma_helpers.vision.load_vision_model``
    (and the package's names for them) are wrapped here, in the executed kernel only, so each load is
    checked before it runs with the real model it stands for (:func:`stands_for`, its real-size config
    through :func:`gemma_helpers.budget.architecture`) beside every model the notebook still references, and
    a load that would not fit a T4 raises :class:`~gemma_helpers.budget.BudgetError` naming the live models,
    what holds them and the line to change. The loaded object is watched: when the notebook drops its last
    reference (``model = run.model = None; gh.memory.release()``) its entry goes. ``merging.merge_16bit`` is
    unsloth's shard-by-shard merge on a GPU; without one it merges through a second load, which is this CPU's
    stand-in of that call, not the GPU path's memory, so loads inside it are not counted. The ledger's
    figures are written to ``out`` (JSON) after every load and free. A second call returns the first ledger."""
    import functools
    import inspect
    import weakref

    import gemma_helpers
    from . import budget, env, merging, models, vision

    if isinstance(getattr(models.load_model, "live_ledger", None), budget.LiveLedger):
        return models.load_model.live_ledger
    ledger = budget.LiveLedger(str(notebook))
    objects: dict[str, weakref.ref] = {}
    paused = []
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)

        def write(live):
            out.write_text(json.dumps(live.as_dict(), indent=1) + "\n", encoding="utf-8")

        ledger.listeners.append(write)
        write(ledger)

    def observed(load, four_bit_default):
        signature = inspect.signature(load)

        @functools.wraps(load)
        def wrapper(*args, **kwargs):
            if paused:
                return load(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            name = str(bound.arguments.get("name"))
            four_bit = bool(bound.arguments.get("load_in_4bit", four_bit_default))
            dtype = bound.arguments.get("dtype")
            dtype_bytes = getattr(dtype, "itemsize", None) or budget.FP32_BYTES  # a T4's train dtype: float32
            frame, line = _caller()
            where = f"`{line}`" if line else f"load of {name}"
            namespace = frame.f_globals if frame is not None else {}

            def holders(key):
                obj = objects.get(key, lambda: None)()
                return ", ".join(_holders(obj, namespace)) if obj is not None else ""

            real = stands_for(name)
            if real is not None:
                ledger.admit(real, four_bit=four_bit, dtype_bytes=dtype_bytes, where=where, holders=holders)
            loaded = load(*args, **kwargs)
            model = loaded[0] if isinstance(loaded, tuple) else loaded
            own = None
            if real is None:  # counted at its own size, after the load
                own = sum(p.numel() * p.element_size() for p in model.parameters()) / budget.GB
                ledger.admit(None, gpu_gb=own, where=where, holders=holders)
            key = ledger.hold(model, real, four_bit=four_bit, dtype_bytes=dtype_bytes, gpu_gb=own, where=where)
            objects[key] = weakref.ref(model)
            return loaded

        wrapper.live_ledger = ledger
        return wrapper

    @functools.wraps(merging.merge_16bit)
    def merge_16bit(*args, **kwargs):
        if env.unsloth_available():
            return original_merge(*args, **kwargs)
        paused.append(True)
        try:
            return original_merge(*args, **kwargs)
        finally:
            paused.pop()

    original_merge = merging.merge_16bit
    load_model, load_vision_model = observed(models.load_model, False), observed(vision.load_vision_model, True)
    models.load_model = gemma_helpers.load_model = load_model
    vision.load_vision_model = gemma_helpers.load_vision_model = load_vision_model
    merging.merge_16bit = merge_16bit
    return ledger


# ---------------------------------------------------------------- the runner
# the environment of every notebook run (plus GEMMA_HUB_MIRROR and GEMMA_ARXIV_MIRROR, set by run_notebooks)
SWITCH = {"GEMMA_PROFILE": "rehearse", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
FIRST_CELL = ("# put here by `python -m gemma_helpers rehearse` (its scratch copy only): the unsloth calls that\n"
              "# the GPU path would make and the transformers + peft path makes in their place are printed, and\n"
              "# every model load is checked, as the real model it stands for, against a T4 beside the models alive\n"
              "from gemma_helpers import rehearsal\n"
              "\n"
              "rehearsal.show_unsloth_calls()\n"
              "rehearsal.watch_budget({notebook!r}, {live!r})")


def first_cell(notebook: str, live: str | Path) -> str:
    """:data:`FIRST_CELL` for notebook ``notebook`` (``"02"``), its live ledger written to ``live``."""
    return FIRST_CELL.format(notebook=notebook, live=str(live))


COPIED = ("gemma_helpers", "notebooks", "data", "requirements-local.txt", "requirements-colab.txt",
          "requirements-keras.txt", "pyproject.toml")


def _scratch_repo(root: Path, scratch: Path, first_cell: str = FIRST_CELL) -> Path:
    """A copy of the code, notebooks and data under ``scratch``: the rehearsal's outputs, charts and
    results land there, never over the real runs' (notebook 05 reuses notebook 03's adapter). Each
    notebook starts with ``first_cell``, its ``{notebook}`` and ``{live}`` filled in (:func:`first_cell`)."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for name in COPIED:
        source = root / name
        if source.is_dir():
            shutil.copytree(source, scratch / name, ignore=shutil.ignore_patterns("__pycache__", "*.py[co]"))
        elif source.is_file():
            shutil.copy2(source, scratch / name)
    for notebook in sorted((scratch / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        live = live_file(scratch, notebook.name)
        _with_first_cell(notebook, first_cell.format(notebook=notebook.name[:2], live=str(live)))
    return scratch


def live_file(scratch: Path, notebook: str) -> Path:
    """Where the scratch run of ``notebook`` writes its live ledger (:func:`watch_budget`)."""
    return scratch / "outputs" / LIVE_FOLDER / f"{notebook[:2]}.json"


def _with_first_cell(notebook: Path, cell: str) -> None:
    """Put ``cell`` (:func:`first_cell`, or the GPU check's) at the top of ``notebook`` (a scratch copy)."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(cell, metadata={"tags": ["rehearsal"]}))
    nbformat.write(nb, notebook)


def _said(executed: Path) -> list[str]:
    """The ``rehearsal: ...`` lines a notebook printed (the calls it did not make) and its outcome checks
    not applied."""
    import nbformat

    lines = []
    for cell in nbformat.read(executed, as_version=4).cells:
        for output in cell.get("outputs", []):
            lines += [line for line in output.get("text", "").splitlines() if line.startswith(("rehearsal: ", NOT_APPLIED))]
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


def _run_each(notebooks: list[str], scratch: Path, env: dict, timeout: int, report: dict,
              after=None, deadline: float | None = None) -> None:
    """Run each scratch notebook in its own process; one entry per notebook into ``report``, passed to
    ``after(entry)`` when given. Past ``deadline`` (a ``time.time()``) a notebook is entered as not run."""
    import subprocess
    import sys
    import time

    for name in notebooks:
        started = time.time()
        if deadline is not None:
            if deadline - started < 30:
                entry = {"notebook": name.removesuffix(".ipynb"), "status": "not run", "seconds": 0.0,
                         "reason": "out of time", "budget": budget_entry(name)}
                report["notebooks"].append(entry)
                print(f"{name}: not run, out of time", flush=True)
                if after:
                    after(entry)
                continue
            timeout = min(timeout, int(deadline - started))
        print(f"rehearsing {name} ...", flush=True)
        try:
            done = subprocess.run([sys.executable, "-m", "gemma_helpers", "run", str(scratch / "notebooks" / name)],
                                  cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as late:  # one slow notebook is an entry, not the end of the report
            done = subprocess.CompletedProcess(late.cmd, returncode=-1, stdout="",
                                               stderr=f"{_text(late.stderr)}\n{name}: timed out after {timeout} s")
        seconds = round(time.time() - started, 1)
        entry = {"notebook": name.removesuffix(".ipynb"), "status": "ok" if done.returncode == 0 else "error",
                 "seconds": seconds, "budget": budget_entry(name, live_file(scratch, name))}
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
        if after:
            after(entry)
        print(f"  {entry['status']} in {seconds} s", flush=True)
        if entry["status"] == "error":
            print(entry["error"][-1500:], flush=True)
        elif entry["status"] == "no stand-in":
            print(f"  {entry['reason']}", flush=True)


def budget_entry(notebook: str, live: str | Path | None = None) -> dict:
    """The T4 budget of ``notebook``'s GPU profile as the rehearsal reports it: the static walk (peak GPU GB,
    host RAM GB, minutes, and whether it fits; the notebook checks the same while it runs on the ``rehearse``
    profile, :func:`gemma_helpers.budget.show`) and, from ``live`` (the JSON :func:`watch_budget` wrote in the
    notebook's run), the live ledger: its peak GPU GB over the notebook's real loads and frees, what was alive
    at that peak and each load (``live_peak_gpu_gb``, ``live_alive_at_peak``, ``live_loads``). A notebook whose
    live ledger went over failed its run with the BudgetError."""
    from . import budget

    plan = budget.for_notebook(notebook[:2])
    entry = {"peak_gpu_gb": round(plan.peak_gpu_gb, 2), "host_ram_gb": round(plan.host_ram_gb, 2),
             "disk_gb": round(plan.disk_gb, 2), "minutes": round(plan.minutes, 1), "fits": not plan.problems()}
    try:
        figures = json.loads(Path(live).read_text(encoding="utf-8")) if live else {}
    except (OSError, ValueError):
        figures = {}
    entry["live_peak_gpu_gb"] = figures.get("live_peak_gpu_gb")  # None: the notebook's run wrote no ledger
    entry["live_alive_at_peak"] = figures.get("live_alive_at_peak", [])
    entry["live_loads"] = figures.get("live_loads", [])
    return entry


def run_notebooks(folder: str | Path, only: tuple[str, ...] = (), timeout: int = 900,
                  out: str | Path | None = None, *, mirror=None, first_cell: str = FIRST_CELL,
                  name: str = "rehearsal", after=None, deadline: float | None = None) -> dict:
    """Execute every notebook of ``folder`` with the ``rehearse`` profile on the stand-ins (the hub mirror
    filled and the arXiv server started first), each in a fresh process, and write per-notebook status
    and seconds to ``outputs/results/rehearsal.json``.

    The GPU check (:mod:`gemma_helpers.gpu_check`) runs the same way with its own ``mirror`` (a function
    that fills a hub mirror and returns its folder), ``first_cell``, ``name`` (the scratch folder under
    ``outputs/`` and the results file), ``after`` (called with each notebook's entry) and ``deadline``."""
    import time

    from . import offline
    from .env import ARXIV_MIRROR, HUB_MIRROR, REPO_ROOT
    from .recipes import NEW_TOKENS, ROWS, STEPS
    from .results import save

    folder = Path(folder).resolve()
    root = REPO_ROOT
    scratch = _scratch_repo(root, root / "outputs" / name, first_cell)
    notebooks = sorted(p.name for p in folder.glob("[0-9][0-9]_*.ipynb") if not only or p.name[:2] in only)
    hub = (mirror or fill_mirror)()
    print(f"{name}: stand-ins in the hub mirror {hub}", flush=True)
    with offline.LoopbackServer(arxiv_files()) as arxiv:
        mirrors = {HUB_MIRROR: str(hub), ARXIV_MIRROR: arxiv.url("").rstrip("/")}
        # the scratch copy's package first; a PYTHONPATH already set (packages carried beside) stays after it
        path = os.pathsep.join([str(scratch)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        env = {**os.environ, **SWITCH, **mirrors, "PYTHONPATH": path}
        report = {"switch": " ".join(f"{k}={v}" for k, v in {**SWITCH, **mirrors}.items() if k.startswith("GEMMA")),
                  "standins": str(hub), "steps": STEPS, "new_tokens": NEW_TOKENS, "rows": ROWS,
                  "notebooks": []}
        started_all = time.time()
        _run_each(notebooks, scratch, env, timeout, report, after, deadline)
    if only:  # a partial run updates those notebooks' entries in the last full report
        from .results import RESULTS

        last = Path(out or RESULTS) / f"{name}.json"
        if last.is_file():
            ran = {e["notebook"] for e in report["notebooks"]}
            kept = [e for e in json.loads(last.read_text())["notebooks"] if e["notebook"] not in ran]
            report["notebooks"] = sorted(kept + report["notebooks"], key=lambda e: e["notebook"])
    report["total_seconds"] = round(sum(e["seconds"] for e in report["notebooks"]), 1)
    report["wall_seconds_this_run"] = round(time.time() - started_all, 1)
    path = save(name, report, out)
    print(f"{name}: {sum(e['status'] == 'ok' for e in report['notebooks'])}/{len(report['notebooks'])} ok in "
          f"{report['total_seconds']} s; written to {path}", flush=True)
    return report
