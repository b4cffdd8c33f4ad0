"""Hostile but realistic input: rows a model cannot learn from (the chat validator and the Persian and
Dolly cleaning agree on them), files that are not GGUF models. Each case asserts the named error AND
that the good items beside the bad one are intact. (Servers that answer badly: test_download; JSON
Lines files written by other tools: test_jsonl.)"""
from __future__ import annotations

import json

import pytest

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
    from gemma_helpers.export import GGUFError, check_gguf

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
    from gemma_helpers.export import GGUFError, load_gguf

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
