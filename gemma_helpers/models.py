"""Loading a language model for LoRA: the registry of names, model + tokenizer, 4-bit, adapters.

The embedded default, ``gemma-3-270m`` (:mod:`gemma_helpers.embedded`), runs offline. Colab targets
are loaded from the hub (or its local mirror, :func:`gemma_helpers.env.hub_mirror`) through unsloth
when a CUDA GPU and unsloth are present, else through transformers + peft; each unsloth call of that
path is logged on the ``gemma_helpers.unsloth`` logger (:func:`log_unsloth`), made or not.
Multimodal models are :mod:`gemma_helpers.vision`'s.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from . import env
from .chat import END_OF_TURN, install_chat_template

from .embedded import EMBEDDED, EMBEDDED_HUB_ID, cache_root, embedded_path

UNSLOTH_LOG = logging.getLogger("gemma_helpers.unsloth")

# LoRA on every linear layer of the decoder: unsloth's and this series' default
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# LoRA on the text decoder of a multimodal Gemma only: a regular expression over module names, because
# the vision tower has q/k/v projections too (and Gemma 4's are Gemma4ClippableLinear, which PEFT rejects)
LANGUAGE_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the model registry: where it comes from, its family and whether it sees images."""

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


def resolve(name: str) -> tuple[str, ModelSpec | None]:
    """A registry name, hub id or local folder -> what ``from_pretrained`` takes. The embedded
    model's hub id (``google/gemma-3-270m``, what saved adapters name as their base) loads the
    embedded copy, so a saved folder names the hub and still loads offline.
    A hub id (a registry entry's or any other) held by the hub mirror (``$GEMMA_HUB_MIRROR``,
    :func:`gemma_helpers.env.hub_mirror`) resolves to that local copy.

    Notebook 01, section 4; Notebook 02, section 2."""
    spec = REGISTRY.get(EMBEDDED if name == EMBEDDED_HUB_ID else name)
    if spec is not None and spec.source == "embedded":
        return str(embedded_path()), spec
    source = spec.source if spec is not None else name
    local = env.hub_mirror(source)
    return (str(local) if local is not None else source), spec


def hub_id(name_or_path: str) -> str:
    """The Hugging Face Hub id a saved folder should name as its base: ``google/gemma-3-270m`` for the
    embedded model (its registry name or its cache folder), the registry's id for a registry name,
    otherwise ``name_or_path`` unchanged (a hub id already, or a local folder only this machine has)."""
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
    """4-bit NF4 with double quantisation (the seed recipes' setting); ``skip_modules`` stay unquantised."""
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
    past the embedding (a token added by hand) raises."""
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
    embedding (a device-side assert on CUDA)."""
    bad = sorted({int(i) for i in ids if int(i) >= rows})
    if bad:
        raise ValueError(f"{where}: token ids {bad[:5]} have no embedding row (the embedding has {rows} rows); "
                         "the text spells out a special token the model was not trained with")


def embedding_rows(model) -> int:
    """The number of rows of the model's input embedding (its vocabulary as trained)."""
    return model.get_input_embeddings().weight.shape[0]


def load_model(name: str = EMBEDDED, load_in_4bit: bool = False, max_seq_length: int = 1024, dtype=None,
               use_unsloth: bool | None = None):
    """``(model, tokenizer)`` for a registry name, hub id or local folder.

    unsloth's ``FastModel`` when a CUDA GPU and unsloth are present (``use_unsloth=False``: never);
    else transformers (bitsandbytes NF4 when ``load_in_4bit``, which also works on a CPU, slowly).
    The training dtype is bf16 where the GPU has it and float32 otherwise, never float16. unsloth
    turns an explicit ``dtype=torch.float32`` into bfloat16 for Gemma 3 / 3n / 4, so a caller that
    needs the dtype it asks for (a merge) passes ``use_unsloth=False``. When unsloth fails to load the
    model, one line says so and transformers loads it instead; the rest of the run stays on that path.

    Notebook 01, section 6; Notebook 02, sections 4 and 8; Notebook 03, sections 2 and 3 (also notebook 06)."""
    path, spec = resolve(name)
    unsloth = env.unsloth_available() if use_unsloth is None else use_unsloth
    if use_unsloth is not False:
        log_unsloth(f"FastModel.from_pretrained(model_name={spec.source if spec else name!r}, max_seq_length="
                    f"{max_seq_length}, load_in_4bit={load_in_4bit}, dtype={dtype})", made=unsloth)
    model = None
    if unsloth:
        try:
            from unsloth import FastModel  # imported only with a GPU: it raises without one

            model, tokenizer = FastModel.from_pretrained(
                model_name=path, max_seq_length=max_seq_length, load_in_4bit=load_in_4bit, dtype=dtype
            )
            tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        except Exception as exc:  # noqa: BLE001 - a release that breaks overnight fails in any way
            if use_unsloth:  # asked for by name: no quiet fallback
                raise
            env.unsloth_failed(f"FastModel.from_pretrained({name!r}) failed ({type(exc).__name__}: {str(exc)[:200]})")
    if model is None:
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


def log_unsloth(call: str, made: bool) -> None:
    """Log one unsloth call of the GPU path on the ``gemma_helpers.unsloth`` logger (level INFO, silent
    unless a handler is set): ``made`` when unsloth runs it, else the call a CUDA GPU with unsloth would
    make where transformers + peft run instead. The record carries ``unsloth_call`` and ``made``."""
    UNSLOTH_LOG.info("%s unsloth %s", "calls" if made else "instead of", call,
                     extra={"unsloth_call": call, "made": made})


def keep_4bit_trainable(model) -> int:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference; return how many layers it touched.

    On a CPU with AVX512-BF16, bitsandbytes 0.50's ``Linear4bit`` converts its weight to a packed
    inference format the first time it runs without gradients (an evaluation or ``generate``), and
    from then on no gradient flows through it: a LoRA trained after a mid-training evaluation (an
    early-stopping check) silently stops learning, every gradient zero. Training code here
    evaluates between steps, so the repacking is switched off (CPUs without AVX512-BF16 never do it)."""
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
    log_unsloth("FastVisionModel.get_peft_model(finetune_vision_layers=False, ...)" if regex else
                f"FastModel.get_peft_model(r={r}, lora_alpha={alpha}, target_modules={target_modules})",
                made=env.unsloth_available())
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


