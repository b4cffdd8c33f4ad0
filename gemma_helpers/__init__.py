"""gemma_helpers: the tested code behind the gemma-lora-notebooks series.

A notebook does ``import gemma_helpers as gh`` and calls ``gh.load_model(...)``,
``gh.train(...)``, ``gh.merge(...)``; the modules are rooms with one job each:
env, models, chat, train, evaluate, export, plots, results.
"""
from . import chat, env, evaluate, export, models, plots, results
from .chat import DataError, qa_rows, tokenize_rows, validate_rows
from .env import profile, report
from .evaluate import ask, complete, perplexity
from .export import AdapterError, load_adapter, merge
from .models import EMBEDDED, REGISTRY, attach_lora, load_model
from .train import NonFiniteLossError, TrainResult, TrainSpec, train
from .train import memory_monitor

__all__ = [
    "EMBEDDED",
    "REGISTRY",
    "AdapterError",
    "DataError",
    "NonFiniteLossError",
    "TrainResult",
    "TrainSpec",
    "ask",
    "attach_lora",
    "chat",
    "complete",
    "env",
    "evaluate",
    "export",
    "load_adapter",
    "load_model",
    "memory_monitor",
    "merge",
    "models",
    "perplexity",
    "plots",
    "profile",
    "qa_rows",
    "report",
    "results",
    "tokenize_rows",
    "train",
    "validate_rows",
]
__version__ = "0.1.0"
