"""Multimodal Gemma for notebook 04: loading a vision model and its processor (unsloth's vision loader on
a GPU, transformers elsewhere, Gemma 4's processor also without torchvision), the tiny random-weight
Gemma 3 vision model of the CPU profile, and the check that LoRA sits in the language model only.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from . import env
from .embedded import embedded_path
from .models import bnb_config, check_vocab, keep_4bit_trainable, log_unsloth, prepare_tokenizer, resolve

TINY_VISION = "tiny-gemma3-vision"
VISION_PARTS = ("vision_tower", "multi_modal_projector", "embed_vision")  # Gemma 3 / 3n / 4 names


def vision_processor(image_size: int = 64, tokens_per_image: int = 4):
    """A real ``Gemma3Processor`` assembled offline: the embedded Gemma 3 tokenizer (plus the
    ``<image_soft_token>`` the multimodal Gemma 3 checkpoints have at id 262144), Gemma's chat
    template, and a ``Gemma3ImageProcessor`` (PIL backend) at ``image_size``."""
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
    timm model (timm needs torchvision too); the same code trains Gemma 3n / 4 on a GPU."""
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
    log_unsloth(f"FastVisionModel.from_pretrained({spec.source if spec else name!r}, load_in_4bit={load_in_4bit}, "
                f"max_seq_length={max_seq_length}, use_gradient_checkpointing='unsloth')", made=env.unsloth_available())
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


def gemma4_processor_class():
    """transformers' ``Gemma4Processor``, imported also where torchvision is missing.

    transformers 5.17's ``processing_gemma4`` imports two names from ``image_processing_gemma4`` (the
    torchvision image processor): the ``Gemma4ImageProcessorKwargs`` typed dict and the pure-arithmetic
    ``get_aspect_ratio_preserving_size``. ``image_processing_pil_gemma4`` (the PIL backend) defines both,
    with the same source (a test compares them). Without torchvision the first module cannot be imported, so
    its name is bound to the second one before the import; with torchvision nothing is changed."""
    import sys

    from transformers.utils import is_torchvision_available

    name = "transformers.models.gemma4.image_processing_gemma4"
    if not is_torchvision_available() and name not in sys.modules:
        from transformers.models.gemma4 import image_processing_pil_gemma4

        sys.modules[name] = image_processing_pil_gemma4
    from transformers.models.gemma4.processing_gemma4 import Gemma4Processor

    return Gemma4Processor


def gemma4_processor(path: str | Path):
    """The ``Gemma4Processor`` of a checkpoint folder, loaded where torchvision is missing.

    ``AutoProcessor.from_pretrained`` cannot do it there: the processor has a video slot, and
    ``Gemma4VideoProcessor`` (like every transformers video processor) is built on torchvision; in
    transformers 5.17 ``AutoImageProcessor`` itself requires torchvision. This loads the parts from
    the folder with their own classes (the tokenizer through ``AutoTokenizer``, the PIL backend of the
    image processor, ``Gemma4ImageProcessorPil``, and the audio feature extractor) and the folder's
    ``processor_config.json`` into ``Gemma4Processor`` with its video slot empty: a subclass that
    changes nothing but accepting ``video_processor=None``. Images and text go through
    ``Gemma4Processor``'s own code; a call with ``videos=`` fails (video is not used by the series)."""
    from transformers import AutoTokenizer
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    without_video = gemma4_processor_without_video()
    processor_dict, kwargs = without_video.get_processor_dict(str(path))
    parts = [Gemma4AudioFeatureExtractor.from_pretrained(path), Gemma4ImageProcessorPil.from_pretrained(path),
             AutoTokenizer.from_pretrained(path), None]
    return without_video.from_args_and_dict(parts, processor_dict, **kwargs)


@functools.cache
def gemma4_processor_without_video():
    """``Gemma4Processor`` that accepts ``video_processor=None`` (see :func:`gemma4_processor`)."""
    base = gemma4_processor_class()

    class Gemma4ProcessorWithoutVideo(base):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

        def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
            """What ``ProcessorMixin.save_pretrained`` writes (the tokenizer, the chat template,
            ``processor_config.json`` with the other parts and ``processor_class: Gemma4Processor``),
            less the empty video slot, which that method cannot skip."""
            if push_to_hub:
                raise ValueError("a Gemma4Processor without its video processor is not pushed to the hub")
            save_directory = Path(save_directory)
            save_directory.mkdir(parents=True, exist_ok=True)
            self.tokenizer.save_pretrained(save_directory)
            if isinstance(self.chat_template, str):
                (save_directory / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")
            config = {k: v for k, v in self.to_dict().items() if v is not None}
            config["processor_class"] = base.__name__
            path = save_directory / "processor_config.json"
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            return [str(path)]

    return Gemma4ProcessorWithoutVideo
