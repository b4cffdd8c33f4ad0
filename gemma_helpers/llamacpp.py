"""A GGUF file in llama.cpp, in this process: load it, ask it questions."""
from __future__ import annotations

import os
from pathlib import Path

from .gguf_header import GGUFError, check_gguf


def load_gguf(path: str | Path, n_ctx: int = 1024, threads: int | None = None, logits_all: bool = False, **kwargs):
    """A llama.cpp model (``llama_cpp.Llama``) for a GGUF file; its chat completions use the chat
    template stored in the file. Every failure is a :class:`GGUFError` naming the path: not a GGUF file
    (:func:`check_gguf`), or a file llama.cpp refuses."""
    import llama_cpp

    path = check_gguf(path)
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads or os.cpu_count(),
                               logits_all=logits_all, verbose=False, seed=0, **kwargs)
    except (ValueError, RuntimeError, OSError) as exc:  # llama.cpp refused the file (or the LoRA beside it)
        raise GGUFError(f"{path}: llama.cpp could not load it ({type(exc).__name__}: {exc})") from exc


def gguf_ask(llm, questions, max_new_tokens: int = 24) -> list[str]:
    """Greedy chat answers from a llama.cpp model, formatted by the template inside the GGUF."""
    answers = []
    for question in questions:
        llm.reset()
        out = llm.create_chat_completion(messages=[{"role": "user", "content": question}], temperature=0.0,
                                         top_k=1, max_tokens=max_new_tokens)
        answers.append(out["choices"][0]["message"]["content"].strip())
    return answers
