"""An Ollama Modelfile beside each GGUF, checked against the GGUF's own chat template and tokens."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .gguf_header import gguf_chat_metadata

# Gemma's turns as an Ollama (Go) template: a system prompt folds into the user turn, as in Gemma's
# chat template; the model's turn ends with <end_of_turn>, which must also be a stop sequence, or the
# runtime generates past the answer (the most reported problem with exported Gemma fine-tunes).
GEMMA_OLLAMA_TEMPLATE = ("<start_of_turn>user\n{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}<end_of_turn>\n"
                         "<start_of_turn>model\n{{ .Response }}<end_of_turn>\n")
TURN_END = "<end_of_turn>"


class ModelfileError(ValueError):
    """A Modelfile that disagrees with its GGUF (template, stop token), or a GGUF that lacks what a
    runtime needs to end a turn; the message names the file and what differs."""


def modelfile_path(gguf_path: str | Path) -> Path:
    """Where the Modelfile of a GGUF goes: ``<name>.Modelfile`` beside it (``ollama create NAME -f`` it).

    Notebook 05, "Ollama, and a server any OpenAI client can talk to"."""
    gguf_path = Path(gguf_path)
    return gguf_path.with_name(f"{gguf_path.stem}.Modelfile")


def write_modelfile(gguf_path: str | Path) -> Path:
    """Write an Ollama Modelfile beside ``gguf_path``: ``FROM`` the file, Gemma's turn ``TEMPLATE``,
    ``PARAMETER stop "<end_of_turn>"``; then check it against the GGUF (:func:`check_modelfile`)."""
    gguf_path = Path(gguf_path)  # read (and so checked) by check_modelfile below
    path = modelfile_path(gguf_path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(
        f"# Ollama: ollama create {gguf_path.stem.lower()} -f {path.name}\n"
        f"FROM ./{gguf_path.name}\n\n"
        f'TEMPLATE """{GEMMA_OLLAMA_TEMPLATE}"""\n\n'
        f'PARAMETER stop "{TURN_END}"\n', encoding="utf-8")
    try:
        check_modelfile(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def parse_modelfile(path: str | Path) -> dict:
    """``{"FROM": str, "TEMPLATE": str | None, "SYSTEM": str | None, "PARAMETER": [(name, value), ...]}``.
    A file that is not UTF-8 is a :class:`ModelfileError` naming it, the line and the column."""
    import re

    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")  # what Ollama reads; a byte-order mark at the start is accepted
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ModelfileError(f"{path}: not UTF-8: byte {data[err.start]:#04x} at line {line}, column {column} "
                             f"({err.reason}); Ollama reads a Modelfile as UTF-8: save it as UTF-8") from None
    out: dict = {"FROM": None, "TEMPLATE": None, "SYSTEM": None, "PARAMETER": []}
    pattern = re.compile(r'^(FROM|TEMPLATE|SYSTEM|PARAMETER|ADAPTER|LICENSE|MESSAGE)\s+("""(.*?)"""|[^\n]*)',
                         re.MULTILINE | re.DOTALL | re.IGNORECASE)
    for m in pattern.finditer(text):
        key, value = m.group(1).upper(), m.group(3) if m.group(3) is not None else m.group(2).strip()
        if key == "PARAMETER":
            name, _, arg = value.partition(" ")
            out["PARAMETER"].append((name, arg.strip().strip('"')))
        elif key in out:
            out[key] = value.strip('"') if m.group(3) is None else value
    return out


TEMPLATE_SECONDS = 10.0  # a chat template renders in milliseconds; one still rendering after this is refused

# Renders a GGUF's chat template (read from stdin as JSON) in a child process: jinja2's sandbox stops what a
# template may touch but not how long it loops (a nested range(100000) runs for hours), and only a process can
# be stopped. Its address space is capped at 2 GiB, so "x" * 10**10 is a MemoryError, not the machine's memory.
_RENDER_CHILD = r'''
import json, sys
try:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
except (ImportError, ValueError, OSError):
    pass
from jinja2.sandbox import ImmutableSandboxedEnvironment

job = json.loads(sys.stdin.buffer.read())


class Raised(Exception):
    pass


def raise_exception(message):
    raise Raised(message)


try:
    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(job["template"])
    answer = {"rendered": [template.render(messages=messages, bos_token=job["bos"], eos_token="", add_generation_prompt=True,
                                           raise_exception=raise_exception) for messages in job["conversations"]]}
except Raised as err:
    answer = {"raised": str(err)}
except Exception as err:
    answer = {"error": f"{type(err).__name__}: {err}"}
sys.stdout.write(json.dumps(answer))
'''


def _render_gguf_template(template: str, conversations: list[list[dict]], bos: str, source: Path) -> list[str]:
    """The GGUF's chat template rendered for each conversation, in a child process stopped after
    ``TEMPLATE_SECONDS``: a template that loops longer, raises, or does not compile is a
    :class:`ModelfileError` naming the GGUF."""
    import subprocess
    import sys

    job = json.dumps({"template": template, "conversations": conversations, "bos": bos}).encode("ascii")
    try:
        done = subprocess.run([sys.executable, "-c", _RENDER_CHILD], input=job, capture_output=True,
                              timeout=TEMPLATE_SECONDS)
    except subprocess.TimeoutExpired:
        raise ModelfileError(f"{source}: the chat template did not finish rendering one user turn within "
                             f"{TEMPLATE_SECONDS:g} s (a loop too long to run); stopped") from None
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        raise RuntimeError(f"rendering the chat template of {source} failed (exit {done.returncode}): "
                           f"{done.stderr.decode('utf-8', 'replace')[-2000:]}") from None
    if "raised" in answer:
        raise ModelfileError(f"{source}: the chat template raised: {answer['raised']}")
    if "error" in answer:
        raise ModelfileError(f"{source}: the chat template does not render ({answer['error'][:500]})")
    return answer["rendered"]


def _render_ollama_prompt(template: str, prompt: str, source: Path) -> str:
    """The prompt a Modelfile's TEMPLATE gives one user message (no system prompt): the text up to
    ``{{ .Response }}``. Only the ``.System`` / ``.Prompt`` / ``.Response`` form is understood."""
    import re

    if "{{ .Prompt }}" not in template or "{{ .Response }}" not in template:
        raise ModelfileError(f"{source}: TEMPLATE has no {{{{ .Prompt }}}} and {{{{ .Response }}}}; cannot check it")
    text = re.sub(r"\{\{ if \.System \}\}.*?\{\{ end \}\}", "", template, flags=re.DOTALL)
    return text.split("{{ .Response }}")[0].replace("{{ .Prompt }}", prompt)


def check_modelfile(path: str | Path) -> dict:
    """Check an Ollama Modelfile against the GGUF it names and return what was compared.

    :class:`ModelfileError` when: the GGUF has no embedded chat template; the Modelfile has no
    TEMPLATE, or its TEMPLATE formats a user turn differently from the GGUF's template (the
    ``<bos>`` Ollama adds itself aside); the token the GGUF's template ends a turn with is not a
    single token of the GGUF's vocabulary, not among the Modelfile's ``PARAMETER stop`` values, or not
    the GGUF's declared end-of-turn (eot) token; the Modelfile is not UTF-8; the GGUF's template does
    not render (it raises, does not compile, or runs past ``TEMPLATE_SECONDS``: it is rendered in a
    child process that is stopped then).

    Notebook 05, "Ollama, and a server any OpenAI client can talk to"."""
    path = Path(path)
    spec = parse_modelfile(path)
    if not spec["FROM"]:
        raise ModelfileError(f"{path}: no FROM line")
    source = (path.parent / spec["FROM"]).resolve()
    meta = gguf_chat_metadata(source)
    if not meta["chat_template"]:
        raise ModelfileError(f"{source}: no chat template in the GGUF (tokenizer.chat_template is missing); "
                             "a runtime would not know Gemma's turns")
    if not spec["TEMPLATE"]:
        raise ModelfileError(f"{path}: no TEMPLATE; Ollama would send the raw prompt without Gemma's turns")
    tokens = meta["tokens"]
    bos = tokens[meta["bos"]] if meta["bos"] is not None else ""
    question, answer = "What is the capital of Xylandia?", "Crystalburg."
    expected, turn = _render_gguf_template(meta["chat_template"], [
        [{"role": "user", "content": question}],
        [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]], bos, source)
    expected = expected.removeprefix(bos)
    got = _render_ollama_prompt(spec["TEMPLATE"], question, path)
    if got != expected:
        raise ModelfileError(f"{path}: TEMPLATE formats a user turn as {got!r}; the GGUF's chat template as {expected!r}")
    after = turn.split(answer, 1)[1].strip() if answer in turn else ""
    end = max((t for t in tokens if after.startswith(t) and t.startswith("<") and t.endswith(">")), key=len,
              default=None) if after else None
    if end is None:
        raise ModelfileError(f"{source}: the chat template ends a turn with {after!r}, not a token of the vocabulary")
    end_id = tokens.index(end)
    stops = [value for name, value in spec["PARAMETER"] if name == "stop"]
    if end not in stops:
        raise ModelfileError(f"{path}: PARAMETER stop is {stops or 'not set'}, but the GGUF's template ends a turn with "
                             f"{end!r} (token {end_id}): the runtime would generate past the answer")
    if meta["eot"] is not None and meta["eot"] != end_id:
        raise ModelfileError(f"{source}: declares end-of-turn token {meta['eot']} ({tokens[meta['eot']]!r}), but its "
                             f"template ends a turn with {end!r} (token {end_id})")
    return {"gguf": source, "chat_template": meta["chat_template"], "template": got, "stop": stops, "turn_end": end, "turn_end_id": end_id,
            "eos": tokens[meta["eos"]] if meta["eos"] is not None else None,
            "eot": tokens[meta["eot"]] if meta["eot"] is not None else None}
