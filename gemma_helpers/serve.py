"""Serving a GGUF behind llama-cpp-python's OpenAI-compatible server, on 127.0.0.1 only.

``with gh.serve("model.gguf") as server:`` starts ``python -m llama_cpp.server`` on a free loopback
port with the chat template stored in the file, waits until it answers, and stops it on leaving
the block; any OpenAI client then talks to ``server.base_url`` (``/v1``). From a shell:
``python -m gemma_helpers serve FILE [--port N]``.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"  # loopback only: nothing outside this machine reaches the server


def free_port() -> int:
    """A free TCP port on 127.0.0.1.

    Not shown in a notebook: used by gemma_helpers.serve.serve."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def chat_format(gguf_path: str | Path) -> str | None:
    """``None`` (llama-cpp-python then formats chats with the template stored in the file) when the GGUF
    has one, else ``"gemma"`` (llama-cpp-python's built-in Gemma turns).

    Not shown in a notebook: used by gemma_helpers.serve.serve."""
    from .export import gguf_chat_metadata

    return None if gguf_chat_metadata(gguf_path)["chat_template"] else "gemma"


class Server:
    """A running llama-cpp-python server; ``stop()`` (or leaving a ``with`` block) ends it.

    Not shown in a notebook: used by gemma_helpers.serve.serve."""

    def __init__(self, process: subprocess.Popen, port: int, model: Path, log: Path):
        self.process, self.port, self.model, self.log = process, port, model, log
        self.base_url = f"http://{HOST}:{port}/v1"
        self.model_name = model.name  # what the server calls the model in its answers

    def client(self):
        """An ``openai.OpenAI`` client for this server (the key is a placeholder: the server checks none)."""
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key="not-needed")

    def stop(self, timeout: float = 10) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        state = "running" if self.process.poll() is None else f"stopped ({self.process.returncode})"
        return f"Server({self.model.name} at {self.base_url}, {state})"


def serve(gguf_path: str | Path, port: int | None = None, n_ctx: int = 1024, threads: int | None = None,
          timeout: float = 120) -> Server:
    """Start llama-cpp-python's OpenAI-compatible server for ``gguf_path`` on 127.0.0.1 and return it once
    ``/v1/models`` answers. :class:`RuntimeError` with the server's last output when it exits or does
    not answer within ``timeout`` seconds.

    Notebook 05, "Ollama, and a server any OpenAI client can talk to"."""
    path = Path(gguf_path).resolve()
    fmt = chat_format(path)  # reads the file: GGUFError names a path that is not a GGUF file
    port = port or free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", path.name, "--host", HOST, "--port", str(port),
           "--n_ctx", str(n_ctx), "--n_threads", str(threads or os.cpu_count() or 1), "--seed", "0",
           *(["--chat_format", fmt] if fmt else [])]
    log = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
    with open(log, "wb") as sink:
        process = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    server = Server(process, port, path, log)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            tail = log.read_text()[-3000:]
            log.unlink(missing_ok=True)
            raise RuntimeError(f"llama_cpp.server for {path} exited with {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{server.base_url}/models", timeout=2) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            time.sleep(0.3)
    tail = log.read_text()[-3000:]
    server.stop()
    raise RuntimeError(f"llama_cpp.server for {path} did not answer on {server.base_url} within {timeout} s:\n{tail}")
