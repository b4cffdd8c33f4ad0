"""Reading a paper's PDF and cleaning its text (notebook 01, section 2).

:func:`read_pdf`: pypdf, page by page; a page that fails is reported and skipped, and an encrypted,
unreadable or image-only PDF raises :class:`PDFError` naming the file. :func:`clean_pages`:
ligatures, hyphenation at line ends, running headers and footers, page numbers, the reference
section, lines of equation residue. :func:`title_score`: how much of an expected title a PDF
carries, so that a download of the wrong paper is caught.
"""
from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


class PDFError(ValueError):
    """A file that cannot be used as a paper; the message names the file and the reason."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


@dataclass
class Parsed:
    """What read_pdf returns: the page texts, the pages skipped and the metadata title."""

    path: str
    pages: list[str]
    problems: list[str] = field(default_factory=list)  # "page 3: ..." for each page skipped
    metadata_title: str = ""


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextmanager
def _pypdf_warnings():
    log, handler = logging.getLogger("pypdf"), _Collect()
    log.addHandler(handler)
    try:
        yield handler.messages
    finally:
        log.removeHandler(handler)


def read_pdf(path: str | Path) -> Parsed:
    """The text of every page of ``path`` with pypdf (notebook 01, section 2).

    A page whose extraction raises, or gives no text while pypdf reports an error, is skipped and
    named in ``problems``. Raises :class:`PDFError` naming the file when it is not a readable PDF,
    is encrypted, or has no text layer at all (a scan needs OCR).

    Notebook 01, section 2."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    path = Path(path)
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise PDFError(path, "encrypted: it needs a password, so its text cannot be read")
        n = len(reader.pages)
    except PDFError:
        raise
    except (PdfReadError, OSError, ValueError, KeyError, TypeError) as exc:
        raise PDFError(path, f"not a readable PDF ({type(exc).__name__}: {exc})") from exc
    pages, problems = [], []
    title = ""
    try:
        title = str((reader.metadata or {}).get("/Title") or "")
    except Exception as exc:  # noqa: BLE001 - broken metadata is not a reason to lose the text
        problems.append(f"metadata: {type(exc).__name__}: {exc}")
    for i in range(n):
        with _pypdf_warnings() as warnings:
            try:
                text = reader.pages[i].extract_text() or ""
            except Exception as exc:  # noqa: BLE001 - any failure of one page: report it, keep the others
                problems.append(f"page {i + 1}: {type(exc).__name__}: {exc}")
                pages.append("")
                continue
        if warnings and not text.strip():
            problems.append(f"page {i + 1}: no text ({'; '.join(dict.fromkeys(warnings))})")
        pages.append(text)
    if not any(p.strip() for p in pages):
        raise PDFError(path, f"no text layer on any of its {n} page(s) (image-only? it needs OCR)"
                       + (f"; {'; '.join(problems)}" if problems else ""))
    return Parsed(str(path), pages, problems, title)


_LINE_END_HYPHEN = re.compile(r"(\w)-\n([a-z])")  # "repre-\nsentation": joined, the hyphen dropped


def _dehyphenate(text: str) -> str:
    return _LINE_END_HYPHEN.sub(r"\1\2", text)


_PAGE_NUMBER = re.compile(r"^\s*(page\s*)?\d{1,4}(\s*(of|/)\s*\d{1,4})?\s*$", re.IGNORECASE)
_REFERENCES = re.compile(r"^\s*(\d+\.?\s*)?(references|bibliography|works cited)\s*$", re.IGNORECASE | re.MULTILINE)
_SENTENCE_END = re.compile(r"[.!?:;]['\")\]]?$")


def _boilerplate(pages: Sequence[list[str]]) -> set[str]:
    """Lines that open or close at least half of the pages (digits ignored): running headers and footers."""
    if len(pages) < 2:
        return set()
    seen: Counter = Counter()
    for lines in pages:
        edge = {re.sub(r"\d+", "#", ln.strip()) for ln in lines[:2] + lines[-2:] if ln.strip()}
        seen.update(edge)
    return {ln for ln, c in seen.items() if c >= max(2, len(pages) / 2)}


NUMBERED_HEADING = re.compile(r"^(\d+(\.\d+)*\.?|[IVX]+\.)\s+[A-Z][^.!?]*$")
KNOWN_HEADING = re.compile(r"^(abstract|introduction|background|related work|methods?|materials and methods|experiments?|"
                    r"results|discussion|conclusions?|limitations|acknowledge?ments|references|bibliography|appendix)$",
                    re.IGNORECASE)


def is_heading(line: str) -> bool:
    """A numbered heading ("2 Method", "3.1 Data"), a usual section name, or a short Title Case line."""
    line = line.strip()
    words = line.split()
    if not words or len(line) > 100 or _SENTENCE_END.search(line):
        return False
    if KNOWN_HEADING.match(line) or (NUMBERED_HEADING.match(line) and len(words) <= 12):
        return True
    long_words = [w for w in words if len(w) > 3]
    return (len(words) <= 14 and line[:1].isupper() and bool(long_words)
            and sum(w[:1].isupper() for w in long_words) >= 0.6 * len(long_words))


_NOT_TEXT = re.compile("[\x00-\x08\x0e-\x1b\ud800-\udfff]")  # C0 controls that are neither a space nor a line end


def clean_pages(pages: Sequence[str]) -> str:
    """Extracted page texts to clean text: one heading or one paragraph per line (notebook 01, section 2).

    Ligatures and other compatibility characters (NFKC), soft hyphens, control characters (NUL, ESC...)
    and lone surrogates removed, words hyphenated at a line end joined, running headers / footers and
    bare page numbers removed, everything from the last "References" heading on cut, lines that are
    mostly symbols (equation residue) dropped."""
    split = []
    for page in pages:
        text = _NOT_TEXT.sub("", unicodedata.normalize("NFKC", page).replace("\u00ad", ""))  # rows refuse NUL & co.
        split.append([ln.rstrip() for ln in text.splitlines()])
    boiler = _boilerplate(split)
    lines = []
    for page_lines in split:
        for ln in page_lines:
            s = ln.strip()
            if not s or _PAGE_NUMBER.match(s) or re.sub(r"\d+", "#", s) in boiler:
                continue
            visible = re.sub(r"\s", "", s)
            if len(visible) >= 4 and sum(c.isalpha() for c in visible) / len(visible) < 0.5:
                continue  # equation residue, tables of numbers
            lines.append(s)
    text = "\n".join(lines)
    text = _dehyphenate(text)
    refs = [m.start() for m in _REFERENCES.finditer(text) if m.start() > 0.3 * len(text)]
    if refs:
        text = text[: refs[-1]]
    out, paragraph = [], []
    for ln in text.splitlines():
        if is_heading(ln):
            if paragraph:
                out.append(" ".join(paragraph))
                paragraph = []
            out.append(ln)
        else:
            paragraph.append(ln)
    if paragraph:
        out.append(" ".join(paragraph))
    return "\n".join(re.sub(r"\s+", " ", ln).strip() for ln in out if ln.strip())


def _title_words(text: str) -> list[str]:
    text = _dehyphenate(unicodedata.normalize("NFKC", text))
    return re.findall(r"[a-z0-9]+", text.lower())


_TITLE_STOP = {"a", "an", "and", "the", "of", "for", "with", "in", "on", "to", "from", "by", "at", "is", "are", "using"}


def title_score(expected: str, found: str) -> float:
    """How much of the expected title ``found`` carries in one place: the largest fraction of the
    title's words (stopwords aside) inside any run of ``len(title) + 6`` consecutive words."""
    want = {w for w in _title_words(expected) if w not in _TITLE_STOP} or set(_title_words(expected))
    have = _title_words(found)
    if not want or not have:
        return 0.0
    span = len(want) + 6
    return max(len(want & set(have[i: i + span])) for i in range(max(1, len(have) - span + 1))) / len(want)


TITLE_MATCH = 0.8  # at least this fraction of the title's words in the PDF's title field or at the top of page 1
TITLE_WINDOW = 700  # characters: the top of page 1 (arXiv PDFs may put a licence note or the arXiv stamp first)
