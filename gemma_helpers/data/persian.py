"""Cleaning a Persian conversation set: normalisation, empty and out-of-order rows, duplicates (notebook 02, section 1).

Done on the messages, before any formatting (the seed "cleaned" the rendered text, a no-op). A row
outside the schema (``{"messages": [{role, content}, ...]}``) is an error naming the row and the
field, raised by the one row validator, :func:`gemma_helpers.chat.check_messages`; a row inside it
that cannot be trained on is dropped and reported with its index.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..chat import DataError, character_problem, check_messages, role_problem, visible

REASONS = ("empty_conversation", "empty_turn", "control_character", "wrong_role_order", "duplicate", "near_duplicate")
ZWNJ = "\u200c"
_YEH_KAF = str.maketrans({"\u064a": "\u06cc", "\u0649": "\u06cc", "\u0643": "\u06a9"})  # Arabic ي ى ك -> Persian ی ک
_ARABIC_DIGITS = "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669"  # ٠..٩
_PERSIAN_DIGITS = "\u06f0\u06f1\u06f2\u06f3\u06f4\u06f5\u06f6\u06f7\u06f8\u06f9"  # ۰..۹
_DIGITS = {"persian": str.maketrans(_ARABIC_DIGITS, _PERSIAN_DIGITS),
           "latin": str.maketrans(_ARABIC_DIGITS + _PERSIAN_DIGITS, "0123456789" * 2)}


def normalize_persian(text: str, digits: str | None = "persian") -> tuple[str, set[str]]:
    """Persian text normalised, and which kinds of fix it needed (notebook 02, section 1).

    - ``arabic_yeh_kaf``: Arabic yeh / alef maksura / kaf (ي ى ك) become Persian ی and ک;
    - ``digits``: Arabic-Indic digits (٠-٩) become Persian ones (۰-۹) (``digits="latin"``: both
      become 0-9; ``None``: left alone); ASCII digits are kept (code, versions, formulas);
    - ``zwnj``: zero-width spaces and BOMs removed, runs of ZWNJ (half-space) made one, a ZWNJ
      next to whitespace or at either end of the text dropped, tatweel (ـ) removed;
    - ``whitespace``: no-break and other spaces and tabs become a space, runs of spaces one, no
      space around a line break, at most one empty line, nothing at either end."""
    fixes: set[str] = set()

    def step(kind, new):
        nonlocal text
        if new != text:
            fixes.add(kind)
            text = new

    step("arabic_yeh_kaf", text.translate(_YEH_KAF))
    if digits:
        if digits not in _DIGITS:
            raise ValueError(f"digits={digits!r}: expected one of {sorted(_DIGITS)} or None")
        step("digits", text.translate(_DIGITS[digits]))
    t = re.sub("[\u200b\ufeff\u0640]", "", text)
    t = re.sub(f"{ZWNJ}+", ZWNJ, t)
    t = re.sub(rf"\s*{ZWNJ}\s*(?=\s)|(?<=\s){ZWNJ}|^{ZWNJ}|{ZWNJ}$", "", t)
    step("zwnj", t)
    t = re.sub(r"[^\S\n]+", " ", text)  # every space but the line break
    t = re.sub(r" *\n *", "\n", t)
    t = re.sub(r"\n{3,}", "\n\n", t).strip()
    step("whitespace", t)
    return text, fixes


def _canonical(text: str) -> str:
    """What is left when punctuation, spacing, half-spaces, diacritics, case and digit script are
    ignored: two turns with the same canonical form are near-exact duplicates."""
    out = []
    for ch in unicodedata.normalize("NFKC", text).lower():
        cat = unicodedata.category(ch)
        if cat[0] in "PZC" or ch.isspace() or cat == "Mn":  # punctuation, separators, ZWNJ (Cf), marks
            continue
        out.append(str(unicodedata.digit(ch)) if ch.isdigit() else ch)
    return "".join(out)




@dataclass
class CleaningReport:
    """What :func:`clean_conversations` did: counts, and the index of every dropped or fixed row."""

    rows_in: int = 0
    rows_out: int = 0
    removed: dict = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    dropped: list = field(default_factory=list)  # {"row", "line" (the file line, rows read by jsonl.read_jsonl), "reason", "detail"}
    fixed: dict = field(default_factory=dict)  # kind -> indices of kept rows that needed it
    kept: list = field(default_factory=list)  # the input index of each output row

    def as_dict(self) -> dict:
        return {"rows_in": self.rows_in, "rows_out": self.rows_out, "removed": dict(self.removed),
                "fixed": {k: len(v) for k, v in self.fixed.items()},
                "dropped": list(self.dropped), "fixed_rows": {k: list(v) for k, v in self.fixed.items()}}

    def __str__(self) -> str:
        lines = [f"rows in {self.rows_in}, rows out {self.rows_out}"]
        lines += [f"  removed {reason:<18} {n:>3}  rows {[d['row'] for d in self.dropped if d['reason'] == reason]}"
                  for reason, n in self.removed.items()]
        lines += [f"  fixed   {kind:<18} {len(rows):>3}  rows {rows}" for kind, rows in self.fixed.items()]
        return "\n".join(lines)


def clean_conversations(rows: Sequence, fold_system: bool = True,
                        digits: str | None = "persian") -> tuple[list[dict], CleaningReport]:
    """``(clean rows, report)`` for a conversation set, first occurrence kept (notebook 02, section 1).

    Each turn is normalised (:func:`normalize_persian`); then a row is dropped, with its index
    and reason in the report, when it has no turns or only empty ones (``empty_conversation``),
    an empty user or assistant turn (``empty_turn``; an empty system turn is just removed), a turn
    holding a character that is not text (``control_character``: NUL and other control characters
    but tab and line breaks, lone surrogates; :func:`gemma_helpers.chat.character_problem`), roles
    out of order (``wrong_role_order``), the same turns as an earlier row (``duplicate``) or the
    same up to punctuation, spacing, half-spaces and diacritics (``near_duplicate``).
    With ``fold_system`` a system turn is folded into the first user turn as Gemma's template
    does (``system + "\\n\\n" + user``), so the rows render the same under any Gemma template.
    A row outside the schema raises :class:`~gemma_helpers.chat.DataError` naming the row and field
    (:func:`gemma_helpers.chat.check_messages`, the check :func:`gemma_helpers.chat.validate_rows` makes).

    Notebook 02, section 1."""
    report = CleaningReport(rows_in=len(rows))
    out: list[dict] = []
    exact: dict[tuple, int] = {}
    near: dict[tuple, int] = {}

    lines = getattr(rows, "lines", None)  # rows read by jsonl.read_jsonl: the file line of each row

    def drop(i, reason, detail):
        report.removed[reason] += 1
        report.dropped.append({"row": i, **({"line": lines[i]} if lines else {}), "reason": reason, "detail": detail})

    for i, row in enumerate(rows):
        try:
            messages = check_messages(i, row)
        except DataError as err:
            raise err.at_line(lines) from None
        fixes: set[str] = set()
        turns = []
        for msg in messages:
            text, f = normalize_persian(msg["content"] or "", digits)
            fixes |= f
            turns.append({"role": msg["role"], "content": text})
        empty = [j for j, t in enumerate(turns) if not visible(t["content"])]  # NUL, bidi marks alone: empty too
        if not turns or len(empty) == len(turns):
            drop(i, "empty_conversation", "no turns" if not turns else "every turn is empty")
            continue
        if turns[0]["role"] == "system" and not visible(turns[0]["content"]):
            turns, empty = turns[1:], [j - 1 for j in empty if j]
            fixes.add("empty_system_removed")
        if empty:
            drop(i, "empty_turn", f"messages[{empty[0]}] ({turns[empty[0]]['role']}) is empty")
            continue
        bad = next(((j, p) for j, t in enumerate(turns) if (p := character_problem(t["content"]))), None)
        if bad:  # NUL, ESC, a lone surrogate: not text (vertical tab and form feed became spaces above)
            drop(i, "control_character", f"messages[{bad[0]}] ({turns[bad[0]]['role']}) {bad[1]}")
            continue
        problem = role_problem(turns)
        if problem:
            drop(i, "wrong_role_order", f"messages[{problem[0]}].role {problem[1]}")
            continue
        if fold_system and turns[0]["role"] == "system":
            turns = [{"role": "user", "content": turns[0]["content"] + "\n\n" + turns[1]["content"]}] + turns[2:]
            fixes.add("system_folded")
        key = tuple((t["role"], t["content"]) for t in turns)
        canon = tuple((t["role"], _canonical(t["content"])) for t in turns)
        if key in exact:
            drop(i, "duplicate", f"same turns as row {exact[key]}")
            continue
        if canon in near:
            drop(i, "near_duplicate", f"same as row {near[canon]} up to punctuation, spacing and diacritics")
            continue
        exact[key], near[canon] = i, i
        for kind in sorted(fixes):
            report.fixed.setdefault(kind, []).append(i)
        report.kept.append(i)
        out.append({"messages": turns})
    report.rows_out = len(out)
    return out, report


def holdout_split(rows: Sequence, n: int) -> tuple[list, list]:
    """``(train, heldout)``: ``n`` rows held out, evenly spaced over the file (every ``len(rows) // n``-th
    from the first), so the held-out set spans the whole file, not its end. Notebook 02, section 2."""
    if not 0 < n <= len(rows):
        raise ValueError(f"cannot hold out {n} of {len(rows)} rows: choose 1 to {len(rows)}")
    step = len(rows) // n
    held = set(range(0, step * n, step))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
