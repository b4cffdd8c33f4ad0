"""gemma_helpers: the tested code behind the gemma-lora-notebooks series.

A notebook does ``import gemma_helpers as gh`` and calls ``gh.load_model(...)``,
``gh.train(...)``, ``gh.merge(...)``; the modules are rooms with one job each:
env, embedded (the offline Gemma 3 270M), models, vision, jsonl, chat, data (persian, dolly, frames, papers, hub),
train, trl_compat, memory, evaluate, merging (an adapter into its base), gguf_convert, gguf_header, modelfile
(Ollama), llamacpp, hub, serve, bench (export stages), budget (a T4's memory, RAM, disk and minutes),
throughput (training), plots, results, recipes, paper_parts (notebook 01's experiment), fact_injection
(notebook 03's), offline; above them all, ``python -m gemma_helpers rehearse``.
"""
from . import (bench, budget, chat, embedded, env, evaluate, fact_injection, gguf_convert, gguf_header, hub, jsonl,
               llamacpp, memory, merging, modelfile, models, paper_parts, plots, recipes, results, vision)
from .chat import DataError, qa_rows, tokenize_rows, validate_rows
from .env import profile, report
from .evaluate import ask, complete, perplexity
from .gguf_convert import quantize, to_gguf
from .gguf_header import GGUFError
from .llamacpp import load_gguf
from .memory import memory_monitor
from .merging import AdapterError, load_adapter, merge
from .models import EMBEDDED, REGISTRY, attach_lora, load_model
from .serve import serve
from .train import NoLabelsError, NonFiniteLossError, TrainResult, TrainSpec, train
from .vision import load_vision_model

__all__ = [
    "EMBEDDED",
    "REGISTRY",
    "AdapterError",
    "DataError",
    "GGUFError",
    "NoLabelsError",
    "NonFiniteLossError",
    "TrainResult",
    "TrainSpec",
    "ask",
    "attach_lora",
    "bench",
    "budget",
    "chat",
    "complete",
    "embedded",
    "env",
    "evaluate",
    "fact_injection",
    "gguf_convert",
    "gguf_header",
    "hub",
    "jsonl",
    "llamacpp",
    "load_adapter",
    "load_gguf",
    "load_model",
    "load_vision_model",
    "memory",
    "memory_monitor",
    "merge",
    "merging",
    "modelfile",
    "models",
    "paper_parts",
    "perplexity",
    "plots",
    "profile",
    "qa_rows",
    "quantize",
    "recipes",
    "report",
    "results",
    "serve",
    "to_gguf",
    "tokenize_rows",
    "train",
    "validate_rows",
    "vision",
]
__version__ = "0.1.0"
