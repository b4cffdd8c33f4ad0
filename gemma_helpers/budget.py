"""A Colab T4 budget for each notebook's GPU profile, computed before anything heavy runs.

For every model load, training run, merge and export of a notebook (in the notebook's order) the
budget gives the peak GPU memory, host RAM, disk and minutes on a free Colab T4, and
:meth:`Budget.check` says which step does not fit, by how much, and the line to change::

    from gemma_helpers import budget
    b = budget.for_notebook(2)
    print(b.table())
    b.check()  # BudgetError: notebook 02, section 8: load merged 4-bit: 18.7 GB of GPU memory (alive: ...)
               # > 15.0 GB; change: free the trained model before section 8's load of the merged folder ...

Parameters are counted from the real architectures, instantiated on PyTorch's ``meta`` device from
their configs (:data:`MODELS`: the published sizes set explicitly on transformers' config classes;
nothing is downloaded and no weight is allocated), per module kind: the linear layers of the text
stack that bitsandbytes quantises to NF4, and what stays at full width (embeddings, per-layer
embeddings, norms, the modules in :data:`SKIP_4BIT`, vision and audio towers). Every other figure is
a named constant below with its source or, where it is an assumption, says so.

Memory is counted in GB of 2**30 bytes (what nvidia-smi and Colab's meters show).
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import asdict, dataclass, field

GB = 2**30

# ---------------------------------------------------------------- the machine: a free Colab T4
T4_GPU_GB = 15.0  # nvidia-smi on a Colab T4: 15360 MiB (the card's 16 GB less ECC)
COLAB_RAM_GB = 12.7  # a free Colab runtime's RAM meter: 12.7 GB
NOTEBOOK_MINUTES = 60.0  # this project's limit: a notebook runs start to end within an hour on a free T4
COLAB_DISK_GB = 75.0  # assumption: what a free Colab VM (~108 GB disk) leaves free after its image; not measured here
T4_FP32_TFLOPS = 8.1  # NVIDIA T4 datasheet: 8.1 TFLOP/s single precision (65 TFLOP/s fp16 tensor cores are not used)
# Assumption, not measured (no T4 at hand): the share of that peak a float32 LoRA step sustains, with NF4
# weights dequantised for every matrix product, rank-r adapter products too small to fill the GPU,
# element-wise work and gradient checkpointing's recomputation. Large float32 GEMMs reach ~60-70 %.
T4_SUSTAINED = 0.35
STEP_OVERHEAD_S = 0.3  # assumption: per optimizer step, what FLOPs do not count (kernel launches, optimiser, logging)
CUDA_CONTEXT_GB = 0.45  # the CUDA context and cuBLAS/cuDNN workspaces: ~0.3-0.5 GB on a T4, outside torch's allocator
DOWNLOAD_GB_PER_MIN = 3.0  # assumption: ~50 MB/s from the Hugging Face Hub to a Colab VM
HOST_BASE_GB = 3.0  # assumption: a Colab kernel after importing torch, transformers, unsloth and the data
WRITE_GB_PER_MIN = 3.0  # assumption: a merge or GGUF written to a Colab VM's disk, including the conversion
LOAD_GB_PER_MIN = 6.0  # assumption: reading a 16-bit checkpoint from local disk and quantising it on the card
SHARD_GB = 5.0  # a loader holds about one safetensors shard in RAM at a time (save_pretrained's 5 GB shards)

# ---------------------------------------------------------------- bytes per parameter
# bitsandbytes NF4 (load_in_4bit, double quantisation as models.bnb_config sets it): 4 bits a weight, one
# 8-bit absmax per 64-weight block, one float32 absmax per 256 such blocks (Dettmers et al. 2023, QLoRA, 3.2).
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
BF16_BYTES = 2  # the checkpoints' dtype (torch_dtype bfloat16 in each config.json): the download and a 16-bit merge
FP32_BYTES = 4  # a T4 has no bfloat16 (env.train_dtype): activations, LoRA weights and a float32 merge are float32
# What a 4-bit load keeps unquantised (embeddings, per-layer embeddings, norms, SKIP_4BIT, towers) stays in
# 16 bits: unsloth loads the checkpoint's 16-bit weights and casts only the compute (its Gemma 3 / 3n
# notebooks fine-tune E4B in 4-bit on a free T4, which float32 embeddings, 11.6 GB for E4B, would not allow).
UNQUANTISED_BYTES = BF16_BYTES
ADAMW_BYTES = 8  # adamw_torch: two float32 moments a trainable parameter
ADAMW_8BIT_BYTES = 2  # bitsandbytes' 8-bit AdamW (adamw_8bit, paged_adamw_8bit): two 8-bit moments
LORA_BYTES = FP32_BYTES + FP32_BYTES  # each LoRA weight and its gradient, float32
# A training step's activations with gradient checkpointing (on whenever CUDA is, train.py), per token:
#   the checkpointed input of every layer:   layers x hidden x streams (Gemma 3n's AltUp keeps 4)
#   one layer recomputed in the backward:    ACT_HIDDEN_COPIES x hidden + ACT_MLP_COPIES x intermediate
#   logits and their gradient:               LOGIT_COPIES x vocabulary at every position: an upper bound (TRL's
#                                            chunked LM head and unsloth's fused cross-entropy may hold less; the
#                                            output head's FLOPs are also counted at every position)
# each times FP32_BYTES; attention through SDPA's memory-efficient kernel (no sequence x sequence matrix).
ACT_HIDDEN_COPIES = 6  # normed input, q, k, v, attention output, residual
ACT_MLP_COPIES = 4  # gate, up, activation, product
LOGIT_COPIES = 2
# assumption: KerasHub keeps every layer's activations (no checkpointing): ~16 hidden-wide tensors a layer
KERAS_ACT_COPIES = 16

# Kept at full width by a 4-bit load: models.SKIP_4BIT (tests/test_budget.py checks they agree), matched
# from the start of a module's name as transformers does; nn.Embedding is never quantised by bitsandbytes.
SKIP_4BIT = ("lm_head", r".*\.altup\..*")
TOWER_PARTS = ("vision_tower", "audio_tower", "multi_modal_projector", "embed_vision", "embed_audio")
# Gemma 3n's vision tower is timm's MobileNetV5-300M; without timm (the CPU machine) it cannot be built, even
# on meta: Google's "Introducing Gemma 3n: the developer guide" (2025-06-26) names it "MobileNet-V5-300M".
GEMMA3N_VISION_PARAMS = 300_000_000


@dataclass(frozen=True)
class Limits:
    """What a notebook may use: GPU memory, host RAM, disk (GB) and minutes. :data:`T4` is a free Colab T4."""

    gpu_gb: float = T4_GPU_GB
    host_ram_gb: float = COLAB_RAM_GB
    disk_gb: float = COLAB_DISK_GB
    minutes: float = NOTEBOOK_MINUTES


T4 = Limits()


class BudgetError(RuntimeError):
    """A step over a limit; the message names the step, the figure, the limit and the line to change."""


# ---------------------------------------------------------------- the real architectures
@dataclass(frozen=True)
class ModelCard:
    """A registry model's published configuration and the figures to check its count against."""

    name: str
    source: str  # where the sizes come from
    published_params: float  # the published total
    published_note: str
    build: str  # the builder's name in _BUILDERS


MODELS: dict[str, ModelCard] = {m.name: m for m in (
    ModelCard("gemma-3-1b-it", "google/gemma-3-1b-it config.json (Hugging Face, March 2025): Gemma3TextConfig, "
              "26 layers, hidden 1152, MLP 6912, 4 heads / 1 KV head of 256, vocabulary 262144, tied embeddings",
              999_885_952, "Gemma 3 1B: 1.0 B (the model card; safetensors metadata 999,885,952)", "gemma3_1b"),
    ModelCard("gemma-3n-e4b-it", "google/gemma-3n-E4B-it config.json (Hugging Face, June 2025): Gemma3nTextConfig "
              "35 layers, hidden 2048, MLP 16384, 8 heads / 2 KV heads of 256, AltUp 4, LAuReL 64, 15 KV-shared "
              "layers, vocabulary 262400, per-layer embeddings 262144 x 35 x 256; USM audio encoder "
              "(Gemma3nAudioConfig); "
              "MobileNetV5-300M vision", 7.85e9,
              "Gemma 3n E4B: ~8 B raw parameters, ~4 B effective without per-layer embeddings (model card; "
              "Hugging Face's Gemma 3n blog)", "gemma3n_e4b"),
    ModelCard("gemma-4-e4b-it", "google/gemma-4-E4B-it config.json (Hugging Face, April 2026), as NVIDIA "
              "Megatron-Bridge's Gemma 4 E4B recipe and google/gemma.cpp PR 919 (2026-05-21) restate it: 42 layers, "
              "hidden 2560, MLP 10240, 8 heads / 2 KV heads (256 sliding, 512 global), 5 sliding : 1 global, 18 "
              "KV-shared layers, per-layer embeddings 262144 x 42 x 256; Gemma4VisionConfig / Gemma4AudioConfig "
              "defaults (16 x 768 vision, 12 x 1024 audio)", 8.0e9,
              "Gemma 4 E4B: 8 B with embeddings, 4.5 B effective (model card)", "gemma4_e4b"),
)}


@dataclass(frozen=True)
class Architecture:
    """Parameter counts of one model by kind, from the meta-device instantiation."""

    name: str
    quantisable: int  # nn.Linear weights of the text stack that a 4-bit load stores in NF4
    full_width: int  # the rest of the text stack: embeddings, per-layer embeddings, norms, SKIP_4BIT, biases
    towers: int  # vision and audio towers with their projectors (counted, or stated where they cannot be built)
    vision: int  # of towers: the vision tower and its projector
    embeddings: int  # of full_width: nn.Embedding tables (gathers, no matrix product)
    path: int  # weights each token multiplies through in the text stack (linear layers and the output head)
    layers: int
    hidden: int
    streams: int  # hidden states kept per layer (Gemma 3n's AltUp: 4)
    intermediate: int
    vocab: int
    q_dim: int  # attention heads x head dimension
    linears: tuple  # (module name, in_features, out_features) of every nn.Linear, for LoRA's target modules
    notes: tuple = ()

    @property
    def total(self) -> int:
        """Every parameter: text stack and towers."""
        return self.quantisable + self.full_width + self.towers

    def weights_gb(self, four_bit: bool, dtype_bytes: float = UNQUANTISED_BYTES) -> float:
        """GPU memory of the weights, loaded in 4-bit (NF4, the rest at ``UNQUANTISED_BYTES``) or in ``dtype_bytes``."""
        if four_bit:
            return (self.quantisable * NF4_BYTES + (self.full_width + self.towers) * UNQUANTISED_BYTES) / GB
        return self.total * dtype_bytes / GB

    def lora_params(self, r: int, target_modules) -> int:
        """Parameters of a rank-``r`` adapter on ``target_modules`` (PEFT's matching: a string is a regular
        expression over the full module name, a list names module-name suffixes)."""
        if isinstance(target_modules, str):
            pattern = re.compile(target_modules)
            hit = [(i, o) for name, i, o in self.linears if pattern.fullmatch(name)]
        else:
            names = tuple(target_modules)
            hit = [(i, o) for name, i, o in self.linears
                   if name.rsplit(".", 1)[-1] in names and not any(p in name for p in TOWER_PARTS)]
        return sum(r * (i + o) for i, o in hit)


def _config(build: str):
    """The transformers config of a :data:`MODELS` entry, with the published sizes set explicitly."""
    if build == "gemma3_1b":
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig(vocab_size=262_144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
                                num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                                max_position_embeddings=32_768, tie_word_embeddings=True)
    if build == "gemma3n_e4b":
        from transformers import Gemma3nAudioConfig, Gemma3nConfig, Gemma3nTextConfig, Gemma3nVisionConfig

        text = Gemma3nTextConfig(vocab_size=262_400, vocab_size_per_layer_input=262_144, hidden_size=2048,
                                 hidden_size_per_layer_input=256, intermediate_size=[16_384] * 35,
                                 num_hidden_layers=35, num_attention_heads=8, num_key_value_heads=2, head_dim=256,
                                 altup_num_inputs=4, laurel_rank=64, num_kv_shared_layers=15, sliding_window=512,
                                 activation_sparsity_pattern=[0.95] * 10 + [0.0] * 25)
        return Gemma3nConfig(text_config=text.to_dict(), audio_config=Gemma3nAudioConfig().to_dict(),
                             vision_config=Gemma3nVisionConfig(architecture="mobilenetv5_300m_enc").to_dict())
    if build == "gemma4_e4b":
        from transformers import Gemma4AudioConfig, Gemma4Config, Gemma4TextConfig, Gemma4VisionConfig

        text = Gemma4TextConfig(vocab_size=262_144, vocab_size_per_layer_input=262_144, hidden_size=2560,
                                hidden_size_per_layer_input=256, intermediate_size=10_240, num_hidden_layers=42,
                                num_attention_heads=8, num_key_value_heads=2, head_dim=256, global_head_dim=512,
                                num_kv_shared_layers=18, sliding_window=512, tie_word_embeddings=True)
        return Gemma4Config(text_config=text.to_dict(), vision_config=Gemma4VisionConfig().to_dict(),
                            audio_config=Gemma4AudioConfig().to_dict())
    raise KeyError(build)


def config(name: str):
    """The transformers config of the :data:`MODELS` entry ``name`` at its published sizes (built in
    seconds, nothing downloaded): what the budget counts on the meta device and what the GPU check
    builds its random-weight stand-ins from."""
    if name not in MODELS:
        raise KeyError(f"no published configuration for {name!r}; known: {', '.join(MODELS)}")
    return _config(MODELS[name].build)


def _meta_model(build: str):
    """``(model, config, stated, notes)``: the model on the meta device (no memory), its config, and the
    parameters of any part that could not be built (with a note saying so)."""
    import torch

    cfg = _config(build)
    if build == "gemma3_1b":
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(cfg), cfg, 0, ()
    if build == "gemma4_e4b":
        from transformers import Gemma4ForConditionalGeneration

        with torch.device("meta"):
            return Gemma4ForConditionalGeneration(cfg), cfg, 0, ()
    from transformers import Gemma3nForConditionalGeneration
    from transformers.utils import is_timm_available

    if is_timm_available():
        with torch.device("meta"):
            return Gemma3nForConditionalGeneration(cfg), cfg, 0, ()
    # no timm: the same model with every part but the MobileNetV5 tower (text, audio, both embedders)
    from transformers.models.gemma3n import modeling_gemma3n as g

    class _NoVision(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            self.language_model = g.Gemma3nTextModel(config.text_config)
            self.audio_tower = g.Gemma3nAudioEncoder(config.audio_config)
            self.embed_vision = g.Gemma3nMultimodalEmbedder(config.vision_config, config.text_config)
            self.embed_audio = g.Gemma3nMultimodalEmbedder(config.audio_config, config.text_config)

    with torch.device("meta"):
        model = _NoVision(cfg)
    note = (f"vision tower not built (no timm): {GEMMA3N_VISION_PARAMS:,} parameters stated "
            "(MobileNet-V5-300M, Google's Gemma 3n developer guide)")
    return model, cfg, GEMMA3N_VISION_PARAMS, (note,)


@functools.lru_cache(maxsize=None)
def architecture(name: str) -> Architecture:
    """Count ``name``'s parameters by kind from its real architecture on the meta device (seconds, no memory)."""
    import torch

    if name not in MODELS:
        raise KeyError(f"no architecture for {name!r}; the budget knows {', '.join(MODELS)}")
    model, cfg, stated, notes = _meta_model(MODELS[name].build)
    skip = [re.compile(p) for p in SKIP_4BIT]
    owner = {}
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            owner.setdefault(id(p), (mname, module, p))  # a tied weight counts once, under its first owner
    quantisable = full = towers = vision = embeddings = path = 0
    for mname, module, p in owner.values():
        n = p.numel()
        short = mname.split(".", 1)[-1] if mname.startswith("model.") else mname
        if any(part in mname for part in TOWER_PARTS):
            towers += n
            vision += n if "vision" in mname or "multi_modal_projector" in mname else 0
        elif isinstance(module, torch.nn.Linear) and p is module.weight and not any(s.match(short) for s in skip):
            quantisable += n
            path += n
        else:
            full += n
            if isinstance(module, torch.nn.Linear) and p is module.weight:
                path += n
            if isinstance(module, torch.nn.Embedding):
                embeddings += n
    text_cfg = getattr(cfg, "text_config", cfg)
    vocab, hidden = text_cfg.vocab_size, text_cfg.hidden_size
    if getattr(text_cfg, "tie_word_embeddings", True) or not hasattr(model, "lm_head"):
        path += vocab * hidden  # the output head multiplies by the (tied) embedding matrix
    inter = text_cfg.intermediate_size
    linears = tuple((n, m.in_features, m.out_features) for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear))
    q_dim = next(o for n, _, o in linears if n.endswith("layers.0.self_attn.q_proj"))
    return Architecture(name, quantisable, full, towers + stated, vision + stated, embeddings, path,
                        text_cfg.num_hidden_layers, hidden, getattr(text_cfg, "altup_num_inputs", 1),
                        max(inter) if isinstance(inter, list) else inter, vocab, q_dim, linears, notes)


# ---------------------------------------------------------------- what is on the card
@dataclass
class Resident:
    """One model held in memory: its name, GPU and host GB."""

    name: str
    gpu_gb: float
    host_gb: float = 0.0
    what: str = ""


class Ledger:
    """Every model alive at a moment of a notebook: loading one adds it, freeing one removes it, so a
    second model loaded while the first is alive counts both."""

    def __init__(self):
        self.live: dict[str, Resident] = {}

    def load(self, name: str, model: str | None = None, *, four_bit: bool = False, dtype_bytes: float = FP32_BYTES,
             gpu_gb: float | None = None, host_gb: float = 0.0) -> Resident:
        """Hold ``name``: the registry ``model``'s weights (4-bit, or ``dtype_bytes`` a parameter), or ``gpu_gb``
        given. A name already alive is refused: free it first."""
        if name in self.live:
            raise ValueError(f"{name!r} is already alive in the ledger; free it first")
        if gpu_gb is None:
            gpu_gb = architecture(model).weights_gb(four_bit, dtype_bytes)
        what = f"{model} {'4-bit' if four_bit else f'{dtype_bytes * 8:.0f}-bit'}" if model else name
        self.live[name] = Resident(name, gpu_gb, host_gb, what)
        return self.live[name]

    def free(self, name: str) -> None:
        """Release ``name`` (``del model; gc.collect(); torch.cuda.empty_cache()`` in a notebook)."""
        if name not in self.live:
            raise KeyError(f"{name!r} is not alive; alive: {', '.join(self.live) or 'nothing'}")
        del self.live[name]

    def alive(self) -> tuple:
        """What each live model is, in the order loaded."""
        return tuple(r.what for r in self.live.values())

    @property
    def gpu_gb(self) -> float:
        """GB of GPU memory every live model holds."""
        return sum(r.gpu_gb for r in self.live.values())

    @property
    def host_gb(self) -> float:
        """GB of host RAM every live model holds."""
        return sum(r.host_gb for r in self.live.values())


class LiveLedger(Ledger):
    """A :class:`Ledger` fed while a notebook runs, by its real loads and frees: :meth:`admit` checks a load
    before it happens against ``limits`` (the CUDA context and the weights of every model still alive, plus the
    new one) and raises :class:`BudgetError` naming the live models and the line to change; :meth:`hold` records
    the loaded object and frees its entry when the object is garbage-collected (the notebook dropped its last
    reference). The peak, what was alive at it and every load are kept for the results."""

    def __init__(self, notebook: str = "", limits: Limits = T4):
        super().__init__()
        self.notebook, self.limits = notebook, limits
        self.peak_gpu_gb, self.peak_alive = CUDA_CONTEXT_GB, ()
        self.loads: list[dict] = []
        self.listeners: list = []  # called with the ledger after every load and free (a results file written)

    def admit(self, model: str | None, *, four_bit: bool = False, dtype_bytes: float = FP32_BYTES,
              gpu_gb: float | None = None, where: str = "", holders=None) -> float:
        """The GB a load of the registry ``model`` (or of ``gpu_gb``) adds, after checking that it fits beside
        every model still referenced (garbage is collected first); :class:`BudgetError` otherwise. ``where``
        names the load (the notebook's line); ``holders(key)`` names what still references a live model."""
        import gc

        gc.collect()  # a model the notebook no longer references goes now, as gh.memory.release() does
        size = architecture(model).weights_gb(four_bit, dtype_bytes) if gpu_gb is None else gpu_gb
        total = CUDA_CONTEXT_GB + self.gpu_gb + size
        if total > self.limits.gpu_gb:
            what = f"{model} {'4-bit' if four_bit else f'{dtype_bytes * 8:.0f}-bit'}" if model else f"{size:.1f} GB"
            alive = [f"{r.what} ({key}{', held by ' + holders(key) if holders and holders(key) else ''})"
                     for key, r in self.live.items()]
            names = ", ".join(holders(k) for k in self.live if holders and holders(k)) or "the earlier model"
            raise BudgetError(
                f"notebook {self.notebook}, {where or 'a load'}: {total:.1f} GB of GPU memory > "
                f"{self.limits.gpu_gb:.1f} GB (alive: {'; '.join(alive)}; loading: {what}, {size:.1f} GB); change: "
                f"free {names} before this load (drop every reference, e.g. `model = run.model = None`, then "
                "gh.memory.release())")
        return size

    def hold(self, obj, model: str | None, *, four_bit: bool = False, dtype_bytes: float = FP32_BYTES,
             gpu_gb: float | None = None, where: str = "") -> str:
        """Record ``obj`` (the loaded model) as alive; it leaves the ledger when it is garbage-collected.
        Returns its key (``load N: where``)."""
        import weakref

        key = f"load {len(self.loads) + 1}: {where or model}"
        resident = self.load(key, model, four_bit=four_bit, dtype_bytes=dtype_bytes, gpu_gb=gpu_gb)
        weakref.finalize(obj, self._collected, key)
        now = CUDA_CONTEXT_GB + self.gpu_gb
        self.loads.append({"load": key, "model": resident.what, "gpu_gb": round(resident.gpu_gb, 2),
                           "live_gpu_gb": round(now, 2), "alive": list(self.alive())})
        if now > self.peak_gpu_gb:
            self.peak_gpu_gb, self.peak_alive = now, self.alive()
        self._tell()
        return key

    def _collected(self, key: str) -> None:
        if key in self.live:
            self.free(key)
            self._tell()

    def _tell(self) -> None:
        for listener in self.listeners:
            listener(self)

    def as_dict(self) -> dict:
        """The live figures as plain data: the peak GPU GB, what was alive at it, every load, what is alive now."""
        return {"live_peak_gpu_gb": round(self.peak_gpu_gb, 2), "live_alive_at_peak": list(self.peak_alive),
                "live_loads": list(self.loads), "live_alive_now": list(self.alive())}


# ---------------------------------------------------------------- steps and the budget
@dataclass
class Step:
    """One load, training run, merge or export: its figures and the line to change for each."""

    name: str
    gpu_gb: float
    host_ram_gb: float
    disk_gb: float  # written or downloaded by this step
    minutes: float
    detail: str = ""
    live: tuple = ()  # the models alive at this step's peak
    fix_gpu: str = ""
    fix_ram: str = ""
    fix_disk: str = ""
    fix_minutes: str = ""
    minutes_per_step: float = 0.0  # a training run's minutes per optimizer step (0: not a training run)
    fixed_minutes: float = 0.0  # of minutes: what does not scale with the steps (validation, perplexity)


@dataclass
class Budget:
    """A notebook's GPU-profile steps in order: ``budget.for_notebook(2).table()`` and ``.check()`` (a
    :class:`BudgetError` names the step, the figure, the limit and the line to change)."""

    notebook: str
    steps: list = field(default_factory=list)
    assumptions: tuple = ()

    @property
    def peak_gpu_gb(self) -> float:
        """The highest GPU figure of any step."""
        return max((s.gpu_gb for s in self.steps), default=CUDA_CONTEXT_GB)

    @property
    def host_ram_gb(self) -> float:
        """The highest host-RAM figure of any step."""
        return max((s.host_ram_gb for s in self.steps), default=HOST_BASE_GB)

    @property
    def disk_gb(self) -> float:
        """Everything downloaded and written, added up."""
        return sum(s.disk_gb for s in self.steps)

    @property
    def minutes(self) -> float:
        """The steps' minutes added up."""
        return sum(s.minutes for s in self.steps)

    def table(self) -> str:
        """A short text table: step, peak GPU GB, host RAM GB, disk GB, minutes, and the totals."""
        width = max([len(s.name) for s in self.steps] + [37])
        lines = [f"{'notebook ' + self.notebook + ', GPU profile on a T4':<{width}}  GPU GB  RAM GB  disk GB  minutes"]
        rows = [(s.name, s.gpu_gb, s.host_ram_gb, s.disk_gb, s.minutes) for s in self.steps]
        rows.append(("whole notebook (peak, peak, sum, sum)", self.peak_gpu_gb, self.host_ram_gb, self.disk_gb,
                     self.minutes))
        rows.append(("limits (T4)", T4.gpu_gb, T4.host_ram_gb, T4.disk_gb, T4.minutes))
        for name, gpu, ram, disk, minutes in rows:
            lines.append(f"{name:<{width}}  {gpu:6.1f}  {ram:6.1f}  {disk:7.1f}  {minutes:7.1f}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """The figures as plain data (for outputs/results)."""
        return {"notebook": self.notebook, "peak_gpu_gb": self.peak_gpu_gb, "host_ram_gb": self.host_ram_gb,
                "disk_gb": self.disk_gb, "minutes": self.minutes, "steps": [asdict(s) for s in self.steps],
                "assumptions": list(self.assumptions)}

    def problems(self, limits: Limits = T4) -> list[str]:
        """Every figure over ``limits``, each naming the step, the figure, the limit and the line to change."""
        found = []
        for s in self.steps:
            if s.gpu_gb > limits.gpu_gb:
                alive = f" (alive: {', '.join(s.live)})" if s.live else ""
                found.append(f"notebook {self.notebook}, {s.name}: {s.gpu_gb:.1f} GB of GPU memory{alive} > "
                             f"{limits.gpu_gb:.1f} GB; change: {s.fix_gpu}")
            if s.host_ram_gb > limits.host_ram_gb:
                found.append(f"notebook {self.notebook}, {s.name}: {s.host_ram_gb:.1f} GB of host RAM > "
                             f"{limits.host_ram_gb:.1f} GB; change: {s.fix_ram}")
        if self.disk_gb > limits.disk_gb:
            big = max(self.steps, key=lambda s: s.disk_gb)
            found.append(f"notebook {self.notebook}: {self.disk_gb:.1f} GB of disk > {limits.disk_gb:.1f} GB, most "
                         f"in {big.name} ({big.disk_gb:.1f} GB); change: {big.fix_disk}")
        if self.minutes > limits.minutes:
            long = max(self.steps, key=lambda s: s.minutes)
            fix = long.fix_minutes
            if long.minutes_per_step:
                others = self.minutes - long.minutes + long.fixed_minutes
                fit = math.floor((limits.minutes - others) / long.minutes_per_step)
                fix += (f" = {fit} ({long.minutes_per_step:.2f} minutes a step; the other steps take {others:.0f})"
                        if fit > 0 else f": no number of steps fits, the other steps take {others:.0f} minutes")
            found.append(f"notebook {self.notebook}: {self.minutes:.0f} minutes > {limits.minutes:.0f}, most in "
                         f"{long.name} ({long.minutes:.0f} minutes); change: {fix}")
        return found

    def check(self, limits: Limits = T4) -> "Budget":
        """Raise :class:`BudgetError` listing every figure over ``limits``; return the budget when it fits."""
        found = self.problems(limits)
        if found:
            raise BudgetError("; ".join(found))
        return self


# ---------------------------------------------------------------- the arithmetic of one step
def tflops_minutes(flops: float) -> float:
    """Minutes for ``flops`` at :data:`T4_SUSTAINED` of the T4's float32 peak."""
    return flops / (T4_FP32_TFLOPS * 1e12 * T4_SUSTAINED) / 60


def activation_gb(arch: Architecture, batch: int, seq: int) -> float:
    """Activations of one micro-batch with gradient checkpointing, in GB (the formula above
    ACT_HIDDEN_COPIES)."""
    per_token = (arch.layers * arch.hidden * arch.streams + ACT_HIDDEN_COPIES * arch.hidden
                 + ACT_MLP_COPIES * arch.intermediate + LOGIT_COPIES * arch.vocab)
    return batch * seq * per_token * FP32_BYTES / GB


def training_flops(arch: Architecture, tokens: float, seq: int) -> float:
    """FLOPs of LoRA training on ``tokens`` tokens of rows ``seq`` long: per token 2 x path forward, 2 x path
    recomputed under checkpointing, 2 x path for the gradients of the activations through the frozen weights
    (no weight gradients: they are frozen) = 6 x path, plus attention 4 x (2 x layers x q_dim x seq / 2)
    (QK and AV over a causal half-context, forward, recompute and a backward twice the forward); the adapter's
    own products (r << hidden) are left out."""
    attention = 2 * arch.layers * arch.q_dim * seq / 2
    return tokens * (6 * arch.path + 4 * attention)


def train_step(ledger: Ledger, name: str, model, run, tokens_per_row: float, rows: float, *, recipe: str,
               longest: int | None = None, extra_flops: float = 0.0, eval_tokens: float = 0.0,
               eval_tokens_per_step: float = 0.0, fix_gpu: str = "", fix_minutes: str = "") -> Step:
    """A training run of ``rows`` rows of ``tokens_per_row`` tokens on average (time) and ``longest`` tokens at
    most (memory; default the recipe's ``max_seq_length``, which cuts longer rows) on ``model``, alive in
    ``ledger``, with the recipe ``run``'s LoRA, batch and optimiser; ``eval_tokens`` are scored forward only
    (validation, perplexity) once, ``eval_tokens_per_step`` every optimizer step (a validation loss every
    ``eval_steps`` steps, spread). ``model`` is a registry name or an :class:`Architecture`."""
    arch = model if isinstance(model, Architecture) else architecture(model)
    lora = arch.lora_params(run["r"], run["target_modules"])
    optim_bytes = ADAMW_8BIT_BYTES if "8bit" in str(run.get("optim", "adamw_torch")) else ADAMW_BYTES
    lora_gb = lora * (LORA_BYTES + optim_bytes) / GB
    cut = int(run.get("max_seq_length", 512))
    seq, longest = min(int(tokens_per_row), cut), min(int(longest or cut), cut)
    acts = activation_gb(arch, run["batch_size"], longest)
    steps = max(1, math.ceil(rows / (run["batch_size"] * run.get("grad_accum", 1))))
    flops = training_flops(arch, rows * seq, seq) + extra_flops + steps * eval_tokens_per_step * 2 * arch.path
    train_minutes = tflops_minutes(flops) + steps * STEP_OVERHEAD_S / 60
    eval_minutes = tflops_minutes(eval_tokens * 2 * arch.path)
    return Step(name, CUDA_CONTEXT_GB + ledger.gpu_gb + lora_gb + acts, HOST_BASE_GB + ledger.host_gb, 0.0,
                train_minutes + eval_minutes,
                f"{steps} steps, {rows:g} rows x {seq} tokens (longest {longest}), LoRA {lora:,} parameters "
                f"({lora_gb:.2f} GB with gradients and optimiser), activations {acts:.2f} GB, "
                f"scoring {eval_minutes:.1f} min", ledger.alive(),
                fix_gpu=fix_gpu or f"recipes.py: {recipe} gpu max_seq_length or batch_size",
                fix_ram=f"recipes.py: {recipe} gpu batch_size",
                fix_minutes=fix_minutes or f"recipes.py: {recipe} gpu max_steps",
                minutes_per_step=train_minutes / steps, fixed_minutes=eval_minutes)


def load_step(ledger: Ledger, name: str, step: str, model: str, four_bit: bool, *, downloaded: set, fix_gpu: str,
              dtype_bytes: float = FP32_BYTES) -> Step:
    """Load ``model`` as ``name`` into ``ledger``: its 16-bit checkpoint downloaded (once per notebook: a model in
    ``downloaded`` is in the cache), one shard of it in host RAM at a time, and every model alive on the card."""
    arch = architecture(model)
    checkpoint = arch.total * BF16_BYTES / GB
    download = 0.0 if model in downloaded else checkpoint
    downloaded.add(model)
    ledger.load(name, model, four_bit=four_bit, dtype_bytes=dtype_bytes)
    return Step(step, CUDA_CONTEXT_GB + ledger.gpu_gb, HOST_BASE_GB + ledger.host_gb + min(SHARD_GB, checkpoint),
                download, download / DOWNLOAD_GB_PER_MIN + checkpoint / LOAD_GB_PER_MIN,
                f"{arch.total / 1e9:.2f} B parameters, {ledger.live[name].gpu_gb:.1f} GB on the card", ledger.alive(),
                fix_gpu=fix_gpu, fix_ram="load with low_cpu_mem_usage (one shard at a time)",
                fix_disk="clear ~/.cache/huggingface between notebooks")


def merge_step(ledger: Ledger, step: str, model: str, *, dtype_bytes: float, on_gpu: bool, fix_gpu: str) -> Step:
    """A merge that writes ``model`` in ``dtype_bytes`` a parameter: on the GPU (gh.merge: the base reloaded in
    4-bit and dequantised there, a full copy beside every live model) or layer by layer (unsloth's
    merged_16bit, one layer's weights at a time on the card)."""
    arch = architecture(model)
    size = arch.total * dtype_bytes / GB
    gpu = CUDA_CONTEXT_GB + ledger.gpu_gb + (size if on_gpu else size / arch.layers)
    return Step(step, gpu, HOST_BASE_GB + ledger.host_gb + min(SHARD_GB, size), size, size / WRITE_GB_PER_MIN,
                f"writes {size:.1f} GB ({dtype_bytes * 8:.0f}-bit)", ledger.alive(), fix_gpu=fix_gpu,
                fix_ram="save with a smaller max_shard_size",
                fix_disk=f"delete the merged folder after use ({size:.0f} GB)")


# ---------------------------------------------------------------- the notebooks' GPU profiles
# Rows and their tokens where a recipe does not fix them: stated, not measured (the data is not at hand)
PERSIAN_ROWS = 738 * 8  # mshojaei77/persian-gk: the seed notebook's 738 steps of 8 conversations, one epoch
PERSIAN_TOKENS = 512  # assumption: a Persian general-knowledge conversation, half of the T4's 1024-token cut
# notebook 01, section 4: a row is the title, up to two sentences (<= 45 words each) and a one-word answer
PAPERS_TOKENS = 100  # assumption: a typical row with the chat template
PAPERS_LONGEST = 200  # assumption: two 45-word sentences, a long title and the template
XYLANDIA_TOKENS = 48  # a question, the fact and <end_of_turn> (~30-60 tokens with the chat template)
XYLANDIA_LONGEST = 64  # data/xylandia.json: its questions and replay paragraphs are at most 30 words
XYLANDIA_QUESTIONS, XYLANDIA_REPLAY = 5, 10  # data/xylandia.json: training questions, replay paragraphs
DOLLY_TOKENS = 256  # assumption: a context-free Dolly instruction and response (KerasHub pads each to 512)
FRAMES_TRAIN_CLIPS = 36  # notebook 04 without CLIPS_DIR: 8 synthetic clips x 6 actions, 25 % held out
FRAMES_TEXT_TOKENS = 40  # the prompt, the answer and the template around the frames
GEMMA4_IMAGE_TOKENS = 280  # Gemma 4's default soft tokens per image (its image processor's budget)
GEMMA4_PATCHES_PER_TOKEN = 9  # pooling_kernel_size 3 (Gemma4VisionConfig): 3 x 3 patches a soft token
GGUF_BYTES = {"f16": 2.0, "Q8_0": 8.5 / 8, "Q4_K_M": 4.85 / 8}  # llama.cpp's bits per weight of each type


def _number(notebook) -> str:
    """``"02"`` for ``2``, ``"02"``, ``"02_persian"`` or ``"persian"``; a KeyError names what is accepted."""
    text = str(notebook).strip().lower()
    digits = re.match(r"\d+", text)
    if digits and 0 <= int(digits.group()) <= 6:
        return f"{int(digits.group()):02d}"
    if not digits:
        for number, key in ((1, "paper"), (2, "persian"), (3, "xylandia"), (4, "frame"), (5, "gguf"), (6, "dolly"),
                            (0, "install")):
            if key in text:
                return f"{number:02d}"
    raise KeyError(f"no notebook {notebook!r}: give 0 to 6, '02' or a name such as '02_persian'")


def _papers(run, ledger, downloaded):
    """Notebook 01: E4B in 4-bit (section 6), trained with a validation loss every eval_steps (section 7)."""
    r = run("papers")
    load = load_step(ledger, "model", "section 6: load E4B 4-bit", r["model"], r["load_in_4bit"],
                     downloaded=downloaded, fix_gpu="recipes.py: papers gpu load_in_4bit")
    validation = r["eval_items"]["validation"] * PAPERS_TOKENS  # the validation loss, every eval_steps steps
    scoring = 2 * sum(r["eval_items"].values()) * PAPERS_TOKENS  # sections 6 and 8: every split, before and after
    rows = r["max_steps"] * r["batch_size"] * r["grad_accum"]
    return [load, train_step(ledger, "section 7: train", r["model"], r, PAPERS_TOKENS, rows, recipe="papers",
                             longest=PAPERS_LONGEST, eval_tokens=scoring + 2 * validation,
                             eval_tokens_per_step=validation / max(r["eval_steps"], 1))]


def _persian(run, ledger, downloaded, free_trained: bool = True):
    """Notebook 02: E4B in 4-bit (section 4), one epoch (section 6), a 16-bit merge and the merged model
    loaded in 4-bit while the trained one is alive (section 8)."""
    r = run("persian")
    steps = [load_step(ledger, "model", "section 4: load E4B 4-bit", r["model"], r["load_in_4bit"],
                       downloaded=downloaded, fix_gpu="recipes.py: persian gpu load_in_4bit")]
    rows = (r["max_steps"] * r["batch_size"] * r["grad_accum"] if r.get("max_steps", -1) > 0
            else math.ceil(PERSIAN_ROWS * r["epochs"]))
    perplexity = 2 * r["holdout"] * PERSIAN_TOKENS  # before (section 5) and after training, forward only
    steps.append(train_step(ledger, "section 6: train", r["model"], r, PERSIAN_TOKENS, rows, recipe="persian",
                            eval_tokens=perplexity))
    steps.append(merge_step(ledger, "section 8: merge 16-bit", r["model"], dtype_bytes=BF16_BYTES, on_gpu=False,
                            fix_gpu="merge on the CPU"))
    if free_trained:
        ledger.free("model")  # section 8: `model = run.model = None; gh.memory.release()` before the merged load
    steps.append(load_step(ledger, "merged", "section 8: load merged 4-bit", r["model"], True, downloaded=downloaded,
                           fix_gpu="free the trained model before section 8's load of the merged folder "
                                   "(del run, model; gc.collect(); torch.cuda.empty_cache())"))
    return steps


def _xylandia(run, ledger, downloaded):
    """Notebook 03: the 1B in 4-bit, the seed recipe, a fresh base (the first still held by ``seed_run``), the
    retention recipe at its most epochs, a float32 merge on the card and the merged model loaded."""
    seed, r = run("xylandia-seed"), run("xylandia-retention")
    steps = [load_step(ledger, "model", "load 1B 4-bit", seed["model"], seed["load_in_4bit"], downloaded=downloaded,
                       fix_gpu="recipes.py: xylandia-seed gpu load_in_4bit")]
    steps.append(train_step(ledger, "section 1: train (seed recipe)", seed["model"], seed, XYLANDIA_TOKENS,
                            XYLANDIA_QUESTIONS * seed["repeats"] * seed["epochs"], recipe="xylandia-seed",
                            longest=XYLANDIA_LONGEST))
    ledger.live["seed_run.model"] = ledger.live.pop("model")  # `model` is rebound; seed_run keeps the first
    steps.append(load_step(ledger, "model", "section 2: load a fresh 1B 4-bit", r["model"], r["load_in_4bit"],
                           downloaded=downloaded, fix_gpu="free seed_run.model before section 2's load"))
    rows = (XYLANDIA_QUESTIONS * r["repeats"] + XYLANDIA_REPLAY * r["replay_repeats"]) * r["epochs"]
    steps.append(train_step(ledger, "section 2: train (retention, at most)", r["model"], r, XYLANDIA_TOKENS, rows,
                            recipe="xylandia-retention", longest=XYLANDIA_LONGEST))
    steps.append(merge_step(ledger, "section 3: merge float32", r["model"], dtype_bytes=FP32_BYTES, on_gpu=True,
                            fix_gpu="free seed_run.model before section 3"))
    steps.append(load_step(ledger, "merged", "section 3: load merged float32", r["model"], False,
                           downloaded=downloaded, fix_gpu="free seed_run.model before section 3"))
    return steps


def _frames(run, ledger, downloaded):
    """Notebook 04: Gemma 4 E4B in 4-bit through the vision loader, trained on the synthetic clips' frames
    (the vision tower runs forward only: it is frozen)."""
    r = run("frames")
    load = load_step(ledger, "model", "load Gemma 4 E4B 4-bit", r["model"], True, downloaded=downloaded,
                     fix_gpu="recipes.py: frames gpu model")
    arch = architecture(r["model"])
    tokens = r["n_frames"] * GEMMA4_IMAGE_TOKENS + FRAMES_TEXT_TOKENS
    rows = FRAMES_TRAIN_CLIPS * r["epochs"]
    vision = 2 * arch.vision * r["n_frames"] * GEMMA4_IMAGE_TOKENS * GEMMA4_PATCHES_PER_TOKEN * rows
    return [load, train_step(ledger, "train", r["model"], {**r, "max_seq_length": tokens}, tokens, rows,
                             recipe="frames", extra_flops=vision)]


def _export(run, ledger, downloaded):
    """Notebook 05: notebook 03's adapter (trained here when absent), a float32 merge, GGUF files, and the
    trained base with its GGUF for the LoRA stage."""
    r = run("xylandia-retention")
    steps = [load_step(ledger, "model", "xylandia_adapter: load 1B (if 03's is absent)", r["model"],
                       r["load_in_4bit"], downloaded=downloaded, fix_gpu="run notebook 03 first")]
    rows = (XYLANDIA_QUESTIONS * r["repeats"] + XYLANDIA_REPLAY * r["replay_repeats"]) * r["epochs"]
    steps.append(train_step(ledger, "xylandia_adapter: train (if absent)", r["model"], r, XYLANDIA_TOKENS, rows,
                            recipe="xylandia-retention", longest=XYLANDIA_LONGEST))
    ledger.free("model")  # xylandia_adapter returns a path: its model goes out of scope
    steps.append(merge_step(ledger, "section 1: merge float32", r["model"], dtype_bytes=FP32_BYTES, on_gpu=True,
                            fix_gpu="gh.merge(..., dtype=torch.bfloat16)"))
    total = architecture(r["model"]).total
    for kind, size in GGUF_BYTES.items():
        gb = total * size / GB
        steps.append(Step(f"section 2: GGUF {kind}", CUDA_CONTEXT_GB, HOST_BASE_GB + min(SHARD_GB, gb), gb,
                          gb / WRITE_GB_PER_MIN, "llama.cpp on the CPU", fix_disk="CONVERTER_OUTTYPES / QUANTS"))
    base = total * FP32_BYTES / GB
    steps.append(Step("section 3: trained base + f16 GGUF", CUDA_CONTEXT_GB + base, HOST_BASE_GB + SHARD_GB,
                      base + total * GGUF_BYTES["f16"] / GB, base / WRITE_GB_PER_MIN,
                      "save_trained_base (float32) and its GGUF", fix_gpu="LORA_STAGE = False",
                      fix_disk="LORA_STAGE = False"))
    return steps


def _dolly(run, ledger, downloaded):
    """Notebook 06: the 1B in float32 trained with transformers, freed (``del model, run``), then KerasHub's
    Gemma 3 1B in float32 with ``enable_lora`` and ``fit`` (no gradient checkpointing, rows padded)."""
    r = run("dolly")
    steps = [load_step(ledger, "model", "transformers: load 1B float32", r["model"], False, downloaded=downloaded,
                       fix_gpu="load_in_4bit=True")]
    steps.append(train_step(ledger, "transformers: train", r["model"], r, DOLLY_TOKENS, r["n_train"] * r["epochs"],
                            recipe="dolly", fix_minutes="recipes.py: dolly gpu n_train"))
    ledger.free("model")  # `del model, run`
    arch = architecture(r["model"])
    weights = arch.total * FP32_BYTES / GB
    ledger.load("keras", gpu_gb=weights)
    steps.append(Step("Keras: load 1B float32", CUDA_CONTEXT_GB + ledger.gpu_gb, HOST_BASE_GB + weights, 0.0,
                      weights / LOAD_GB_PER_MIN, "KerasHub from_preset('hf://...'): float32 on the host first",
                      ledger.alive(), fix_gpu="del the transformers model first", fix_ram="load on the GPU directly"))
    seq, rows = r["max_seq_length"], r["n_train"] * r["epochs"]
    lora_gb = arch.lora_params(r["r"], r["target_modules"]) * (LORA_BYTES + ADAMW_BYTES) / GB
    per_token = arch.layers * arch.hidden * KERAS_ACT_COPIES + LOGIT_COPIES * arch.vocab
    acts = r["batch_size"] * seq * per_token * FP32_BYTES / GB
    minutes = tflops_minutes(rows * seq * 4 * arch.path) + rows * STEP_OVERHEAD_S / 60  # no recompute: 2 + 2
    steps.append(Step("Keras: fit", CUDA_CONTEXT_GB + ledger.gpu_gb + lora_gb + acts, HOST_BASE_GB + weights, 0.0,
                      minutes, f"{rows} rows x {seq} padded tokens", ledger.alive(),
                      fix_gpu="recipes.py: dolly gpu max_seq_length", fix_minutes="recipes.py: dolly gpu n_train",
                      minutes_per_step=minutes / rows))
    return steps


NOTEBOOKS = {"00": lambda run, ledger, downloaded: [], "01": _papers, "02": _persian, "03": _xylandia,
             "04": _frames, "05": _export, "06": _dolly}


def for_notebook(notebook, runs: dict | None = None, walk=None) -> Budget:
    """Walk notebook ``notebook``'s GPU-profile steps in order with a :class:`Ledger` (``2``, ``"02"`` or
    ``"02_persian"``). ``runs`` replaces a recipe's numbers (``{"persian": {...}}``); by default each is
    ``recipes.get(name, profile="gpu")``. ``walk`` replaces the notebook's walker (:data:`NOTEBOOKS`), to
    budget a variant of the notebook."""
    number = _number(notebook)
    runs = dict(runs or {})

    def run(name):
        if name not in runs:
            from .recipes import get  # the one import from the package: the recipes are what is budgeted

            runs[name] = get(name, profile="gpu")
        return runs[name]

    assumptions = (f"T4 {T4_FP32_TFLOPS} TFLOP/s float32 at {T4_SUSTAINED:.0%} sustained",
                   f"CUDA context {CUDA_CONTEXT_GB} GB", f"downloads {DOWNLOAD_GB_PER_MIN} GB/min",
                   f"host RAM before any model {HOST_BASE_GB} GB", f"unquantised weights {UNQUANTISED_BYTES} bytes")
    return Budget(number, (walk or NOTEBOOKS[number])(run, Ledger(), set()), assumptions)


CHECKED_PROFILES = ("gpu", "rehearse")  # profiles that run the GPU path: the budget stops them before a step that cannot fit


def show(notebook, R=None) -> Budget:
    """Print notebook ``notebook``'s T4 budget (the short table) before anything heavy runs; on a profile
    that runs the GPU path (``gpu``, and ``rehearse``, its cut run on a CPU) also check it, so a step that would
    exceed 15 GB of GPU memory, Colab's RAM or the hour stops the notebook here with the line to change.
    ``R``, the notebook's recipe (:func:`gemma_helpers.recipes.get` with the notebook's overrides), is
    budgeted as it is on the ``gpu`` profile; elsewhere the registry's gpu numbers are.

    Notebook 02, "Parameters" (the same line in notebooks 01 and 03 to 06)."""
    profile = getattr(R, "profile", None)
    runs = {R.recipe.name: R} if profile == "gpu" else None
    budget = for_notebook(notebook, runs=runs)
    print(budget.table())
    if profile in CHECKED_PROFILES:
        budget.check()
    return budget
