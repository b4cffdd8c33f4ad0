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

__all__ = [
    "chat", "env", "evaluate", "export", "models", "plots", "results",
    "DataError", "qa_rows", "tokenize_rows", "validate_rows", "profile", "report",
    "ask", "complete", "perplexity", "AdapterError", "load_adapter", "merge",
    "EMBEDDED", "REGISTRY", "attach_lora", "load_model",
    "NonFiniteLossError", "TrainResult", "TrainSpec", "train",
]
__version__ = "0.1.0"
