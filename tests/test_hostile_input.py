"""Hostile but realistic input: a loopback server that answers badly, files written by other tools,
rows a model cannot learn from, files that are not GGUF models. Each case asserts the named error
AND that the good items beside the bad one are intact. Fast: short deadlines, tiny backoff bases."""
from __future__ import annotations

import codecs
import datetime
import gzip
import json
import socket
import time

import pytest

from gemma_helpers import chat, jsonl, offline
from gemma_helpers.chat import DataError
from gemma_helpers.data import dolly, download, persian
from gemma_helpers.data import papers as P

FAST = {"retries": 2, "backoff_s": 0.01, "timeout": (1.0, 5.0), "progress": False}


@pytest.fixture(scope="module")
def sample():
    """Three of the bundled mini-papers as PDF bytes, by key."""
    return {p["key"]: (p, offline.sample_pdf(p)) for p in P.sample()[:3]}


def paper(server, key, title, url=None):
    return P.Paper(key, title, "ai", url=url if url is not None else server.url(key))


# ---------------------------------------------------------------- the downloader
def test_one_collect_call_keeps_every_good_paper_whatever_the_bad_urls_do(tmp_path, sample):
    (a, pdf_a), (b, pdf_b), (c, pdf_c) = sample.values()
    files = {a["key"]: pdf_a, b["key"]: pdf_b, "zipped": pdf_c, "odd_length": pdf_a, "never_answers": pdf_a,
             "loop": pdf_a, "to_file": pdf_a, "endless": pdf_a, "trickle": pdf_b}
    faults = {"zipped": "gzip", "odd_length": "bad_length", "never_answers": "hang", "loop": "redirect_loop",
              "to_file": "redirect_file", "endless": "redirect_forever", "trickle": "trickle"}
    deadline = 2.0
    with offline.LoopbackServer(files, faults, hang_s=30, trickle_s=0.5) as server:
        papers = [paper(server, a["key"], a["title"]), paper(server, b["key"], b["title"]),
                  paper(server, "zipped", c["title"]), paper(server, "odd_length", a["title"]),
                  paper(server, "never_answers", a["title"]), paper(server, "loop", a["title"]),
                  paper(server, "to_file", a["title"]), paper(server, "endless", a["title"]),
                  paper(server, "malformed", a["title"], url="http://"),
                  paper(server, "trickle", b["title"])]
        started = time.monotonic()
        corpus = P.collect(papers, tmp_path, deadline_s=deadline, max_redirects=5, **FAST)
        elapsed = time.monotonic() - started
        hits = dict(server.hits)
    print(f"must-show collect: {elapsed:.2f} s\n{corpus}")
    report = {r["key"]: r for r in corpus.report}
    assert [r["key"] for r in corpus.report] == [p.key for p in papers]  # one line per URL, in order
    kept = {p["key"]: p for p in corpus.papers}
    assert set(kept) == {a["key"], b["key"], "zipped", "odd_length"}
    for key, source in ((a["key"], a), (b["key"], b), ("zipped", sample[list(sample)[2]][0])):
        assert source["sections"][0]["text"].split(".")[0] in kept[key]["text"]  # parsed, cleaned text
    # gzip on the wire: decoded before the size and completeness checks, the file on disk is the PDF
    assert report["zipped"]["status"] == "ok" and "gzip" in report["zipped"]["reason"]
    assert (tmp_path / "zipped.pdf").read_bytes() == pdf_c and report["zipped"]["bytes"] == len(pdf_c)
    assert report["odd_length"]["status"] == "ok" and "Content-Length 'lots' is not a number" in report["odd_length"]["reason"]
    bad = {"never_answers": f"deadline: no answer (0 bytes arrived) within the {deadline:g} s",
           "loop": "redirect loop: ", "to_file": "file:///etc/passwd (only http(s) URLs are fetched",
           "endless": "too many redirects: more than 5", "malformed": "malformed URL 'http://': no host name",
           "trickle": f"within the {deadline:g} s allowed for this URL"}
    for key, words in bad.items():
        assert report[key]["status"] == "failed" and words in report[key]["reason"], report[key]
        assert not (tmp_path / f"{key}.pdf").exists()
    assert report["loop"]["reason"].count(" -> ") == 2 and report["loop"]["attempts"] == 1
    assert "malformed" not in hits  # refused before any request
    trickled = int(report["trickle"]["reason"].split("deadline: only ")[1].split(" of ")[0])
    assert 0 < trickled < len(pdf_b)  # the true count, not "0 bytes"
    assert not list(tmp_path.glob(".*.part"))
    # the two slow URLs each end at their deadline; everything else is fast
    assert elapsed < 2 * deadline + 4, elapsed


@pytest.mark.parametrize("url, words", [
    ("http://", "no host name"), ("https:///path.pdf", "no host name"), ("http://host:port/x.pdf", "malformed URL"),
    ("http://host:99999/x.pdf", "malformed URL"), ("ftp://host/x.pdf", "only http(s) URLs are fetched, not 'ftp'"),
    ("file:///etc/passwd", "only http(s)"), ("javascript:alert(1)", "only http(s)"), ("", "not 'a bare path'"),
    ("/etc/passwd", "not 'a bare path'"), ("http://exa mple.org/x.pdf", "whitespace or control characters"),
    ("http://example.org/x\n.pdf", "whitespace or control characters"), (b"http://x/y".decode() + "\x00", "control"),
    (42, "the URL is a int, not text"),
])
def test_malformed_urls_are_refused_before_any_request(tmp_path, url, words):
    class NoNetwork:
        def get(self, *args, **kwargs):
            raise AssertionError("a request was made")

    got = download.download_one(url, tmp_path / "x.pdf", "x", session=NoNetwork(), progress=False)
    assert got.status == "failed" and words in got.reason and got.attempts == 0, got


def test_redirects_good_and_bad_beside_each_other(tmp_path, sample):
    (a, pdf), *_ = sample.values()
    files = {"moved": pdf, "loop": pdf, "to_file": pdf, "endless": pdf}
    faults = {"moved": "redirect", "loop": "redirect_loop", "to_file": "redirect_file", "endless": "redirect_forever"}
    with offline.LoopbackServer(files, faults) as server:
        got = {f.key: f for f in download.download([paper(server, k, a["title"]) for k in files], tmp_path,
                                            max_redirects=3, **FAST)}
        endless_hits = server.hits["endless"]
    assert got["moved"].status == "ok" and "1 redirect(s)" in got["moved"].reason
    assert (tmp_path / "moved.pdf").read_bytes() == pdf
    assert "redirect loop" in got["loop"].reason and got["loop"].http_status == 302
    assert "redirect refused" in got["to_file"].reason and "file:///etc/passwd" in got["to_file"].reason
    assert "too many redirects: more than 3" in got["endless"].reason and endless_hits == 4  # the cap, not more
    assert all(got[k].attempts == 1 for k in ("loop", "to_file", "endless"))  # a bad redirect is not retried


def test_backoff_is_exponential_and_honours_retry_after(tmp_path, sample):
    (a, pdf), *_ = sample.values()
    files = {"down": pdf, "busy": pdf, "good": pdf, "rate": pdf}
    faults = {"down": "500", "busy": "503_retry_after", "rate": "429_forever"}
    with offline.LoopbackServer(files, faults) as server:
        got = {f.key: f for f in download.download([paper(server, k, a["title"]) for k in files], tmp_path,
                                            retries=3, backoff_s=0.1, max_wait_s=5, timeout=(1, 5), progress=False)}
        times = {k: list(v) for k, v in server.times.items()}
    gaps = [t2 - t1 for t1, t2 in zip(times["down"], times["down"][1:])]
    assert len(gaps) == 3 and all(g >= want - 0.01 for g, want in zip(gaps, (0.1, 0.2, 0.4))), gaps
    assert got["down"].status == "failed" and "HTTP 500" in got["down"].reason and got["down"].attempts == 4
    busy_gaps = [t2 - t1 for t1, t2 in zip(times["busy"], times["busy"][1:])]
    assert got["busy"].status == "ok" and got["busy"].attempts == 3 and min(busy_gaps) >= 0.99, busy_gaps  # Retry-After: 1
    # Retry-After: 3600 is more than anyone waits here: one request, and the reason says so
    assert got["rate"].status == "failed" and got["rate"].attempts == 1 and "Retry-After" in got["rate"].reason
    assert got["good"].status == "ok" and (tmp_path / "good.pdf").read_bytes() == pdf


def test_backoff_that_would_pass_the_deadline_stops_and_says_so(tmp_path, sample):
    (_, pdf), *_ = sample.values()
    with offline.LoopbackServer({"down": pdf}, {"down": "500"}) as server:
        started = time.monotonic()
        got = download.download_one(server.url("down"), tmp_path / "down.pdf", "down", retries=5, backoff_s=0.5,
                             deadline_s=1.0, progress=False)
        elapsed = time.monotonic() - started
    assert got.status == "failed" and "would pass the 1 s deadline" in got.reason and elapsed < 1.5, (got, elapsed)


def test_retry_after_as_an_http_date_and_nonsense():
    from email.utils import format_datetime
    from types import SimpleNamespace

    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=30)
    assert 28 <= download._retry_after(SimpleNamespace(headers={"Retry-After": format_datetime(soon, usegmt=True)})) <= 30
    assert download._retry_after(SimpleNamespace(headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0  # past
    for nonsense in ("soon", "-5", "1.5e9", ""):
        assert download._retry_after(SimpleNamespace(headers={"Retry-After": nonsense})) is None


def test_a_refused_connection_is_retried_and_reported_beside_a_good_paper(tmp_path, sample):
    (a, pdf), *_ = sample.values()
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with offline.LoopbackServer({"good": pdf}) as server:
        got = download.download([paper(server, "good", a["title"]),
                          paper(server, "closed", a["title"], url=f"http://127.0.0.1:{closed}/x.pdf")], tmp_path, **FAST)
    assert got[0].status == "ok" and (tmp_path / "good.pdf").read_bytes() == pdf
    assert got[1].status == "failed" and "connection failed" in got[1].reason and got[1].attempts == 3


def test_truncation_encodings_and_sizes_report_true_byte_counts(tmp_path, sample):
    (a, pdf), *_ = sample.values()
    padded = pdf + b"%" * 300_000  # still a PDF once decoded, but over the cap: a small gzip that inflates
    files = {"cut": pdf, "bad_zip": pdf, "bomb": padded, "empty": pdf, "good": pdf, "zipped": pdf}
    faults = {"cut": "truncate", "bad_zip": "bad_gzip", "bomb": "gzip", "empty": "empty", "zipped": "gzip"}
    with offline.LoopbackServer(files, faults) as server:
        got = {f.key: f for f in download.download([paper(server, k, a["title"]) for k in files], tmp_path,
                                            max_bytes=200_000, **FAST)}
    assert got["cut"].status == "failed" and got["cut"].attempts == 3  # retried, then reported
    assert f"truncated: the connection closed after {len(pdf) // 2} of {len(pdf)} bytes" in got["cut"].reason
    assert got["bad_zip"].status == "failed" and "'gzip' content encoding could not be decoded" in got["bad_zip"].reason
    assert got["bomb"].status == "failed" and "too large: more than the cap of 200000 bytes" in got["bomb"].reason
    assert len(gzip.compress(padded)) < 200_000  # what was declared passed the cap; what it inflated to did not
    assert got["empty"].status == "failed" and "empty body" in got["empty"].reason
    for key in ("good", "zipped"):
        assert got[key].status == "ok" and (tmp_path / f"{key}.pdf").read_bytes() == pdf
    assert not list(tmp_path.glob(".*.part"))


def test_duplicate_keys_are_an_error_naming_both_entries(tmp_path):
    papers = [P.Paper("lora", "LoRA", "ai", url="http://127.0.0.1:9/a.pdf"),
              P.Paper("other", "Other", "ai", url="http://127.0.0.1:9/o.pdf"),
              P.Paper("lora", "LoRA again", "ai", url="http://127.0.0.1:9/b.pdf")]
    with pytest.raises(ValueError, match=r"'lora' is used twice: entry 0 \(http://127.0.0.1:9/a.pdf\) and entry 2 "
                                         r"\(http://127.0.0.1:9/b.pdf\)"):
        P.collect(papers, tmp_path, progress=False)
    assert not any(tmp_path.iterdir())  # nothing was fetched


def test_keys_that_sanitise_alike_never_share_a_file(tmp_path, sample):
    (a, pdf_a), (b, pdf_b), (c, pdf_c) = sample.values()
    keys = {"a b": (a, pdf_a), "a_b": (b, pdf_b), "A_B": (c, pdf_c), "x/a_b": (a, pdf_a)}
    assert len({download.safe_filename(k).lower() for k in keys}) == 1  # what went wrong before
    with offline.LoopbackServer({k: v[1] for k, v in keys.items()}) as server:
        papers = [P.Paper(k, v[0]["title"], "ai", url=server.url(k)) for k, v in keys.items()]
        corpus = P.collect(papers, tmp_path, **FAST)
        again = P.collect(papers, tmp_path, **FAST)  # a rerun finds each paper's own file
    names = download.paper_files(papers)
    assert names[0] == "a_b.pdf" and len({n.lower() for n in names}) == len(keys)
    assert [r["status"] for r in corpus.report] == ["ok"] * 4 and [r["status"] for r in again.report] == ["cached"] * 4
    for (key, (_, pdf)), name in zip(keys.items(), names):
        assert (tmp_path / name).read_bytes() == pdf, key
    assert [p["title"] for p in corpus.papers] == [v[0]["title"] for v in keys.values()]


# ---------------------------------------------------------------- the JSONL reader
def good_chat(q, a):
    return json.dumps(chat.qa_rows([(q, a)])[0], ensure_ascii=False)


def test_a_jsonl_file_from_other_tools_keeps_its_good_rows_and_names_the_bad_line(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [codecs.BOM_UTF8 + good_chat("سلام", "درود").encode(),
             good_chat("Line\u2028separator?", "Kept\u2028whole, and\u0085this\u2029too.").encode(),
             b"",  # a blank line
             good_chat("Windows Arabic?", "سلام").encode("utf-8").replace("سلام".encode(), "سلام".encode("cp1256")),
             good_chat("after", "the bad line").encode() + b"\r"]  # a CRLF line end
    path.write_bytes(b"\n".join(lines) + b"\n")
    # raise: the bad line is named by file and FILE line (the blank line counts)
    with pytest.raises(jsonl.JSONLError, match=rf"{path}:4: not UTF-8: byte 0xd3 at column \d+") as err:
        jsonl.read_jsonl(path, errors="raise")
    assert err.value.line == 4 and err.value.path == str(path)
    # skip: every good row, the U+2028 / U+0085 / U+2029 row whole, rows numbered by file line
    said = []
    rows = jsonl.read_jsonl(path, errors="skip", report=said.append)
    assert [r["messages"][0]["content"] for r in rows] == ["سلام", "Line\u2028separator?", "after"]
    assert rows[1]["messages"][1]["content"] == "Kept\u2028whole, and\u0085this\u2029too."
    assert rows.lines == [1, 2, 5] and [e.line for e in rows.skipped] == [4]
    assert said[0].startswith(f"skipped {path}:4: not UTF-8") and said[1] == f"{path}: skipped 1 of 4 lines"
    chat.validate_rows(rows)  # what was read is trainable


def test_dolly_reader_follows_json_lines_and_numbers_by_file_line(tmp_path):
    good = {"instruction": "Say hi.", "context": "", "response": "Hi.", "category": "open_qa"}
    sep = {**good, "response": "One\u2028two\u0085three."}
    path = tmp_path / "dolly.jsonl"
    path.write_bytes(b"\n".join([codecs.BOM_UTF8 + json.dumps(good).encode(), b"", b"   ",
                                 json.dumps(sep, ensure_ascii=False).encode(), "{\"instruction\": \"é\"}".encode("latin-1"),
                                 b"[1, 2]", b"{not json", json.dumps({**good, "instruction": "Last"}).encode()]))
    said = []
    rows = dolly.read_jsonl(path, errors="skip", report=said.append)
    assert rows == [good, sep, {**good, "instruction": "Last"}]  # the last line has no "\n": still read
    assert [s.split(": ", 2)[0] for s in said[:-1]] == [f"skipped {path}:{n}" for n in (5, 6, 7)]
    assert "not UTF-8" in said[0] and "not a JSON object but a list" in said[1] and "not valid JSON" in said[2]
    assert said[-1] == f"{path}: skipped 3 of 6 lines"


def test_jsonl_edge_files(tmp_path):
    empty, bom_only, crlf = tmp_path / "empty.jsonl", tmp_path / "bom.jsonl", tmp_path / "crlf.jsonl"
    empty.write_bytes(b"")
    bom_only.write_bytes(codecs.BOM_UTF8 + b"\n\n")
    crlf.write_bytes(b'{"a": 1}\r\n\r\n{"a": "\\u2028"}\r\n')
    assert jsonl.read_jsonl(empty, errors="raise") == [] and jsonl.read_jsonl(bom_only, errors="raise") == []
    rows = jsonl.read_jsonl(crlf, errors="raise")
    assert rows == [{"a": 1}, {"a": "\u2028"}] and rows.lines == [1, 3]
    with pytest.raises(ValueError, match="errors='ignore'"):
        jsonl.read_jsonl(crlf, errors="ignore")
    with pytest.raises(jsonl.JSONLError, match=rf"{crlf}:3: field 'x'"):
        jsonl.read_jsonl(crlf, errors="raise", check=lambda row: "field 'x' is missing" if row["a"] != 1 else None)


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
