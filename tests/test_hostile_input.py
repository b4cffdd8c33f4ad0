"""Hostile but realistic input: rows a model cannot learn from (the chat validator and the Persian and
Dolly cleaning agree on them), files that are not GGUF models. Each case asserts the named error AND
that the good items beside the bad one are intact. (Servers that answer badly: test_download; JSON
Lines files written by other tools: test_jsonl.)"""
from __future__ import annotations

import json
import re

import pytest
from conftest import tiny_chat_gguf

from gemma_helpers import chat
from gemma_helpers.chat import DataError
from gemma_helpers.data import dolly, persian
from gemma_helpers.data import papers as P

# ---------------------------------------------------------------- rows a model cannot learn from
INVISIBLE = ["\u200f", "\x00", "\u200c\u200b", "\ufeff", "\u202e\u2066", " \u00a0\t\u3000", "\u3164", "\x00\u200f\n"]
NOT_TEXT = [5, 2.5, True, {"text": "hi"}, [], ["hi"]]


@pytest.mark.parametrize("answer", INVISIBLE + NOT_TEXT)
def test_chat_rows_without_learnable_text_name_row_and_field(answer):
    good = chat.qa_rows([("Q1?", "A1."), ("Q2?", "A2.")])
    bad = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": answer}]}
    with pytest.raises(DataError) as err:
        chat.validate_rows(good + [bad])
    assert (err.value.row, err.value.field) == (2, "messages[1].content")
    assert ("no visible character" if isinstance(answer, str) and answer.strip() else "not text" if not
            isinstance(answer, str) else "is empty") in str(err.value)
    chat.validate_rows(good)  # the good rows beside it are fine


def test_rows_read_from_a_file_with_blank_lines_name_the_file_line(tmp_path):
    """Row indices and file lines differ after blank lines: a bad row is named by both."""
    from gemma_helpers.jsonl import read_jsonl

    good, other = chat.qa_rows([("Q1?", "A1."), ("Q2?", "A2.")])
    empty = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "\u200f"}]}
    outside = {"chat": []}
    path = tmp_path / "rows.jsonl"
    for bad in (empty, outside):
        path.write_text("\n".join([json.dumps(good), "", "", json.dumps(other), json.dumps(bad)]) + "\n", encoding="utf-8")
        rows = read_jsonl(path, errors="raise")
        with pytest.raises(DataError, match=r"^row 2 \(file line 5\): field 'messages") as err:
            chat.validate_rows(rows)
        assert (err.value.row, err.value.line) == (2, 5)
    path.write_text("\n".join([json.dumps(good), "", "", json.dumps(other), json.dumps(empty)]) + "\n", encoding="utf-8")
    kept, report = persian.clean_conversations(read_jsonl(path, errors="raise"))
    assert len(kept) == 2 and [(d["row"], d["line"]) for d in report.dropped] == [(2, 5)], report.dropped
    with pytest.raises(DataError, match=r"^row 2 \(file line 5\)"):
        path.write_text("\n".join([json.dumps(good), "", "", json.dumps(other), json.dumps(outside)]) + "\n", encoding="utf-8")
        persian.clean_conversations(read_jsonl(path, errors="raise"))


def test_the_error_names_the_invisible_characters():
    with pytest.raises(DataError, match=r"row 0: field 'messages\[1\].content' has no visible character "
                                        r"\(only U\+200F RIGHT-TO-LEFT MARK\)"):
        chat.validate_rows(chat.qa_rows([("Q?", "\u200f")]))
    with pytest.raises(DataError, match=r"only U\+0000 \(no name\)"):
        chat.validate_rows(chat.qa_rows([("Q?", "\x00")]))


@pytest.mark.parametrize("row, field", [
    ({"prompt": "Q:", "completion": "\u200f"}, "completion"), ({"prompt": "\x00", "completion": "A"}, "prompt"),
    ({"prompt": 3, "completion": "A"}, "prompt"), ({"text": "\u200b\u200c"}, "text"), ({"text": {}}, "text"),
    ({"messages": [{"role": "system", "content": "\u200f"}, {"role": "user", "content": "Q"},
                   {"role": "assistant", "content": "A"}]}, "messages[0].content"),
])
def test_plain_rows_and_system_turns_are_checked_the_same_way(row, field):
    with pytest.raises(DataError) as err:
        chat.validate_rows([{"text": "fine"}, row])
    assert (err.value.row, err.value.field) == (1, field)


def test_validation_and_cleaning_agree():
    """The two checks of a chat row are one: what cleaning raises for, validation raises for too."""
    for content in NOT_TEXT:
        row = {"messages": [{"role": "user", "content": "سلام"}, {"role": "assistant", "content": content}]}
        for check in (chat.validate_rows, persian.clean_conversations):
            with pytest.raises(DataError) as err:
                check([chat.qa_rows([("الف", "ب")])[0], row])
            assert (err.value.row, err.value.field) == (1, "messages[1].content"), check


@pytest.mark.parametrize("answer", INVISIBLE)
def test_persian_cleaning_drops_invisible_answers_and_keeps_the_rest(answer):
    rows = chat.qa_rows([("سلام", "درود"), ("پایتخت ایران؟", answer), ("چطوری؟", "خوبم")])
    clean, report = persian.clean_conversations(rows)
    assert clean == chat.qa_rows([("سلام", "درود"), ("چطوری؟", "خوبم")])
    assert [(d["row"], d["reason"]) for d in report.dropped] == [(1, "empty_turn")]
    assert "messages[1]" in report.dropped[0]["detail"]
    chat.validate_rows(clean)


def test_persian_cleaning_removes_an_invisible_system_turn():
    row = {"messages": [{"role": "system", "content": "\u200f\u200c"}, *chat.qa_rows([("سلام", "درود")])[0]["messages"]]}
    clean, report = persian.clean_conversations([row])
    assert clean == chat.qa_rows([("سلام", "درود")]) and report.fixed["empty_system_removed"] == [0]


@pytest.mark.parametrize("field, value, words", [
    ("response", "\u200f", "has no visible character"), ("response", "\x00", "has no visible character"),
    ("instruction", "\u200c\u200b", "has no visible character"), ("response", 5, "is a int"),
    ("response", {}, "is a dict"), ("response", [], "is a list"), ("context", None, "is missing"),
    ("category", ["open_qa"], "is a list"),
])
def test_dolly_rows_without_learnable_text_are_skipped_by_line_and_field(tmp_path, field, value, words):
    good = {"instruction": "Say hi.", "context": "", "response": "Hi.", "category": "open_qa"}
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (good, {**good, field: value}, {**good, "response": "Bye."})))
    said = []
    assert dolly.read_jsonl(path, errors="skip", report=said.append) == [good, {**good, "response": "Bye."}]
    assert said[0].startswith(f"skipped {path}:2: field '{field}' {words}"), said
    assert dolly.check_row({**good, field: value}, "hub row 7").startswith(f"hub row 7: field '{field}' {words}")


def test_paper_rows_do_not_count_invisible_words():
    text = ("Title\n1 Introduction\nThe first sentence sets the scene for the reader here. "
            "A\u200f \u200f \u200f \u200f \u200f \u200f. "
            "The third sentence follows the first and is long enough to be kept.")
    rows = P.continuation_rows({"key": "k", "title": "Title", "text": text}, min_words=6)
    assert [r["messages"][1]["content"] for r in rows] == [
        "The third sentence follows the first and is long enough to be kept."]
    chat.validate_rows(rows)


# ---------------------------------------------------------------- GGUF files
def _gguf(path, tensors: bool):
    import numpy as np

    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    if tensors:
        writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_checks_say_what_is_wrong(tmp_path):
    from gemma_helpers.gguf_header import GGUFError, check_gguf

    good = _gguf(tmp_path / "ok.gguf", tensors=True)
    header_only = _gguf(tmp_path / "header.gguf", tensors=False)
    folder = tmp_path / "model.gguf"
    folder.mkdir()
    (tmp_path / "empty.gguf").write_bytes(b"")
    (tmp_path / "magic.gguf").write_bytes(b"GGUF")
    assert check_gguf(good) == good
    cases = {folder: "is a directory, not a GGUF file", header_only: "has a GGUF header but no tensors",
             tmp_path / "missing.gguf": "does not exist", tmp_path / "empty.gguf": "is not a GGUF file (starts with b''",
             tmp_path / "magic.gguf": "is not a readable GGUF file"}
    for path, words in cases.items():
        with pytest.raises(GGUFError, match=f"{path}.*{words}".replace("(", r"\(")):
            check_gguf(path)
    assert check_gguf(good) == good  # unchanged by the bad files beside it


def test_load_gguf_fails_only_with_gguf_error(tmp_path):
    pytest.importorskip("llama_cpp")
    from gemma_helpers.gguf_header import GGUFError
    from gemma_helpers.llamacpp import load_gguf

    folder = tmp_path / "dir.gguf"
    folder.mkdir()
    for path, words in ((_gguf(tmp_path / "header.gguf", tensors=False), "no tensors"), (folder, "is a directory"),
                        (_gguf(tmp_path / "tiny.gguf", tensors=True), "llama.cpp could not load it")):
        with pytest.raises(GGUFError, match=words):
            load_gguf(path)


# ---------------------------------------------------------------- the setup cell's repository URL
def _run_setup_cell(monkeypatch, repo, url, calls):
    """The setup cell as Colab runs it, cloning into ``repo``; only ``git`` really runs (``calls`` gets each command)."""
    import subprocess
    import sys

    from gemma_helpers.setup_cell import TEMPLATE

    real_run = subprocess.run

    def run(cmd, *a, **kw):
        calls.append(cmd)
        if cmd[0] == "git":
            return real_run(cmd, *a, **kw)
        raise AssertionError(f"the cell ran {cmd}")

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    monkeypatch.setenv("GEMMA_REPO_URL", url)
    assert TEMPLATE.count('REPO = "/content/gemma-lora-notebooks"') == 1
    cell = TEMPLATE.replace('REPO = "/content/gemma-lora-notebooks"', f"REPO = {str(repo)!r}")
    exec(compile(cell, "setup-cell", "exec"), {})


@pytest.mark.parametrize("url", ["--upload-pack=touch {marker}", "-u touch {marker}", "ext::sh -c touch% {marker}",
                                 " --upload-pack=touch {marker} "])
def test_setup_cell_refuses_a_repo_url_that_git_would_read_as_an_option(monkeypatch, tmp_path, url):
    import subprocess

    repo, marker = tmp_path / "gemma-lora-notebooks", tmp_path / "pwned"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)  # an earlier clone, without the package
    url, calls = url.format(marker=marker), []
    with pytest.raises(SystemExit, match=r"is not an http\(s\), ssh, git or file URL") as err:
        _run_setup_cell(monkeypatch, repo, url, calls)
    assert repr(url.strip()) in str(err.value) and "GEMMA_REPO_URL" in str(err.value)
    assert calls == [] and not marker.exists()


def test_setup_cell_passes_the_url_after_double_dash(monkeypatch, tmp_path):
    missing = tmp_path / "no-such-repo"
    calls = []
    with pytest.raises(SystemExit, match=f"git clone file://{missing} failed"):
        _run_setup_cell(monkeypatch, tmp_path / "clone", f"file://{missing}", calls)
    assert [c[-3:] for c in calls] == [["--", f"file://{missing}", str(tmp_path / "clone")]]


# ---------------------------------------------------------------- gh.serve under a hostile environment
FAKE_SERVER = '''
"""Stands in for llama_cpp.server: reads HOST, PORT and CONFIG_FILE ahead of its flags as that server does."""
import argparse, json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

parser = argparse.ArgumentParser()
for flag in ("--model", "--model_alias", "--host", "--port", "--n_ctx", "--n_threads", "--seed", "--chat_format"):
    parser.add_argument(flag)
args = parser.parse_args()
host, port, alias = args.host, int(args.port), args.model_alias
if os.environ.get("CONFIG_FILE"):
    config = json.load(open(os.environ["CONFIG_FILE"]))
    host, port, alias = config["host"], config["port"], config["models"][0]["model_alias"]
host, port = os.getenv("HOST", host), int(os.getenv("PORT", port))
alias = ANSWER or alias
secrets = sorted(k for k in os.environ if k.upper() in ("API_KEY", "SSL_KEYFILE", "N_GPU_LAYERS"))


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"data": [{"id": alias, "owned_by": f"{host}:{port}", "env": secrets}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer((host, port), Handler).serve_forever()
'''


@pytest.fixture
def fake_llama_server(monkeypatch, tmp_path):
    """gh.serve starting FAKE_SERVER instead of llama_cpp.server (no model loaded); call it with what /v1/models answers."""
    import importlib

    pytest.importorskip("llama_cpp.server.settings")
    serve = importlib.import_module("gemma_helpers.serve")  # the module (gemma_helpers.serve is also the function)

    def use(answer=None):
        (tmp_path / "fake_llama_server.py").write_text(FAKE_SERVER.replace("ANSWER", repr(answer)))
        monkeypatch.setattr(serve, "SERVER_MODULE", "fake_llama_server")
        monkeypatch.setattr(serve, "chat_format", lambda path: "gemma")
        monkeypatch.setenv("PYTHONPATH", str(tmp_path))
        return serve

    return use


def _get(url):
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.load(answer)


def test_serve_binds_loopback_whatever_host_port_and_config_file_say(fake_llama_server, monkeypatch, tmp_path):
    serve = fake_llama_server()
    elsewhere = serve.free_port()
    (tmp_path / "config.json").write_text(json.dumps({"host": "0.0.0.0", "port": elsewhere, "models": [{"model_alias": "x"}]}))
    for name, value in {"HOST": "0.0.0.0", "PORT": str(elsewhere), "CONFIG_FILE": str(tmp_path / "config.json"),
                        "api_key": "k", "Ssl_Keyfile": "/nope", "N_GPU_LAYERS": "99"}.items():
        monkeypatch.setenv(name, value)
    with serve.serve(tmp_path / "m.gguf", timeout=20) as server:
        model, = _get(f"{server.base_url}/models")["data"]
        assert (model["id"], model["owned_by"], model["env"]) == ("m.gguf", f"127.0.0.1:{server.port}", [])
    assert "PATH" in serve.server_env() and not {"HOST", "PORT", "CONFIG_FILE", "api_key"} & set(serve.server_env())


def test_serve_refuses_a_taken_port_before_starting(fake_llama_server, monkeypatch, tmp_path):
    import socket
    import time

    serve = fake_llama_server()
    monkeypatch.setattr(serve.subprocess, "Popen", lambda *a, **kw: pytest.fail("a server was started"))
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.time()
        with pytest.raises(serve.PortInUseError, match=f"port {port} on 127.0.0.1 is already in use"):
            serve.serve(tmp_path / "m.gguf", port=port, timeout=20)
        assert time.time() - start < 2


def test_serve_refuses_a_server_that_serves_another_model(fake_llama_server, monkeypatch, tmp_path):
    serve = fake_llama_server(answer="someone-else.gguf")
    started = []
    popen = serve.subprocess.Popen
    monkeypatch.setattr(serve.subprocess, "Popen", lambda *a, **kw: started.append(popen(*a, **kw)) or started[-1])
    with pytest.raises(RuntimeError, match=r"serves \['someone-else.gguf'\], not m.gguf: another process holds port"):
        serve.serve(tmp_path / "m.gguf", timeout=20)
    assert started[0].poll() is not None  # the process started is stopped, not left running


# ---------------------------------------------------------------- gh.merge into its own source
class _Loaded(Exception):
    pass


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("target", ["adapter", "adapter/merged", ".", "base", "base/merged", "link", "adapter/../adapter"])
def test_merge_refuses_a_target_that_is_in_or_around_the_adapter_or_base(monkeypatch, tmp_path, target):
    from gemma_helpers import hub, merging

    adapter, base = tmp_path / "adapter", tmp_path / "base"
    adapter.mkdir(), base.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / hub.META).write_text("{}")
    (base / "config.json").write_text("{}")
    (tmp_path / "link").symlink_to(adapter)
    before = _snapshot(tmp_path)
    monkeypatch.setattr(merging, "load_trained_base", lambda adapter_dir: (_ for _ in ()).throw(_Loaded()))
    out = tmp_path / target
    with pytest.raises(ValueError, match="merge target") as err:
        merging.merge(adapter, out)
    assert str(out) in str(err.value) and (str(adapter) in str(err.value) or str(base) in str(err.value))
    assert _snapshot(tmp_path) == before
    with pytest.raises(_Loaded):  # a folder beside them is fine: the merge goes on to load the base
        merging.merge(adapter, tmp_path / "merged")


# ---------------------------------------------------------------- the model card
def _card_folder(tmp_path, base="google/gemma-3-270m"):
    folder = tmp_path / "adapter"
    folder.mkdir(exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    return folder


def test_card_that_cannot_be_encoded_leaves_the_old_readme(tmp_path):
    from gemma_helpers.hub import write_card

    folder = _card_folder(tmp_path)
    old = write_card(folder, title="Xylandia ✓").read_bytes()
    assert "Xylandia ✓".encode() in old
    with pytest.raises(ValueError) as err:
        write_card(folder, title="broken \ud800 title")
    assert (folder / "README.md").read_bytes() == old
    assert re.search(rf"{folder / 'README.md'}.*UTF-8", str(err.value)), err.value
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter_config.json"]  # no temp file left


def test_card_of_an_adapter_that_names_no_base_is_written(tmp_path):
    from gemma_helpers.hub import write_card

    card = write_card(_card_folder(tmp_path, base=None)).read_text(encoding="utf-8")  # a model built in memory
    assert "base_model:" not in card and "a model built in memory (no hub id)" in card


def test_card_is_utf8_whatever_the_locale(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    folder = _card_folder(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    code = f"from gemma_helpers.hub import write_card; write_card({str(folder)!r}, title={ascii('درود ✓')})"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "# درود ✓" in (folder / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("base", ["google/gemma\nlicense: other", "google/gemma\r\nx: y", "google/gemma\u2028x: y",
                                  "google/gemma\x00", "google/gemma\x1b[31m", "google/gemma\u0085x: y"])
def test_card_refuses_a_base_id_with_control_characters(tmp_path, base):
    from gemma_helpers.hub import write_card

    folder = _card_folder(tmp_path, base)
    with pytest.raises(ValueError, match=rf"{folder}.*base model id {re.escape(repr(base))} has a control character"):
        write_card(folder)
    assert not (folder / "README.md").exists()


def test_card_escapes_pipes_and_line_breaks_in_result_keys_and_values(tmp_path):
    from gemma_helpers.hub import write_card

    folder = _card_folder(tmp_path)
    results = {"recall | held out": 0.5, "two\nlines": "a|b", "note": "x\r\ny\\|z", "lost": ["p|q", "r\ns"],
               "by split": {"train|x": 1.0}}
    card = write_card(folder, results=results).read_text(encoding="utf-8")
    table = card.split("## Measured results")[1].split("\n\n")[1].splitlines()
    assert len(table) == 2 + 5, table
    for row in table:  # each row: two cells, every pipe inside a cell escaped
        assert len(re.findall(r"(?<!\\)(?:\\\\)*\|", row)) == 3, row
    assert card.count("\n---\n") == 1 and card.startswith("---\n")


# ---------------------------------------------------------------- recipe overrides
@pytest.mark.parametrize("overrides, said", [
    ({"learning_rate": "2e-4", "max_steps": "20"},
     ["learning_rate='2e-4' is a str: expected a number > 0", "max_steps='20' is a str: expected -1 (train by epochs) or an int >= 1"]),
    ({"max_steps": -5}, ["max_steps=-5: expected -1 (train by epochs) or an int >= 1"]),
    ({"max_steps": 0}, ["max_steps=0: expected -1 (train by epochs) or an int >= 1"]),
    ({"max_steps": True, "r": 8.0}, ["max_steps=True is a bool: expected -1 (train by epochs) or an int >= 1",
                                        "r=8.0 is a float: expected an int >= 1"]),
    ({"learning_rate": 0, "epochs": float("nan")}, ["learning_rate=0: expected a number > 0", "epochs=nan: expected a number > 0"]),
    ({"batch_size": 0, "dropout": 1.0, "warmup_steps": -1},
     ["batch_size=0: expected an int >= 1", "dropout=1.0: expected a number >= 0 and < 1", "warmup_steps=-1: expected an int >= 0"]),
    ({"target_modules": ["q_proj", 3], "padding_free": "yes", "compute_dtype": "float16"},
     ["target_modules=['q_proj', 3]: expected", "padding_free='yes' is a str: expected True, False or None",
      "compute_dtype='float16': expected one of"]),
])
def test_recipe_overrides_are_checked_all_at_once_naming_field_value_and_what_is_allowed(overrides, said):
    from gemma_helpers import recipes
    from gemma_helpers.train import TrainSpec

    with pytest.raises(ValueError) as err:
        recipes.get("papers", "cpu", **overrides)
    assert "recipe 'papers' (cpu profile)" in str(err.value)
    for words in said:
        assert words in str(err.value), (words, str(err.value))
    with pytest.raises(ValueError) as err:
        TrainSpec(**overrides)
    assert all(words in str(err.value) for words in said), str(err.value)


def test_good_overrides_and_every_registered_recipe_still_build_a_spec():
    from gemma_helpers import recipes

    spec = recipes.get("papers", "cpu", learning_rate=1e-4, max_steps=20, epochs=2, target_modules="q_proj").spec()
    assert (spec.learning_rate, spec.max_steps, spec.epochs) == (1e-4, 20, 2)
    assert recipes.get("papers", "cpu", max_steps=-1).spec().max_steps == -1
    for name in recipes.REGISTRY:
        for profile in recipes.PROFILES:
            recipes.get(name, profile).spec()


# ---------------------------------------------------------------- JSON Lines lines that break the parser
def _hostile_jsonl(tmp_path):
    lines = ['{"t": "one"}', "[" * 100_000, '{"t": "two \\ud83d\\ude00"}', '{"n": ' + "9" * 5000 + "}", "",
             '{"t": "lone \\ud800 half"}', '{"\\udc00": "key"}', '{"t": "three"}']
    path = tmp_path / "hostile.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_skip_keeps_good_rows_when_a_line_breaks_the_parser(tmp_path):
    from gemma_helpers.jsonl import read_jsonl

    path, said = _hostile_jsonl(tmp_path), []
    rows = read_jsonl(path, errors="skip", report=said.append)
    assert rows == [{"t": "one"}, {"t": "two \U0001f600"}, {"t": "three"}] and rows.lines == [1, 3, 8]
    assert [e.line for e in rows.skipped] == [2, 4, 6, 7]  # file lines: the blank line 5 is counted
    problems = [e.problem for e in rows.skipped]
    assert "nested too deeply" in problems[0] and "digits" in problems[1]
    assert "lone surrogate U+D800" in problems[2] and "field 't'" in problems[2]
    assert "lone surrogate U+DC00" in problems[3] and "a key" in problems[3]
    assert said[:4] == [f"skipped {e}" for e in rows.skipped] and said[4] == f"{path}: skipped 4 of 7 lines"


@pytest.mark.parametrize("line, words", [(2, "nested too deeply"), (4, "digits"), (6, "lone surrogate")])
def test_jsonl_raise_names_the_file_line_of_a_line_that_breaks_the_parser(tmp_path, line, words):
    from gemma_helpers.jsonl import JSONLError, read_jsonl

    path = _hostile_jsonl(tmp_path)
    text = path.read_text(encoding="utf-8").split("\n")
    keep = [t if i + 1 in (1, line) else "" for i, t in enumerate(text)]  # the bad line alone, at its place
    path.write_text("\n".join(keep), encoding="utf-8")
    with pytest.raises(JSONLError, match=rf"{path}:{line}: .*{words}"):
        read_jsonl(path, errors="raise")


# ---------------------------------------------------------------- gh.train's output folder
@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory):
    """A random-weight Gemma 3 text model, 128 wide: a few training steps take about a second."""
    from gemma_helpers import rehearsal

    return rehearsal.gemma3_text_checkpoint(tmp_path_factory.mktemp("hostile-tiny") / "gemma3-tiny", hidden_size=128)


def _train_tiny(folder, out, steps=2, **kwargs):
    import gemma_helpers as gh

    model, tok = gh.load_model(str(folder))
    spec = gh.TrainSpec(target_modules=("q_proj",), max_steps=steps, batch_size=2, save_steps=1)
    return gh.train(model, tok, gh.qa_rows([("Q?", "A.")] * 4), spec, out, **kwargs)


@pytest.fixture(scope="module")
def two_checkpoints(tiny_text_dir, tmp_path_factory):
    """A finished 2-step run of the tiny model, checkpoints 1 and 2 (each test resumes a copy)."""
    out = tmp_path_factory.mktemp("two-checkpoints")
    assert _train_tiny(tiny_text_dir, out, steps=2).global_step == 2
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    return out


def test_train_leaves_a_readme_in_its_output_folder_alone(tiny_text_dir, tmp_path):
    (tmp_path / "README.md").write_text("my notes on this run")
    result = _train_tiny(tiny_text_dir, tmp_path)
    assert (tmp_path / "README.md").read_text() == "my notes on this run"  # TRL's card was written over it
    assert result.global_step == 2 and (result.adapter_dir / "README.md").is_file()  # the adapter's own card
    assert not list(tmp_path.glob(".*.tmp")) and not list(result.adapter_dir.glob(".*.tmp"))


@pytest.mark.parametrize("content", ['{"my": "results"}', "not json at all", "[1, 2]"])
def test_train_stops_before_replacing_a_history_json_it_did_not_write(tmp_path, content):

    import gemma_helpers as gh

    (tmp_path / "history.json").write_text(content)
    for resume in (False, True):  # the check comes before the model is touched: no model needed
        with pytest.raises(FileExistsError, match=rf"{tmp_path / 'history.json'} .*not written by gemma_helpers.train"):
            gh.train(None, None, gh.qa_rows([("Q?", "A.")]), gh.TrainSpec(max_steps=1), tmp_path, resume=resume)
        assert (tmp_path / "history.json").read_text() == content
        assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]  # nothing trained, nothing written


def test_train_replaces_its_own_history_json(tiny_text_dir, two_checkpoints, tmp_path):
    import shutil

    shutil.copytree(two_checkpoints, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "history.json").read_text())["global_step"] == 2
    again = _train_tiny(tiny_text_dir, tmp_path / "run", steps=1)  # a fresh run into an earlier run's folder
    assert json.loads((tmp_path / "run" / "history.json").read_text())["global_step"] == again.global_step == 1


@pytest.mark.parametrize("damage", ["adapter_model.safetensors", "optimizer.pt", "trainer_state.json"])
def test_train_resume_passes_over_a_damaged_checkpoint_naming_it(tiny_text_dir, two_checkpoints, tmp_path, capsys,
                                                                 damage):
    import shutil

    tmp_path = tmp_path / "run"
    shutil.copytree(two_checkpoints, tmp_path)
    (tmp_path / "checkpoint-2" / damage).write_bytes(b"\xff" * 64)  # junk over the newest checkpoint's file
    capsys.readouterr()
    result = _train_tiny(tiny_text_dir, tmp_path, steps=3, resume=True)
    said = capsys.readouterr().out
    assert re.search(rf"passed over {tmp_path / 'checkpoint-2'} \({re.escape(damage)} does not read .*\); "
                     rf"resuming from {tmp_path / 'checkpoint-1'}", said), said
    assert result.resumed_from == str(tmp_path / "checkpoint-1") and result.global_step == 3
    assert [h["step"] for h in result.history] == [1, 2, 3]
    from gemma_helpers.train import checkpoint_problem

    assert [checkpoint_problem(tmp_path / f"checkpoint-{n}") for n in (2, 3)] == [None, None]  # step 2 saved again


# ---------------------------------------------------------------- characters that are not text, inside visible text
NOT_TEXT_CHARS = {"\x00": "control character U+0000 (NUL)", "\x1b": "control character U+001B (ESC)",
                  "\x0c": "control character U+000C (FF)", "\x07": "control character U+0007 (BEL)",
                  "\ud800": "lone surrogate U+D800", "\udfff": "lone surrogate U+DFFF"}


@pytest.mark.parametrize("char", NOT_TEXT_CHARS)
def test_chat_rows_with_a_control_character_or_lone_surrogate_name_row_field_and_character(char):
    good = chat.qa_rows([("Q1?", "A1."), ("Q2?", "A2\tsplit\r\nover lines.")])
    bad = chat.qa_rows([("Q?", f"Tehran{char} is the capital.")])
    with pytest.raises(DataError) as err:
        chat.validate_rows(good + bad)
    assert (err.value.row, err.value.field) == (2, "messages[1].content")
    assert f"has a {NOT_TEXT_CHARS[char]} at character 6" in str(err.value), err.value
    with pytest.raises(DataError, match=r"row 1: field 'prompt' has a"):
        chat.validate_rows([{"text": "fine"}, {"prompt": f"Q{char}?", "completion": "A"}])
    chat.validate_rows(good)  # tab, CR and LF are text


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\ud800"])
def test_persian_cleaning_reports_a_turn_with_a_control_character_as_dropped(char):
    rows = chat.qa_rows([("سلام", "درود"), ("پایتخت ایران؟", f"تهران{char}"), ("چطوری؟", "خوبم")])
    clean, report = persian.clean_conversations(rows)
    assert clean == chat.qa_rows([("سلام", "درود"), ("چطوری؟", "خوبم")])
    assert [(d["row"], d["reason"]) for d in report.dropped] == [(1, "control_character")]
    assert report.dropped[0]["detail"].startswith(f"messages[1] (assistant) has a {NOT_TEXT_CHARS[char]}")
    assert report.removed["control_character"] == 1 and report.kept == [0, 2]
    chat.validate_rows(clean)


def test_dolly_rows_with_a_control_character_are_skipped_naming_line_and_field(tmp_path):
    good = {"instruction": "Say hi.", "context": "", "response": "Hi.", "category": "open_qa"}
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (good, {**good, "response": "Hi\x00."},
                                                     {**good, "context": "a\x1bb"}, {**good, "response": "Bye."})))
    said = []
    assert dolly.read_jsonl(path, errors="skip", report=said.append) == [good, {**good, "response": "Bye."}]
    assert said[0].startswith(f"skipped {path}:2: field 'response' has a control character U+0000 (NUL)")
    assert said[1].startswith(f"skipped {path}:3: field 'context' has a control character U+001B (ESC)")


def test_paper_text_loses_control_characters_before_it_becomes_rows():
    from gemma_helpers.data.pdf import clean_pages

    text = clean_pages(["A Title\nThe first sentence\x00 of the paper is here.\x1b And the second\x0cone."])
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f]", text) and "sentence of the paper" in text


# ---------------------------------------------------------------- Dolly rows repeated
def test_dolly_reader_drops_exact_duplicates_and_counts_them(tmp_path):
    rows = [{"instruction": f"Question {i}?", "context": "", "response": f"Answer {i}.", "category": "open_qa"}
            for i in range(30)]
    path = tmp_path / "d.jsonl"
    copies = [rows[i % 3] for i in range(10_000)]  # 10,000 exact copies of the first 3 rows, then the rest
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:3] + copies + rows[3:]))
    said = []
    read = dolly.read_jsonl(path, errors="skip", report=said.append)
    assert read == rows
    assert said[0] == f"skipped {path}:4: the same row as {path}:1 (an exact duplicate)" and len(said) == 6
    assert said[-1] == (f"{path}: dropped 10000 exact duplicate rows of 10030, the first of each kept "
                        "(9995 not named above)")
    train, held = dolly.split(read, 20, 10)
    assert not {json.dumps(r) for r in train} & {json.dumps(r) for r in held}


def test_dolly_split_refuses_a_row_on_both_sides():
    rows = [{"instruction": f"Q{i}?", "context": "", "response": "A.", "category": "open_qa"} for i in range(5)]
    with pytest.raises(ValueError, match="held-out row 4 is the same row as training row 1"):
        dolly.split(rows[:4] + [rows[1]], 4, 1)


# ---------------------------------------------------------------- Modelfiles and GGUF chat templates
def test_a_modelfile_that_is_not_utf8_is_named(tmp_path):
    from gemma_helpers import modelfile as mf

    good = mf.write_modelfile(tiny_chat_gguf(tmp_path / "m.gguf", chat.GEMMA3_CHAT_TEMPLATE))
    latin1 = tmp_path / "latin1.Modelfile"
    latin1.write_bytes(good.read_text(encoding="utf-8").replace("# Ollama", "# Ollama (modèle)").encode("latin-1"))
    for check in (mf.check_modelfile, mf.parse_modelfile):
        with pytest.raises(mf.ModelfileError, match=rf"{latin1}: not UTF-8: byte 0xe8 at line 1, column 14"):
            check(latin1)
    assert mf.check_modelfile(good)["turn_end"] == "<end_of_turn>"  # the good one beside it still checks


@pytest.mark.parametrize("template, words", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "did not finish rendering"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",  # 2 GiB cap, or the time
     "did not finish rendering|does not render \\(MemoryError"),
    ("{{ raise_exception('no system role') }}", "the chat template raised: no system role"),
    ("{% for m in messages %}", "does not render \\(TemplateSyntaxError"),
    ("{{ ''.__class__.__mro__ }}", "does not render \\(SecurityError: access to attribute '__class__'"),
])
def test_a_gguf_chat_template_that_never_ends_or_fails_is_a_named_error_within_the_limit(monkeypatch, tmp_path,
                                                                                        template, words):
    import time

    from gemma_helpers import modelfile as mf

    good = mf.write_modelfile(tiny_chat_gguf(tmp_path / "good.gguf", chat.GEMMA3_CHAT_TEMPLATE))
    bad = tiny_chat_gguf(tmp_path / "bad.gguf", template)
    modelfile = tmp_path / "bad.Modelfile"
    modelfile.write_text(good.read_text().replace("./good.gguf", "./bad.gguf"))
    monkeypatch.setattr(mf, "TEMPLATE_SECONDS", 2.0)
    start = time.monotonic()
    with pytest.raises(mf.ModelfileError, match=rf"{bad}: .*({words})"):
        mf.check_modelfile(modelfile)
    assert time.monotonic() - start < 10


# ---------------------------------------------------------------- notebook 01's download of a server that never answers
def _notebook_cells(name):
    from pathlib import Path

    import jupytext

    path = Path(__file__).resolve().parent.parent / "notebooks" / name
    return [c for c in jupytext.read(path, fmt="py:percent").cells if c.cell_type == "code"]


def test_notebook_01_gives_each_paper_a_deadline_and_reports_a_server_that_never_answers(tmp_path):
    import time

    from gemma_helpers import offline
    from gemma_helpers.data import papers as gp

    cells = _notebook_cells("01_papers_wordclouds_lora.py")
    params = next(c.source for c in cells if "parameters" in c.metadata.get("tags", []))
    assert re.search(r"^DEADLINE_S = 60\b", params, re.MULTILINE), "notebook 01's parameters cell sets no per-paper deadline"
    download_cell = next(c.source for c in cells if "gp.collect(" in c.source)
    first = gp.sample()[0]
    pdf = offline.sample_pdf(first)
    with offline.LoopbackServer({"good": pdf, "silent": pdf}, {"silent": "hang"}, hang_s=30) as server:
        paper_list = [gp.Paper(key, first["title"], "ai", url=server.url(key)) for key in ("good", "silent")]
        namespace = {"gp": gp, "paper_list": paper_list, "out": tmp_path, "MAX_MB": 50, "stop_server": server.stop,
                     "DEADLINE_S": 1.5}  # as papermill overrides the parameters cell
        started = time.monotonic()
        exec(compile(download_cell, "notebook 01, section 2", "exec"), namespace)
        elapsed = time.monotonic() - started
    report = {r["key"]: r for r in namespace["corpus"].report}
    assert report["silent"]["status"] == "failed", report
    assert report["silent"]["reason"].startswith("deadline: no answer (0 bytes arrived) within the 1.5 s"), report
    assert report["good"]["status"] == "ok" and (tmp_path / "pdf" / "good.pdf").read_bytes() == pdf
    assert [p["key"] for p in namespace["corpus"].papers] == ["good"]
    assert elapsed < 1.5 + 3, elapsed
