"""Environment: pins, the environment report, hardware capability and the run profile.

The profile decides the size of a run: ``gpu`` (Colab / a CUDA GPU, the seed recipes at
full size) or ``cpu`` (this machine and CI: the embedded Gemma 3 270M, small bundled data).
``GEMMA_PROFILE=cpu|gpu|rehearse`` overrides the detection; ``rehearse`` is the ``gpu`` profile's
code path, models and data cut to a few steps, tokens and rows (``python -m gemma_helpers rehearse``
runs it on a CPU against local stand-ins found through the mirror settings below).

Mirrors: ``GEMMA_HUB_MIRROR`` names a folder of local copies of Hugging Face Hub repositories, laid
out as the hub's addresses are (``<mirror>/<owner>/<model>``, ``<mirror>/datasets/<owner>/<dataset>``,
each a clone of that repository); a model or dataset found there is read from there, one that is not
from the hub. ``GEMMA_ARXIV_MIRROR`` is a base URL that serves arXiv's paths (``<mirror>/pdf/<id>``).
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# the random seed of every run: unsloth's notebooks' random_state, which the seed projects copied
SEED = 3407
REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILES = ("gpu", "cpu", "rehearse")
# Whether a profile's runs are held to a notebook's outcome bars (results.expect): the rehearse profile
# trains random-weight stand-ins for 2 steps, which learn nothing; its verdicts are printed as not
# applicable, never asserted and never hidden
OUTCOMES_CHECKED = {"gpu": True, "cpu": True, "rehearse": False}
HUB_MIRROR = "GEMMA_HUB_MIRROR"  # a folder of local hub copies (see above)
ARXIV_MIRROR = "GEMMA_ARXIV_MIRROR"  # a base URL serving arXiv's /pdf/<id> paths

# Packages the two requirement files must pin identically (unsloth caps them).
SHARED_PINS = ("transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes")

_PIN = re.compile(r"^\s*([A-Za-z0-9_.\-\[\]]+)\s*==\s*([^\s;#]+)")


def parse_pins(path: str | Path) -> dict[str, str]:
    """``name -> version`` for every ``name==version`` line of a requirements file.

    Names are normalised (lower case, ``_`` and ``.`` as ``-``, extras dropped)."""
    pins: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0]
        # pip options such as --no-deps may precede the requirement
        parts = [p for p in line.split() if not p.startswith("-")]
        for part in parts:
            m = _PIN.match(part.strip("'\""))
            if m:
                pins[normalise(m.group(1))] = m.group(2)
    return pins


def normalise(name: str) -> str:
    """A distribution name as pip compares it (lower case, runs of -_. as one -, no extras)."""
    return re.sub(r"[-_.]+", "-", name.split("[", 1)[0]).lower()


def pin_mismatches(local: str | Path | None = None, colab: str | Path | None = None) -> list[str]:
    """Messages for each shared package whose pins differ (or is missing) between the files."""
    local_pins = parse_pins(local or REPO_ROOT / "requirements-local.txt")
    colab_pins = parse_pins(colab or REPO_ROOT / "requirements-colab.txt")
    problems = []
    for name in SHARED_PINS:
        a, b = local_pins.get(name), colab_pins.get(name)
        if a is None or b is None:
            problems.append(f"{name}: pinned in local={a!r}, colab={b!r}; both files must pin it")
        elif a != b:
            problems.append(f"{name}: local pins {a}, colab pins {b}")
    return problems


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def matches_pin(installed: str | None, pinned: str | None) -> bool:
    """An installed version satisfies an ``==`` pin; a local label (``2.13.0+cpu``) is ignored."""
    if pinned is None:
        return True
    return installed is not None and installed.split("+", 1)[0] == pinned.split("+", 1)[0]


def cuda_available() -> bool:
    """True when torch is installed and sees a CUDA GPU."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


UNSLOTH_SETTING = "GEMMA_UNSLOTH"  # "auto" (default), "1": unsloth or stop, "0": transformers + peft + bitsandbytes
_UNSLOTH_FAILED: list[str] = []  # why unsloth was given up in this process, once it was


def unsloth_failed(what: str) -> None:
    """Give unsloth up for the rest of this process after ``what`` failed (its import, or a model it
    could not load), printing the one line that says which path runs now. With ``GEMMA_UNSLOTH=1``
    (unsloth forced) the failure stops the run instead."""
    if os.environ.get(UNSLOTH_SETTING, "auto").strip() == "1":
        raise RuntimeError(f"{UNSLOTH_SETTING}=1 asks for unsloth, but {what}")
    if not _UNSLOTH_FAILED:
        print(f"unsloth: {what}; going on with transformers + peft + bitsandbytes, the path CI tests on the "
              f"CPU (set {UNSLOTH_SETTING}=0 to skip unsloth, =1 to stop instead)", flush=True)
    _UNSLOTH_FAILED.append(what)


def unsloth_available() -> bool:
    """True when unsloth is used: a CUDA GPU, the package installed and importable, nothing it
    loaded has failed in this process, and ``GEMMA_UNSLOTH`` is not ``0``. ``GEMMA_UNSLOTH=1`` makes
    any of these missing an error rather than a quiet fallback.

    unsloth raises on import without an accelerator, so it is never imported without one. A release
    that breaks on import (the commonest complaint of unsloth's users) is named in one line and the
    run goes on with transformers + peft + bitsandbytes."""
    setting = os.environ.get(UNSLOTH_SETTING, "auto").strip() or "auto"
    if setting not in ("auto", "0", "1"):
        raise ValueError(f"{UNSLOTH_SETTING}={setting!r}: expected auto, 0 or 1")
    if setting == "0" or _UNSLOTH_FAILED:
        return False
    if not cuda_available():
        if setting == "1":
            raise RuntimeError(f"{UNSLOTH_SETTING}=1 asks for unsloth, but no CUDA GPU is present")
        return False
    if importlib.util.find_spec("unsloth") is None:
        unsloth_failed("the package is not installed")
        return False
    if "unsloth" not in sys.modules or sys.modules["unsloth"] is None:
        try:
            import unsloth  # noqa: F401 - imported before transformers' models, as unsloth asks
        except Exception as exc:  # noqa: BLE001 - a broken release fails with any error
            unsloth_failed(f"import failed ({type(exc).__name__}: {str(exc)[:200]})")
            return False
    return True


def in_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules or any(k.startswith("COLAB_") for k in os.environ)


DRIVE_FOLDER = "/content/drive/MyDrive/gemma-lora-notebooks"  # where OUTPUTS_ON_DRIVE keeps outputs/
RESUME_MARKER = ".resume-training"  # in outputs/: train resumes from the newest checkpoint found there


def keep_outputs_on_drive(repo: str | Path, folder: str | Path = DRIVE_FOLDER) -> Path:
    """On Colab, put ``repo/outputs`` (checkpoints, adapters, results, charts of runs) on Google Drive,
    so a disconnect loses nothing: ``repo/outputs`` becomes a link to ``folder/outputs``, which is
    kept between sessions, and a marker there makes :func:`resume_training` True, so a notebook run
    again resumes each training run from its last complete checkpoint instead of starting over.

    The files already in ``repo/outputs`` (the repository's committed results) are copied to Drive
    where Drive has no file of that name; nothing on Drive is overwritten, and the local folder is
    kept beside, renamed ``outputs.before-drive``. Elsewhere than Colab nothing changes.

    Notebook 00, "The report" (the setup cell's OUTPUTS_ON_DRIVE field)."""
    import shutil

    local = Path(repo) / "outputs"
    if not in_colab():
        print(f"not on Colab: outputs stay in {local}")
        return local
    from google.colab import drive

    drive.mount("/content/drive")
    target = Path(folder) / "outputs"
    target.mkdir(parents=True, exist_ok=True)
    if local.is_symlink():
        if local.resolve() != target.resolve():
            raise FileExistsError(f"{local} already links to {local.resolve()}, not {target}: "
                                  f"remove that link yourself to keep outputs on Drive")
    else:
        if local.is_dir():
            for item in local.rglob("*"):
                copy = target / item.relative_to(local)
                if item.is_file() and not copy.exists():
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(item, copy)
            kept = local.with_name("outputs.before-drive")
            if kept.exists():
                raise FileExistsError(f"{kept} exists: move it away to keep outputs on Drive")
            local.rename(kept)
        local.symlink_to(target, target_is_directory=True)
    (target / RESUME_MARKER).write_text("written by gemma_helpers.env.keep_outputs_on_drive: training runs "
                                        "resume from their newest checkpoint here\n", encoding="utf-8")
    print(f"outputs/ is on Google Drive: {target}; a run started again resumes from its last checkpoint")
    return target


def resume_training(folder: str | Path | None = None) -> bool:
    """Whether a training run writing into ``folder`` resumes from its newest checkpoint by default: True
    where :func:`keep_outputs_on_drive` put outputs on Drive (its marker lies in ``folder`` or a folder
    above it; default ``outputs/``), else False (a fresh run, as CI and a local run expect)."""
    folder = Path(folder or REPO_ROOT / "outputs").absolute()
    return any((place / RESUME_MARKER).is_file() for place in (folder, *folder.parents))


def in_ci() -> bool:
    """A CI run or a headless test: ``CI`` or ``NBMAKE`` set, or inside pytest (nbmake's kernels inherit
    ``PYTEST_CURRENT_TEST``)."""
    return any(os.environ.get(k) for k in ("CI", "NBMAKE", "PYTEST_CURRENT_TEST"))


def watched() -> bool:
    """Whether a person is watching this run: an interactive Colab or Jupyter session that is not CI
    (streamed answers are on then, and only then, by default).

    Notebook 03, "Ask it yourself"; Notebook 05, "Ollama, and a server any OpenAI client can talk to"."""
    if in_ci():
        return False
    if in_colab():
        return True
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def profile() -> str:
    """``gpu`` when a CUDA GPU is present, else ``cpu``; ``GEMMA_PROFILE`` overrides.

    Notebook 01, "Parameters"; Notebook 02, "Parameters"; Notebook 03, "Results" (also notebooks 04, 05, 06)."""
    forced = os.environ.get("GEMMA_PROFILE", "").strip().lower()
    if forced:
        if forced not in PROFILES:
            raise ValueError(f"GEMMA_PROFILE={forced!r}: expected one of {PROFILES}")
        return forced
    return "gpu" if cuda_available() else "cpu"


def hub_mirror(hub_id: str, kind: str = "model") -> Path | None:
    """The local copy of the Hugging Face Hub ``model`` or ``dataset`` ``hub_id`` under ``$GEMMA_HUB_MIRROR``
    (``<mirror>/<id>`` for a model, ``<mirror>/datasets/<id>`` for a dataset, as the hub's addresses),
    or None where no mirror is set or it has no such folder: then the hub is asked."""
    if kind not in ("model", "dataset"):
        raise ValueError(f"kind {kind!r}: expected 'model' or 'dataset'")
    root = os.environ.get(HUB_MIRROR, "").strip()
    if not root or not hub_id or hub_id.startswith(("/", ".")) or ".." in hub_id.split("/"):
        return None
    folder = Path(root).expanduser() / ("datasets" if kind == "dataset" else "") / hub_id
    return folder if folder.is_dir() else None


def arxiv_mirror() -> str | None:
    """``$GEMMA_ARXIV_MIRROR`` without its trailing slash (a base URL serving arXiv's ``/pdf/<id>``), or None."""
    return os.environ.get(ARXIV_MIRROR, "").strip().rstrip("/") or None


COMPUTE_DTYPE_VARIABLE = "GEMMA_COMPUTE_DTYPE"  # bfloat16 or float32: forces the compute path (train.compute_dtype)


def bf16_supported() -> bool:
    """True when the CUDA GPU computes in bfloat16 natively (compute capability 8.0 and newer).

    ``torch.cuda.is_bf16_supported()`` alone answers True on a T4 (capability 7.5), where bfloat16 is
    only emulated; emulation is excluded here, so a T4 trains and reports float32.
    ``GEMMA_COMPUTE_DTYPE=float32`` answers False on any card: the whole run (load dtype, 4-bit compute
    dtype, training, merge) takes the float32 path of a card without bfloat16."""
    if os.environ.get(COMPUTE_DTYPE_VARIABLE, "").strip().lower() == "float32":
        return False
    if not cuda_available():
        return False
    import torch

    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch without the argument never counted emulation
        native = torch.cuda.is_bf16_supported()
    return bool(native) and torch.cuda.get_device_capability(0)[0] >= 8


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively (AVX512-BF16 or AMX), where a
    bfloat16 product runs about 2.3x a float32 one (benchmarks/RESULTS.md); elsewhere bfloat16 is
    emulated and slower than float32."""
    import torch

    cpu = getattr(torch, "cpu", None)
    probes = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(probe is not None for probe in probes):
        return any(probe() for probe in probes if probe is not None)
    try:  # older torch: the kernel's flags
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def four_bit_supported() -> tuple[bool, str]:
    """Whether bitsandbytes NF4 can be used here, and why not when it cannot."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return False, "bitsandbytes is not installed"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken native library shows up as any error
        return False, f"bitsandbytes failed to import: {exc}"
    return True, "cuda" if cuda_available() else "cpu (slow, correct)"


def train_dtype():
    """The dtype to train Gemma 3/3n/4 in: bf16 where the GPU has it, else float32.

    Never float16: Gemma 3 activations exceed float16's range (the T4 case)."""
    import torch

    return torch.bfloat16 if bf16_supported() else torch.float32


@dataclass
class Report:
    """The environment report: Python, platform, profile, GPU and the pinned packages."""

    python: str
    platform: str
    profile: str
    colab: bool
    cuda: bool
    gpu: str | None
    capability: str | None
    bf16: bool
    four_bit: bool
    four_bit_note: str
    unsloth: bool
    packages: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    pin_problems: list[str] = field(default_factory=list)

    @property
    def off_pin(self) -> list[str]:
        return [n for n, have, want in self.packages if not matches_pin(have, want)]

    def __str__(self) -> str:
        lines = [
            f"python      {self.python} on {self.platform}",
            f"profile     {self.profile}   (colab: {self.colab})",
            f"cuda        {self.cuda}" + (f"   {self.gpu}, capability {self.capability}" if self.cuda else ""),
            f"bf16        {self.bf16}   (training dtype: {'bfloat16' if self.bf16 else 'float32'})",
            f"4-bit       {self.four_bit}   ({self.four_bit_note})",
            f"unsloth     {'usable' if self.unsloth else 'not used (needs a CUDA GPU and the package)'}",
            "",
            f"{'package':<28}{'installed':<18}{'pinned':<18}",
        ]
        for name, have, want in self.packages:
            mark = "" if matches_pin(have, want) else "  <- differs"
            lines.append(f"{name:<28}{have!s:<18}{want!s:<18}{mark}")
        for problem in self.pin_problems:
            lines.append(f"PIN MISMATCH between requirement files: {problem}")
        return "\n".join(lines)


def report(requirements: str | Path | None = None, show: bool = True) -> Report:
    """Versions against the pins, Python, CUDA device and capability, bf16, 4-bit, unsloth.

    ``requirements`` defaults to the Colab file on Colab and the local file elsewhere.

    Notebook 00, "The report" (and the setup cell of every notebook)."""
    if requirements is None:
        requirements = REPO_ROOT / ("requirements-colab.txt" if in_colab() else "requirements-local.txt")
    pins = parse_pins(requirements) if Path(requirements).exists() else {}
    names = sorted(set(pins) | {"torch", *SHARED_PINS})
    packages = [(n, installed_version(n), pins.get(n)) for n in names]
    cuda = cuda_available()
    gpu = capability = None
    if cuda:
        import torch

        gpu = torch.cuda.get_device_name(0)
        major, minor = torch.cuda.get_device_capability(0)
        capability = f"{major}.{minor}"
    ok4, note4 = four_bit_supported()
    problems = []
    if (REPO_ROOT / "requirements-local.txt").exists() and (REPO_ROOT / "requirements-colab.txt").exists():
        problems = pin_mismatches()
    rep = Report(
        python=platform.python_version(),
        platform=f"{platform.system()} {platform.machine()}",
        profile=profile(),
        colab=in_colab(),
        cuda=cuda,
        gpu=gpu,
        capability=capability,
        bf16=bf16_supported(),
        four_bit=ok4,
        four_bit_note=note4,
        unsloth=unsloth_available(),
        packages=packages,
        pin_problems=problems,
    )
    if show:
        print(rep)
    return rep


# ---- the Colab install (the setup cell calls colab_install; tests/test_install.py resolves the same calls)

# Colab's own CUDA builds: pip must keep them, so the install runs under a constraint pinning each.
KEEP = ("torch", "torchvision", "torchaudio")
# llama-cpp-python builds llama.cpp from source; the series calls only its text model API, so the
# multimodal library (mtmd / llava) and every binary are left out of the build. The build is native
# (-march=native), which on an Intel CPU with AMX (Sapphire Rapids and later) compiles ggml's AMX
# matrix kernels: there the first decode of a Q4_K_M file crashed the process (SIGSEGV in llama_decode,
# 0.3.36 on a 2-core Xeon with amx_int8, 2026-12-02; llama.cpp issue 20824, open), while f16 files
# answered. The -mno-amx-* flags keep every other native instruction (AVX512, VNNI) and drop AMX.
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
LLAMA_CMAKE_ARGS = ("-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
                    f"-DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF '-DCMAKE_C_FLAGS={NO_AMX}' "
                    f"'-DCMAKE_CXX_FLAGS={NO_AMX}'")


def write_whole(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (str as UTF-8) to ``path`` through a temporary file beside it, renamed when complete:
    a reader, or a run cut off half-way, sees the old file or the new one, never part of one. A str that
    cannot be encoded raises before anything is written."""
    import tempfile

    path = Path(path)
    data = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # as a plain write leaves it (mkstemp's file is the owner's only)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_constraints(path: str | Path, versions: dict[str, str]) -> Path:
    """A pip constraint file pinning each ``name`` to ``version`` (one ``name==version`` a line)."""
    path = Path(path)
    path.write_text("".join(f"{name}=={version}\n" for name, version in sorted(versions.items())), encoding="utf-8")
    return path


# The torchao built against each torch Colab may ship, from the compatibility list in torchao 0.16.0's
# torchao/__init__.py (torchao loads its compiled kernels only for the torch it was built against;
# unsloth_zoo pulls torchao in unpinned, and pip's newest, 0.18, needs torch 2.11). From torch 2.11 on
# torchao 0.17+ checks a minimum torch itself, so no pin is added.
TORCHAO_FOR_TORCH = {"2.9.0": "0.14.1", "2.9.1": "0.15.0", "2.10.0": "0.16.0", "2.10.1": "0.16.0"}


def colab_constraints(kept: dict[str, str]) -> dict[str, str]:
    """The versions the Colab install must keep or match: Colab's own torch, torchvision and torchaudio
    (``kept``), plus the torchao built against that torch (:data:`TORCHAO_FOR_TORCH`).

    A torch this table does not know is refused below 2.11, naming the table, rather than letting pip
    pick a torchao that fails to import."""
    torch_version = kept.get("torch", "").split("+")[0]
    if not torch_version:
        return dict(kept)
    if torch_version in TORCHAO_FOR_TORCH:
        return {**kept, "torchao": TORCHAO_FOR_TORCH[torch_version]}
    from packaging.version import Version

    if Version(torch_version) < Version("2.11"):
        raise RuntimeError(f"torch {torch_version}: no torchao known to match it; add it to "
                           f"gemma_helpers.env.TORCHAO_FOR_TORCH (torchao's __init__.py lists its builds)")
    return dict(kept)


def kept_versions(names: tuple[str, ...] = KEEP) -> dict[str, str]:
    """The installed version of each of ``names`` that is installed (Colab's torch, torchvision, torchaudio)."""
    return {n: v for n in names if (v := installed_version(n)) is not None}


def colab_pip_calls(repo: str | Path, constraints: str | Path) -> list[list[str]]:
    """The pip calls (arguments after ``python -m pip``) that install the series on Colab, in order:
    the pinned stack under the constraint that keeps Colab's torch, then this package without deps."""
    repo = Path(repo)
    return [["install", "-q", "-c", str(constraints), "-r", str(repo / "requirements-colab.txt")],
            ["install", "-q", "--no-deps", "-e", str(repo)]]


def colab_install(repo: str | Path) -> None:
    """Install the series into Colab's Python, keeping its torch; skipped when already done here.

    Notebook 00 (and every notebook): the setup cell calls it on Colab."""
    import subprocess

    repo = Path(repo)
    done = repo / ".colab-installed"
    if done.is_file():
        return
    constraints = write_constraints(repo / "colab-constraints.txt", colab_constraints(kept_versions()))
    started = time.time()
    print(f"installing requirements-colab.txt, keeping {constraints.read_text().split()} (a few minutes) ...", flush=True)
    for args in colab_pip_calls(repo, constraints):
        subprocess.run([sys.executable, "-m", "pip", *args], check=True)
    done.write_text(f"{time.time() - started:.0f} s\n")
    print(f"installed in {time.time() - started:.0f} s")


# llama-cpp-python[server]'s extras (gemma_helpers.serve) and the client that talks to the server
SERVER_PACKAGES = ("fastapi", "uvicorn", "sse-starlette", "starlette-context", "pydantic-settings", "openai")

# What a notebook adds to the common install: import name -> (pip arguments, extra environment).
EXTRAS = {
    # the binding, its OpenAI-compatible server's extras and the client notebook 05 asks it with
    "llama_cpp": (lambda: [pin_line(n) for n in ("llama-cpp-python", *SERVER_PACKAGES)], {"CMAKE_ARGS": LLAMA_CMAKE_ARGS}),
    "keras_hub": (lambda: ["--no-deps", "-r", str(REPO_ROOT / "requirements-keras.txt")], {}),
}


def pin_line(name: str, requirements: str | Path | None = None) -> str:
    """``name==version`` as requirements-local.txt pins it."""
    version = parse_pins(requirements or REPO_ROOT / "requirements-local.txt").get(normalise(name))
    if version is None:
        raise KeyError(f"{name} is not pinned in {requirements or 'requirements-local.txt'}")
    return f"{name}=={version}"


def ensure(module: str) -> None:
    """Make the extra one notebook needs importable: on Colab, pip-install it (pinned); elsewhere, where
    ``make setup`` installs everything, raise with the command that installs it.

    Notebook 05, "Setup" (llama_cpp); Notebook 06, "Setup" (keras_hub)."""
    import subprocess

    if importlib.util.find_spec(module) is not None:
        return
    if module not in EXTRAS:
        raise KeyError(f"no install known for {module!r}; known: {sorted(EXTRAS)}")
    args, extra_env = EXTRAS[module]
    command = [sys.executable, "-m", "pip", "install", "-q", *args()]
    if not in_colab():
        raise ImportError(f"{module} is not installed; run `make setup` (or: {' '.join(command[2:])})")
    started = time.time()
    print(f"installing {module} for this notebook ...", flush=True)
    subprocess.run(command, check=True, env={**os.environ, **extra_env})
    importlib.invalidate_caches()
    print(f"{module} installed in {time.time() - started:.0f} s")
