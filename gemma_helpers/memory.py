"""Measuring memory: what is in use now, the peak while something runs, the process's high-water mark.

One set for the package: the training monitor (:func:`memory_monitor`, notebooks 01 and 02), the
training benchmark (``benchmarks/train_throughput.py``) and the generation benchmark
(:mod:`gemma_helpers.bench`, notebook 05) all read memory through these. On a GPU "in use" is the
memory allocated by tensors (``torch.cuda``); on a CPU it is the process's resident set (psutil).
"""
from __future__ import annotations

import resource
import sys
import threading
from collections.abc import Callable
from pathlib import Path

MB = 2**20


def rss_bytes() -> int:
    """This process's resident memory now."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def in_use_bytes() -> int:
    """Bytes in use now: CUDA memory allocated by tensors on a GPU, else this process's resident set."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        return int(torch.cuda.memory_allocated())
    return rss_bytes()


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB. Linux's ``VmHWM`` belongs to the process's own address
    space; ``ru_maxrss`` is not used there because it carries the parent's peak across fork + exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 2**20 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def peak_mb() -> float:
    """Peak GPU memory allocated since :func:`reset_peak` (CUDA) or the process's peak resident memory (CPU), in MiB."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / MB
    return peak_rss_mb()


def reset_peak() -> None:
    """Start a fresh GPU peak (the CPU's peak RSS cannot be reset: run each measurement in its own
    process, or sample it with :class:`PeakSampler`)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


class PeakSampler:
    """The peak of ``read()`` (bytes; default :func:`rss_bytes`) while the ``with`` block runs, sampled
    every ``every`` seconds by a thread and once more at the end; ``start`` is the value when it began
    (``start_mb`` and ``peak_mb`` in MiB). :meth:`sample` adds a reading now (a training step's end)."""

    def __init__(self, read: Callable[[], int] = rss_bytes, every: float = 0.05):
        self.read, self.every = read, every
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def start_mb(self) -> float:
        return self.start / MB

    @property
    def peak_mb(self) -> float:
        return self.peak / MB

    def sample(self) -> int:
        self.peak = max(self.peak, self.read())
        return self.peak

    def _run(self):
        while not self._stop.wait(self.every):
            self.sample()

    def __enter__(self):
        self.start = self.peak = self.read()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        return False


def memory_monitor(interval_s: float = 0.01):
    """A trainer callback that measures memory: call ``mark(name)`` at points of interest (after
    loading, after attaching the adapter), pass it to :func:`train` in ``callbacks``, then read
    :meth:`report`.

    On a GPU it reads ``torch.cuda.memory_allocated``; the peak counter is reset when training
    begins (after loading, so the weights' own load is not the "peak") and read with
    ``max_memory_allocated`` when it ends. On a CPU it samples the process's resident memory
    (psutil) every ``interval_s`` from a background thread (:class:`PeakSampler`) and at every step. The optimiser
    state and the gradients are counted exactly from their tensors.

    Notebook 01, section 6; Notebook 02, section 4."""
    import torch
    from transformers import TrainerCallback

    class MemoryMonitor(TrainerCallback):
        def __init__(self):
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
            self.marks: dict[str, int] = {}
            self.peak = 0
            self.optimizer_bytes = self.gradient_bytes = self.trainable_bytes = 0
            self._sampler = None
            self.mark("baseline")

        def mark(self, name: str) -> int:
            self.marks[name] = in_use_bytes()
            return self.marks[name]

        def on_train_begin(self, args, state, control, **kwargs):
            self.mark("train_begin")
            self.peak = self.marks["train_begin"]
            if self.device == "cuda":
                reset_peak()
            else:
                self._sampler = PeakSampler(in_use_bytes, interval_s).__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if self._sampler is not None:
                self.peak = max(self.peak, self._sampler.sample())

        def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            if self.device == "cuda":
                self.peak = int(torch.cuda.max_memory_allocated())
            elif self._sampler is not None:
                self._sampler.__exit__(None, None, None)
                self.peak = max(self.peak, self._sampler.peak)
                self._sampler = None
            self.mark("train_end")
            if optimizer is not None:
                self.optimizer_bytes = sum(t.numel() * t.element_size() for st in optimizer.state.values()
                                           for t in st.values() if torch.is_tensor(t))
            if model is not None:
                trainable = [p for p in model.parameters() if p.requires_grad]
                self.trainable_bytes = sum(p.numel() * p.element_size() for p in trainable)
                self.gradient_bytes = self.trainable_bytes  # one gradient per trainable parameter

        def report(self) -> dict:
            """Megabytes: ``weights`` and ``adapter`` from the marks of those names, the training
            ``peak`` and what it added over the start of training, split into optimiser state
            and gradients (exact) and the rest (activations and temporaries)."""
            mb = 1 / MB
            m = self.marks
            out = {"device": "cuda (allocated)" if self.device == "cuda" else "cpu (process RSS)",
                   "marks_mb": {k: v * mb for k, v in m.items()}}
            if "loaded" in m:
                out["weights_mb"] = (m["loaded"] - m["baseline"]) * mb
            if "adapter" in m and "loaded" in m:
                out["adapter_mb"] = (m["adapter"] - m["loaded"]) * mb
            out["adapter_params_mb"] = self.trainable_bytes * mb
            if "train_begin" in m:
                added = self.peak - m["train_begin"]
                out.update(training_start_mb=m["train_begin"] * mb, training_peak_mb=self.peak * mb,
                           training_added_mb=added * mb, optimizer_state_mb=self.optimizer_bytes * mb,
                           gradients_mb=self.gradient_bytes * mb,
                           activations_mb=max(0, added - self.optimizer_bytes - self.gradient_bytes) * mb)
            return out

    return MemoryMonitor()


def release() -> float:
    """Collect garbage and hand the CUDA allocator's cached blocks back to the card; the MiB of GPU
    memory still allocated afterwards (0 without a GPU). Call it after dropping every reference to a
    model (``model = run.model = None``): a second large model loaded while the first is still alive
    needs room for both.

    Notebook 02, section 8."""
    import gc

    import torch

    gc.collect()
    if not torch.cuda.is_available():
        return 0.0
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated() / MB
