"""Reading JSON Lines files (https://jsonlines.org): one reader for the package, the error policy the caller's.

The file is UTF-8 (a byte-order mark at the start is accepted) and lines end in ``\\n`` (or
``\\r\\n``) only: a U+2028, U+0085 or form feed inside a JSON string is part of its line, not a line
end (``str.splitlines`` would cut the row there). Blank lines are skipped, and every row keeps the
number of its line in the file, so a message names the line an editor shows. Every problem (a line
that is not UTF-8, not JSON, cannot be parsed at all (nested past the recursion limit, an integer of
thousands of digits), holds a lone surrogate from a ``\\ud800`` escape, or is refused by the caller's
``check``) names the file and the line; under ``errors="skip"`` it is that line's error and the good
rows stay.
"""
from __future__ import annotations

import codecs
import json
from collections.abc import Callable
from pathlib import Path

ERRORS = ("raise", "skip")


class JSONLError(ValueError):
    """A line of a JSON Lines file that cannot be used: the message is ``file:line: problem``."""

    def __init__(self, path, line: int, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        super().__init__(f"{path}:{line}: {problem}")


class Rows(list):
    """The rows read (a list), with ``lines`` (the file line of each row) and ``skipped`` (one
    :class:`JSONLError` per line left out under ``errors="skip"``)."""

    def __init__(self):
        super().__init__()
        self.lines: list[int] = []
        self.skipped: list[JSONLError] = []


def _surrogate(row) -> str | None:
    """Where ``row`` holds a lone surrogate (a JSON ``\\ud800`` escape without its pair: no UTF-8 text can
    hold it), or None. Iterative, so a row as deep as the parser allows is walked too."""
    stack = [(row, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                stack.append((key, f"a key of {where or 'the row'}"))
                stack.append((item, f"{where}.{key}" if where else f"field {key!r}"))
        elif isinstance(value, list):
            stack.extend((item, f"{where or 'the row'}[{i}]") for i, item in enumerate(value))
        elif isinstance(value, str):
            bad = next((c for c in value if "\ud800" <= c <= "\udfff"), None)
            if bad is not None:
                return f"{where or 'the row'} has a lone surrogate U+{ord(bad):04X} (half of a pair; not text)"
    return None


def read_jsonl(path: str | Path, *, errors: str, report: Callable[[str], object] | None = print,
               check: Callable[[object], str | None] | None = None) -> Rows:
    """The rows of the JSON Lines file ``path`` (see the module docstring); every caller names its
    error policy, there is no default.

    ``errors="raise"``: the first bad line raises :class:`JSONLError`. ``errors="skip"``: each bad
    line is left out, ``report("skipped file:line: problem")`` is called for it, and at the end
    ``report`` gets the count (``file: skipped 2 of 40 lines``); the rows returned carry the same
    in ``.skipped``. ``check(row)`` may refuse a parsed row by returning its problem
    (naming the field); it is then treated like a line that is not JSON.

    Notebook 02, section 1."""
    if errors not in ERRORS:
        raise ValueError(f"errors={errors!r}: expected one of {ERRORS}")
    path = Path(path)
    data = path.read_bytes()
    data = data.removeprefix(codecs.BOM_UTF8)
    rows = Rows()
    lines = data.split(b"\n")
    n_lines = len(lines) - (lines[-1] == b"")  # a final "\n" ends the last line, it does not open one

    def refuse(n: int, problem: str):
        error = JSONLError(path, n, problem)
        if errors == "raise":
            raise error
        rows.skipped.append(error)
        if report is not None:
            report(f"skipped {error}")

    for n, raw in enumerate(lines[:n_lines], start=1):
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            refuse(n, f"not UTF-8: byte {raw[exc.start]:#04x} at column {exc.start + 1} ({exc.reason}); "
                   "save the file as UTF-8")
            continue
        if not line.strip(" \t"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            refuse(n, f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        except RecursionError:
            refuse(n, "JSON nested too deeply to parse (arrays or objects inside each other past Python's recursion limit)")
            continue
        except Exception as exc:  # noqa: BLE001 - e.g. ValueError for an integer of more than 4300 digits
            refuse(n, f"JSON that cannot be parsed ({type(exc).__name__}: {exc})")
            continue
        problem = _surrogate(row)
        if problem:
            refuse(n, problem)
            continue
        problem = check(row) if check is not None else None
        if problem:
            refuse(n, problem)
            continue
        rows.append(row)
        rows.lines.append(n)
    if rows.skipped and report is not None:
        report(f"{path}: skipped {len(rows.skipped)} of {len(rows) + len(rows.skipped)} lines")
    return rows
