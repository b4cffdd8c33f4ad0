"""Local stand-ins for what the GPU profile downloads, for its rehearsal on a CPU.

The GPU profile of every notebook loads hub checkpoints (Gemma 3 1B-it, Gemma 3n E4B, Gemma 4 E4B)
through unsloth and hub datasets. None of that can be reached here or in CI, so the rehearsal runs
the GPU profile's own code path against stand-ins: random-weight checkpoints of the real
architectures at a small width, saved as safetensors folders, carrying the real tokenizer quirks
(Gemma 3 1B-it's 262,145-entry tokenizer against 262,144 embedding rows). One switch selects them:
``GEMMA_REHEARSAL=1`` (with ``GEMMA_PROFILE=gpu``); no notebook is edited for it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .models import cache_root, embedded_path, prepare_tokenizer

IMAGE_SOFT_TOKEN = "<image_soft_token>"
REAL_VOCAB = 262144  # every Gemma 3 size's embedding rows


def rehearsing() -> bool:
    """``GEMMA_REHEARSAL=1``: the GPU profile runs on the stand-ins of this module."""
    return os.environ.get("GEMMA_REHEARSAL", "").strip() in ("1", "true", "yes")


def standins_root() -> Path:
    return cache_root() / "standins"


def gemma3_text_tokenizer(extra_special: tuple[str, ...] = (IMAGE_SOFT_TOKEN,)):
    """The embedded Gemma 3 tokenizer plus ``extra_special`` special tokens: with the default, the
    1B-it layout (262,145 entries, ``<image_soft_token>`` at id 262144)."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_path())
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in extra_special], special_tokens=True)
    prepare_tokenizer(tok)
    return tok


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
        head_dim=32, sliding_window=128, layer_types=(["sliding_attention", "full_attention"] * layers)[:layers],
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        # wider than the real 0.02, so that a tiny width's logits are not all near zero
        initializer_range=init_range)
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config).float()
    return _save(folder, model, tok, "Gemma 3 1B-it layout: 262,144 embedding rows, 262,145 tokenizer entries")


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
