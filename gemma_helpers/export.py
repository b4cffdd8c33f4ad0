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
from pathlib import Path

META = "gemma_helpers.json"  # written beside an adapter by gemma_helpers.train


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


def merge(adapter_dir: str | Path, out_dir: str | Path | None = None, dtype=None) -> Path:
    """Merge a LoRA adapter into a full-precision copy of its base; return the merged folder.

    The folder is written under a temporary name and renamed when complete, so an interrupted
    merge leaves nothing that looks finished."""
    import torch
    from peft import PeftModel

    from .models import check_vocab, load_model

    adapter_dir = Path(adapter_dir)
    config = check_adapter(adapter_dir)
    meta = _meta(adapter_dir)
    out_dir = Path(out_dir) if out_dir else adapter_dir.parent / "merged"
    dtype = dtype or (torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32)
    four_bit = bool(meta.get("load_in_4bit", False))
    base, tokenizer = load_model(config["base_model_name_or_path"], load_in_4bit=four_bit, dtype=torch.float32)
    rows_before = base.get_input_embeddings().weight.shape[0]
    if four_bit:
        base = base.dequantize()  # the exact NF4 values the adapter saw, now as float32
    model = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    model = model.to(dtype)
    if model.get_input_embeddings().weight.shape[0] != rows_before:
        raise RuntimeError("the vocabulary changed size during the merge; refusing to save")
    check_vocab(model, tokenizer)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / META).write_text(json.dumps({"merged_from": str(adapter_dir), "base": config["base_model_name_or_path"],
                                        "dequantized_4bit_base": four_bit, "dtype": str(dtype)}, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir
