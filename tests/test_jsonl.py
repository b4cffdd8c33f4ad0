"""gemma_helpers.jsonl, the one JSON Lines reader: its error policy as each caller names it, and files
written by other tools (a BOM, U+2028 inside strings, CRLF, a line that is not UTF-8)."""
import codecs
import json

import pytest

from gemma_helpers import chat, jsonl
from gemma_helpers.data import dolly

GOOD = {"instruction": "Say hi.", "context": "", "response": "Hi.", "category": "open_qa"}


def test_read_jsonl_names_the_file_and_line(tmp_path):
    path = tmp_path / "chat.jsonl"
    row = {"messages": [{"role": "user", "content": "سلام"}, {"role": "assistant", "content": "درود"}]}
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n\n{not json\n", encoding="utf-8")
    with pytest.raises(jsonl.JSONLError, match=rf"{path}:3: not valid JSON"):
        jsonl.read_jsonl(path, errors="raise")


def test_every_caller_names_its_error_policy(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n')
    with pytest.raises(TypeError, match="errors"):
        jsonl.read_jsonl(path)
    with pytest.raises(TypeError, match="errors"):
        dolly.read_jsonl(path)


def test_dolly_reader_raises_or_skips_as_the_caller_says(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([json.dumps(GOOD), "{not json", json.dumps({**GOOD, "response": "Bye."})]) + "\n")
    with pytest.raises(jsonl.JSONLError, match=rf"{path}:2: not valid JSON"):
        dolly.read_jsonl(path, errors="raise", report=pytest.fail)
    said = []
    assert dolly.read_jsonl(path, errors="skip", report=said.append) == [GOOD, {**GOOD, "response": "Bye."}]
    assert said == [f"skipped {path}:2: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
                    f"{path}: skipped 1 of 3 lines"]


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
