"""gemma_helpers.jsonl, the one JSON Lines reader, and its error policy as each caller names it
(file-format edge cases from other tools are in test_hostile_input)."""
import json

import pytest

from gemma_helpers import jsonl
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
