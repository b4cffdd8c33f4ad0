"""Serving a GGUF behind llama-cpp-python's OpenAI-compatible server, on 127.0.0.1 only.

``with gh.serve("model.gguf") as server:`` starts ``python -m llama_cpp.server`` on a free loopback
port with the chat template stored in the file, waits until it answers, and stops it on leaving
the block; any OpenAI client then talks to ``server.base_url`` (``/v1``). From a shell:
``python -m gemma_helpers serve FILE [--port N]``.

The server reads HOST, PORT, CONFIG_FILE and each of its settings from the environment ahead of its
flags; the child gets an environment without them (:func:`server_env`), so it binds 127.0.0.1 on
the port chosen here whatever the caller's environment says. A port already taken fails before
anything starts, and the server that answers must be the process started, serving this model.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"  # loopback only: nothing outside this machine reaches the server
SERVER_MODULE = "llama_cpp.server"  # run as ``python -m SERVER_MODULE``


class PortInUseError(RuntimeError):
    """The port asked for is already taken on 127.0.0.1; the message names it."""


def server_env(environ=None) -> dict:
    """``environ`` (default ``os.environ``) without what llama-cpp-python's server would read ahead of
    its flags: HOST, PORT, CONFIG_FILE and every field of its pydantic settings (API_KEY, MODEL,
    N_CTX, SSL_KEYFILE, ...), matched case-insensitively as pydantic-settings does."""
    from llama_cpp.server.settings import ConfigFileSettings, Settings

    names = {"HOST", "PORT", "CONFIG_FILE"} | {n.upper() for n in (*Settings.model_fields, *ConfigFileSettings.model_fields)}
    return {k: v for k, v in (os.environ if environ is None else environ).items() if k.upper() not in names}


def check_port_free(port: int) -> None:
    """:class:`PortInUseError` naming ``port`` when something already listens on it on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is not "taken"
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            raise PortInUseError(f"port {port} on {HOST} is already in use ({exc.strerror}): "
                                 "pass another port, or none for a free one") from exc


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def chat_format(gguf_path: str | Path) -> str | None:
    """``None`` (llama-cpp-python then formats chats with the template stored in the file) when the GGUF
    has one, else ``"gemma"`` (llama-cpp-python's built-in Gemma turns)."""
    from .gguf_header import gguf_chat_metadata

    return None if gguf_chat_metadata(gguf_path)["chat_template"] else "gemma"


class Server:
    """A running llama-cpp-python server; ``stop()`` (or leaving a ``with`` block) ends it."""

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
    ``/v1/models`` answers with this model while the process started is alive. :class:`PortInUseError`
    before starting when ``port`` is taken; :class:`RuntimeError` with the server's last output when it
    exits or does not answer within ``timeout`` seconds, or when what answers serves another model.

    Notebook 05, "Ollama, and a server any OpenAI client can talk to"."""
    path = Path(gguf_path).resolve()
    fmt = chat_format(path)  # reads the file: GGUFError names a path that is not a GGUF file
    port = port or free_port()
    check_port_free(port)
    cmd = [sys.executable, "-m", SERVER_MODULE, "--model", str(path), "--model_alias", path.name, "--host", HOST, "--port", str(port),
           "--n_ctx", str(n_ctx), "--n_threads", str(threads or os.cpu_count() or 1), "--seed", "0",
           *(["--chat_format", fmt] if fmt else [])]
    log = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
    with open(log, "wb") as sink:
        process = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=server_env())
    server = Server(process, port, path, log)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            tail = log.read_text()[-3000:]
            log.unlink(missing_ok=True)
            raise RuntimeError(f"llama_cpp.server for {path} exited with {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{server.base_url}/models", timeout=2) as answer:
                models = json.load(answer)
        except (OSError, ValueError):  # not up yet (an HTTP error status is an OSError too)
            time.sleep(0.3)
            continue
        if process.poll() is not None:
            continue  # the process started has exited: something else answered; reported above
        names = [m.get("id") for m in models.get("data", []) if isinstance(m, dict)] if isinstance(models, dict) else []
        if server.model_name in names:
            return server
        server.stop()
        raise RuntimeError(f"the server answering on {server.base_url} serves {names}, not {server.model_name}: "
                           f"another process holds port {port}; llama_cpp.server for {path} was stopped")
    tail = log.read_text()[-3000:]
    server.stop()
    raise RuntimeError(f"llama_cpp.server for {path} did not answer on {server.base_url} within {timeout} s:\n{tail}")
