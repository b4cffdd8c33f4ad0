"""Merging an adapter into a full-precision base, and the adapter folder the merge reads.

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
from pathlib import Path

from .hub import META


class AdapterError(FileNotFoundError):
    """An adapter folder that is missing or incomplete; the message names the path."""


def check_adapter(adapter_dir: str | Path) -> dict:
    """The adapter's config, or :class:`AdapterError` naming what is wrong with the folder."""
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
    """``(model, tokenizer)``: the base the adapter was trained on (4-bit if it was) with the adapter."""
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
    bfloat16 for Gemma 3 / 3n / 4, and a merge must get the dtype it asks for."""
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
    replace what the merge reads. Checked before anything is loaded or written."""
    from .embedded import EMBEDDED, cache_root
    from .models import hub_id

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

    :func:`load_trained_base` (dequantised when the adapter was trained on a 4-bit base), PEFT's
    ``merge_and_unload``, then :func:`save_merged`. A target that is, contains or lies inside the adapter
    or the base model folder is refused first (:func:`check_merge_target`).

    Notebook 02, section 8; Notebook 05, section 1 (notebook 03, section 3 shows the same steps one by one)."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    out_dir = Path(out_dir) if out_dir else adapter_dir.parent / "merged"
    check_merge_target(adapter_dir, out_dir)
    _, _, base, tokenizer = load_trained_base(adapter_dir)
    rows_before = base.get_input_embeddings().weight.shape[0]
    model = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    if model.get_input_embeddings().weight.shape[0] != rows_before:
        raise RuntimeError("the vocabulary changed size during the merge; refusing to save")
    return save_merged(model, tokenizer, adapter_dir, out_dir, dtype)


def save_merged(model, tokenizer, adapter_dir: str | Path, out_dir: str | Path, dtype=None) -> Path:
    """Save a model merged from ``adapter_dir`` (``merge_and_unload`` done) in ``dtype`` (default bfloat16
    on a GPU that computes it, else float32) with its tokenizer, a ``gemma_helpers.json`` naming the
    adapter and the base, and a model card; return the folder. The folder is written under a temporary
    name and renamed when complete, so an interrupted save leaves nothing that looks finished; a target
    that is, contains or lies inside the adapter or the base model folder is refused
    (:func:`check_merge_target`), and so is one holding files gemma_helpers did not write.

    Notebook 03, section 3."""
    import torch

    from . import env
    from .hub import write_card

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    check_merge_target(adapter_dir, out_dir)
    config, meta = check_adapter(adapter_dir), _meta(adapter_dir)
    dtype = dtype or (torch.bfloat16 if env.bf16_supported() else torch.float32)  # never emulated bf16 (a T4)
    model = model.to(dtype)
    _check_dtype(model, dtype, f"the model merged from {adapter_dir}")
    four_bit = bool(meta.get("load_in_4bit", False))
    out_dir = _save_model(model, tokenizer, out_dir, {"merged_from": str(adapter_dir), "base": config["base_model_name_or_path"],
                                                      "dequantized_4bit_base": four_bit, "dtype": str(dtype),
                                                      **({"train": meta["train"]} if "train" in meta else {})})
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
