"""gemma_helpers: the tested code behind the gemma-lora-notebooks series.

A notebook does ``import gemma_helpers as gh`` and calls ``gh.load_model(...)``,
``gh.train(...)``, ``gh.merge(...)``; the modules are rooms with one job each:
env, embedded (the offline Gemma 3 270M), models, vision, jsonl, chat, data (persian, dolly, frames, papers, hub),
train, trl_compat, memory, evaluate, export, hub, serve, bench (export stages), throughput (training), plots,
results, recipes, offline; above them all, ``python -m gemma_helpers rehearse``.
"""
from . import bench, chat, embedded, env, evaluate, export, hub, jsonl, memory, models, plots, recipes, results, vision
from .chat import DataError, qa_rows, tokenize_rows, validate_rows
from .env import profile, report
from .evaluate import ask, complete, perplexity
from .export import AdapterError, GGUFError, load_adapter, load_gguf, merge, quantize, to_gguf
from .memory import memory_monitor
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
    "chat",
    "complete",
    "embedded",
    "env",
    "evaluate",
    "export",
    "hub",
    "jsonl",
    "load_adapter",
    "load_gguf",
    "load_model",
    "load_vision_model",
    "memory",
    "memory_monitor",
    "merge",
    "models",
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
