"""Scientific papers to training rows: download PDFs, parse them, clean the text, split by paper.

The pipeline, each step reporting what went wrong by name instead of stopping:

1. :func:`download`: streaming HTTP(S) download (``requests``), timeouts per read and a deadline per
   URL, retries with exponential backoff (or the server's ``Retry-After``) on 429 / 5xx / truncation,
   redirects checked hop by hop, gzip decoded before a size cap, a check that the bytes are a PDF and
   not an HTML error page, a temporary file renamed only when complete, files already complete
   skipped, progress bars. One :class:`Fetch` per URL: ``status`` (``ok`` / ``cached`` / ``failed``)
   and ``reason``.
2. :func:`read_pdf`: pypdf, page by page. A page that fails is reported and skipped; an encrypted,
   unreadable or image-only PDF raises :class:`PDFError` naming the file.
3. :func:`clean_pages`: ligatures, hyphenation at line ends, running headers and footers, page
   numbers, the reference section, lines of equation residue.
4. :func:`collect`: the three steps for a list of :class:`Paper`, plus a check that the title found
   in the PDF is the title expected (the seed trained on the wrong paper for half of its list).
5. :func:`split_by_paper` and :func:`section_rows`: notebook 01's training task, naming the part of
   the paper (abstract, introduction, method, results, conclusion) a passage comes from (see the
   notebook for why), with no paper in two splits. :func:`continuation_rows` is the earlier
   next-sentence task, kept for the throughput benchmark's papers recipe (:func:`sample_rows`).

Offline (CI), :func:`write_pdf` renders the project's own mini-papers (``data/papers_sample.json``)
to PDF and :class:`LoopbackServer` serves them on 127.0.0.1, so the same download code runs.
"""
from __future__ import annotations

import contextlib
import datetime
import email.utils
import gzip
import hashlib
import http.server
import io
import json
import logging
import os
import re
import threading
import time
import unicodedata
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from typing_extensions import Self

from ..chat import visible

FIELDS = ("ai", "climate", "healthcare", "vision")
SAMPLE = Path(__file__).resolve().parents[2] / "data" / "papers_sample.json"


@dataclass(frozen=True)
class Paper:
    key: str  # short name, also the file name
    title: str  # the title the PDF must carry
    field: str
    arxiv_id: str = ""
    url: str = ""  # default: the arXiv PDF of arxiv_id

    @property
    def source(self) -> str:
        return self.url or f"https://arxiv.org/pdf/{self.arxiv_id}"


# The download list for the GPU / Colab profile. Every id was checked against its title in
# public citations (2026-11-23); the title check after download catches any mistake left.
ARXIV_PAPERS = (
    Paper("attention", "Attention Is All You Need", "ai", "1706.03762"),
    Paper("lora", "LoRA: Low-Rank Adaptation of Large Language Models", "ai", "2106.09685"),
    Paper("qlora", "QLoRA: Efficient Finetuning of Quantized LLMs", "ai", "2305.14314"),
    Paper("llama", "LLaMA: Open and Efficient Foundation Language Models", "ai", "2302.13971"),
    Paper("llama2", "Llama 2: Open Foundation and Fine-Tuned Chat Models", "ai", "2307.09288"),
    Paper("mamba", "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", "ai", "2312.00752"),
    Paper("tackling_climate", "Tackling Climate Change with Machine Learning", "climate", "1906.05433"),
    Paper("climax", "ClimaX: A foundation model for weather and climate", "climate", "2301.10343"),
    Paper("fourcastnet", "FourCastNet: A Global Data-driven High-resolution Weather Model using Adaptive "
          "Fourier Neural Operators", "climate", "2202.11214"),
    Paper("graphcast", "GraphCast: Learning skillful medium-range global weather forecasting", "climate", "2212.12794"),
    Paper("climategan", "ClimateGAN: Raising Climate Change Awareness by Generating Images of Floods", "climate",
          "2110.02871"),
    Paper("med_palm", "Large Language Models Encode Clinical Knowledge", "healthcare", "2212.13138"),
    Paper("med_palm2", "Towards Expert-Level Medical Question Answering with Large Language Models", "healthcare",
          "2305.09617"),
    Paper("chexnet", "CheXNet: Radiologist-Level Pneumonia Detection on Chest X-Rays with Deep Learning",
          "healthcare", "1711.05225"),
    Paper("unet", "U-Net: Convolutional Networks for Biomedical Image Segmentation", "healthcare", "1505.04597"),
    Paper("resnet", "Deep Residual Learning for Image Recognition", "vision", "1512.03385"),
    Paper("vit", "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale", "vision", "2010.11929"),
    Paper("sam", "Segment Anything", "vision", "2304.02643"),
    Paper("mask_rcnn", "Mask R-CNN", "vision", "1703.06870"),
    Paper("yolo", "You Only Look Once: Unified, Real-Time Object Detection", "vision", "1506.02640"),
    Paper("llava", "Visual Instruction Tuning", "vision", "2304.08485"),
    Paper("instructblip", "InstructBLIP: Towards General-purpose Vision-Language Models with Instruction Tuning",
          "vision", "2305.06500"),
)


def arxiv_papers() -> list[Paper]:
    """:data:`ARXIV_PAPERS`, the GPU profile's download list; in the GPU-profile rehearsal the same
    papers served by the loopback server (:func:`gemma_helpers.rehearsal.arxiv_papers`)."""
    from .. import rehearsal

    return rehearsal.arxiv_papers(ARXIV_PAPERS) if rehearsal.rehearsing() else list(ARXIV_PAPERS)


# ---------------------------------------------------------------- download
class PDFError(ValueError):
    """A file that cannot be used as a paper; the message names the file and the reason."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


@dataclass
class Fetch:
    """What happened to one URL."""

    key: str
    url: str
    status: str  # ok | cached | failed
    reason: str
    path: str | None = None
    bytes: int = 0
    attempts: int = 0
    http_status: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def safe_filename(name: str, suffix: str = ".pdf") -> str:
    """``name`` as a file name: its last path part only, letters, digits, ``._-``, at most 100 characters."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("\\", "/").rsplit("/", 1)[-1]).strip("._")[:100]
    stem = stem or hashlib.sha1(name.encode()).hexdigest()[:12]
    return stem if stem.lower().endswith(suffix) else stem + suffix


def is_complete_pdf(path: str | Path) -> bool:
    """Starts with ``%PDF-`` and has the ``%%EOF`` marker in its last kilobytes."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(5)
            f.seek(max(0, size - 2048))
            tail = f.read()
    except OSError:
        return False
    return head == b"%PDF-" and b"%%EOF" in tail


def _retry_after(response) -> float | None:
    """The seconds a ``Retry-After`` header asks for (a number or an HTTP date), or None."""
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())


def url_problem(url) -> str | None:
    """Why ``url`` is not fetched (not http(s), no host, a bad port, spaces or control characters), or None."""
    if not isinstance(url, str):
        return f"the URL is a {type(url).__name__}, not text"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        return f"malformed URL {url!r} ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return f"only http(s) URLs are fetched, not {parts.scheme or 'a bare path'!r}"
    if not parts.hostname:
        return f"malformed URL {url!r}: no host name"
    if any(c.isspace() or unicodedata.category(c) == "Cc" for c in url):
        return f"malformed URL {url!r}: it holds whitespace or control characters"
    return None


class _Failed(Exception):
    """One attempt failed: ``reason``; ``retry`` when another attempt may help; ``wait`` what the server asked."""

    def __init__(self, reason: str, retry: bool = False, wait: float | None = None, code: int | None = None):
        super().__init__(reason)
        self.reason, self.retry, self.wait, self.code = reason, retry, wait, code


def _timeouts(timeout: tuple[float, float], end: float) -> tuple[float, float]:
    left = max(0.01, end - time.monotonic())
    return min(timeout[0], left), min(timeout[1], left)


def _open(session, url: str, timeout: tuple[float, float], end: float, max_redirects: int):
    """The response for ``url`` after following redirects by hand: each target must pass :func:`url_problem`,
    a URL seen before is a loop, more than ``max_redirects`` hops is too many."""
    chain = [url]
    while True:
        r = session.get(chain[-1], stream=True, allow_redirects=False, timeout=_timeouts(timeout, end),
                        headers={"User-Agent": "gemma-lora-notebooks"})
        if not 300 <= r.status_code < 400:
            return r, chain
        target = session.get_redirect_target(r)
        r.close()
        if not target:
            raise _Failed(f"HTTP {r.status_code} {r.reason} with no Location to follow", code=r.status_code)
        target = urllib.parse.urljoin(chain[-1], target)
        problem = url_problem(target)
        if problem:
            raise _Failed(f"redirect refused: {chain[-1]} -> {target} ({problem})", code=r.status_code)
        if target in chain:
            raise _Failed(f"redirect loop: {' -> '.join(chain + [target])}", code=r.status_code)
        if len(chain) > max_redirects:
            raise _Failed(f"too many redirects: more than {max_redirects}, the last to {target}", code=r.status_code)
        chain.append(target)


def _set_read_timeout(response, seconds: float) -> None:
    """Bound the next socket read of a streamed response (best effort: the socket urllib3 holds)."""
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if sock is not None:
        try:
            sock.settimeout(max(0.01, seconds))
        except OSError:
            pass


def _fetch_body(session, url: str, tmp: Path, *, timeout, end: float, deadline_s: float, max_bytes: int,
                max_redirects: int, progress: bool, desc: str) -> tuple[int, int, list[str]]:
    """One attempt: ``(bytes written, HTTP status, notes)``, or :class:`_Failed` saying why not."""
    import requests
    import urllib3
    from tqdm.auto import tqdm

    declared, wire, written, code = None, 0, 0, None

    def got() -> str:
        of = f" of {declared}" if declared is not None else ""
        return f"{wire}{of} bytes" + (f" ({written} decoded)" if written != wire else "")

    try:
        r, chain = _open(session, url, timeout, end, max_redirects)
        with r:
            code = r.status_code
            if code in RETRY_STATUSES:
                raise _Failed(f"HTTP {code} {r.reason}", retry=True, wait=_retry_after(r), code=code)
            if code >= 400:
                raise _Failed(f"HTTP {code} {r.reason}", code=code)
            notes = [f"{len(chain) - 1} redirect(s) to {chain[-1]}"] if len(chain) > 1 else []
            length = r.headers.get("Content-Length")
            if length is not None:
                if length.strip().isdigit():
                    declared = int(length)
                else:
                    notes.append(f"Content-Length {length!r} is not a number, so it was ignored")
            encoding = r.headers.get("Content-Encoding", "identity").strip().lower() or "identity"
            if encoding != "identity":
                notes.append(f"{encoding}-encoded on the wire")
            if declared is not None and declared > max_bytes:
                raise _Failed(f"too large: {declared} bytes declared, the cap is {max_bytes}", code=code)
            first = b""
            with open(tmp, "wb") as f, tqdm(total=declared if encoding == "identity" else None, unit="B",
                                            unit_scale=True, desc=desc, disable=not progress, leave=False) as bar:
                while True:
                    left = end - time.monotonic()
                    if left <= 0:
                        raise _Failed(f"deadline: only {got()} arrived within the {deadline_s:g} s allowed for this URL",
                                      code=code)
                    _set_read_timeout(r, min(timeout[1], left))
                    chunk = r.raw.read1(64 * 1024, decode_content=True)
                    wire = r.raw.tell()
                    if not chunk:
                        break
                    if len(first) < 5:
                        first += chunk[: 5 - len(first)]
                        if first != b"%PDF-"[: len(first)]:
                            kind = r.headers.get("Content-Type", "no Content-Type")
                            raise _Failed(f"not a PDF: the server sent {kind} starting with {chunk[:15]!r} "
                                          "(an HTML error or login page?)", code=code)
                    written += len(chunk)
                    if written > max_bytes:
                        raise _Failed(f"too large: more than the cap of {max_bytes} bytes"
                                      + (" (no Content-Length was sent)" if declared is None else ""), code=code)
                    f.write(chunk)
                    bar.update(len(chunk))
            if not written:
                raise _Failed("not a PDF: the server sent an empty body", code=code)
            if declared is not None and wire != declared:
                raise _Failed(f"truncated: {got()} arrived", retry=True, code=code)
            if not is_complete_pdf(tmp):
                raise _Failed(f"truncated: {got()} with no %%EOF marker at the end", retry=True, code=code)
            return written, code, notes
    except _Failed:
        raise
    except urllib3.exceptions.DecodeError as exc:
        raise _Failed(f"the {r.headers.get('Content-Encoding')!r} content encoding could not be decoded after "
                      f"{got()} ({exc})", code=code) from exc
    except (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError) as exc:
        if time.monotonic() >= end - 0.05:
            raise _Failed(f"deadline: no answer ({got()} arrived) within the {deadline_s:g} s allowed for this URL",
                          code=code) from exc
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            raise _Failed(f"no connection within the {timeout[0]:g} s connect timeout", retry=True) from exc
        raise _Failed(f"no answer within the {timeout[1]:g} s read timeout ({got()} arrived)", retry=True,
                      code=code) from exc
    except (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError) as exc:
        raise _Failed(f"truncated: the connection closed after {got()}", retry=True, code=code) from exc
    except requests.exceptions.ConnectionError as exc:
        raise _Failed(f"connection failed: {type(exc).__name__} ({_short(exc)})", retry=True, code=code) from exc
    except requests.exceptions.RequestException as exc:  # InvalidURL, InvalidHeader, ...
        raise _Failed(f"request refused: {type(exc).__name__} ({_short(exc)})", code=code) from exc


def _short(exc: BaseException, n: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def download_one(url: str, dest: str | Path, key: str = "", *, session=None, max_bytes: int = 50 * 2**20,
                 timeout: tuple[float, float] = (10.0, 60.0), retries: int = 3, backoff_s: float = 1.0,
                 max_wait_s: float = 60.0, deadline_s: float = 300.0, max_redirects: int = 10,
                 progress: bool = True) -> Fetch:
    """Download ``url`` to ``dest`` (see the module docstring); never raises for a bad URL or file:
    the returned :class:`Fetch` says what happened.

    ``timeout`` is (connect, read) per socket operation; ``deadline_s`` bounds the whole URL, every
    attempt and wait included (a server that trickles a byte at a time is cut off there). A 429, a
    5xx, a dropped connection or a truncated file is retried up to ``retries`` times after
    ``backoff_s``, then twice that, and so on (at most ``max_wait_s``), or after the server's
    ``Retry-After`` when it sends one; a wait that would pass ``max_wait_s`` or the deadline ends
    the tries. Redirects are followed by hand: at most ``max_redirects``, http(s) targets only, a loop
    named. A content encoding (gzip) is decoded before the size cap and the completeness check."""
    import requests

    dest = Path(dest)
    key = key or dest.stem
    problem = url_problem(url)
    if problem:
        return Fetch(key, str(url), "failed", problem)
    if dest.exists() and is_complete_pdf(dest):
        return Fetch(key, url, "cached", "already downloaded: a complete PDF is on disk", str(dest), dest.stat().st_size)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    end = time.monotonic() + deadline_s
    reason, code, attempt = "", None, 0
    with contextlib.ExitStack() as stack:
        if session is None:
            session = stack.enter_context(requests.Session())
        for attempt in range(1, retries + 2):
            try:
                written, code, notes = _fetch_body(session, url, tmp, timeout=timeout, end=end, deadline_s=deadline_s,
                                                   max_bytes=max_bytes, max_redirects=max_redirects,
                                                   progress=progress, desc=dest.name)
                os.replace(tmp, dest)
                note = "".join(f"; {n}" for n in notes)
                return Fetch(key, url, "ok", f"downloaded in {attempt} attempt(s){note}", str(dest), written, attempt,
                             code)
            except _Failed as failed:
                reason, code = failed.reason, failed.code or code
                if not failed.retry:
                    return Fetch(key, url, "failed", reason, attempts=attempt, http_status=code)
                asked = failed.wait
            except Exception as exc:  # noqa: BLE001 - whatever one URL does, the others go on
                return Fetch(key, url, "failed", f"unexpected {type(exc).__name__}: {_short(exc)}", attempts=attempt,
                             http_status=code)
            finally:
                tmp.unlink(missing_ok=True)  # after a success it was renamed already; after a failure nothing half-written stays
            if attempt > retries:
                break
            wait = asked if asked is not None else min(backoff_s * 2 ** (attempt - 1), max_wait_s)
            left = end - time.monotonic()
            if asked is not None and asked > max_wait_s:
                reason += f"; the server asks to wait {asked:g} s (Retry-After), more than max_wait_s={max_wait_s:g}"
                break
            if wait >= left:
                reason += f"; the next try (after {wait:g} s) would pass the {deadline_s:g} s deadline"
                break
            time.sleep(wait)
    return Fetch(key, url, "failed", f"{reason} (gave up after {attempt} attempt(s))", attempts=attempt,
                 http_status=code)


def paper_files(papers: Sequence[Paper]) -> list[str]:
    """The file name of each paper: :func:`safe_filename` of its key, with a short hash of the key added
    where two keys would otherwise share a file (``a b`` and ``a_b``, or ``A`` and ``a`` on a
    case-insensitive disk). The same key twice is a :class:`ValueError` naming both entries."""
    first: dict[str, int] = {}
    for i, paper in enumerate(papers):
        if paper.key in first:
            j = first[paper.key]
            raise ValueError(f"paper key {paper.key!r} is used twice: entry {j} ({papers[j].source}) and "
                             f"entry {i} ({paper.source}); each paper needs its own key")
        first[paper.key] = i
    names, taken = [], set()
    for paper in papers:
        name = safe_filename(paper.key)
        salt = 0
        while name.lower() in taken:
            digest = hashlib.sha1(f"{paper.key}{salt or ''}".encode()).hexdigest()[:8]
            name = safe_filename(f"{safe_filename(paper.key, '')[:90]}-{digest}")
            salt += 1
        taken.add(name.lower())
        names.append(name)
    return names


def download(papers: Sequence[Paper], folder: str | Path, progress: bool = True, **kwargs) -> list[Fetch]:
    """:func:`download_one` for every paper into ``folder`` (file names from :func:`paper_files`); one
    :class:`Fetch` each, in order."""
    import requests
    from tqdm.auto import tqdm

    folder = Path(folder)
    names = paper_files(papers)
    out = []
    with requests.Session() as session:
        bar = tqdm(list(zip(papers, names)), desc="papers", unit="pdf", disable=not progress)
        for paper, name in bar:
            bar.set_postfix_str(paper.key)
            out.append(download_one(paper.source, folder / name, paper.key, session=session, progress=progress,
                                    **kwargs))
    return out


# ---------------------------------------------------------------- parsing and cleaning
@dataclass
class Parsed:
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
    """The text of every page of ``path`` with pypdf.

    A page whose extraction raises, or gives no text while pypdf reports an error, is skipped and
    named in ``problems``. Raises :class:`PDFError` naming the file when it is not a readable PDF,
    is encrypted, or has no text layer at all (a scan needs OCR)."""
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


_NUMBERED = re.compile(r"^(\d+(\.\d+)*\.?|[IVX]+\.)\s+[A-Z][^.!?]*$")
_KNOWN = re.compile(r"^(abstract|introduction|background|related work|methods?|materials and methods|experiments?|"
                    r"results|discussion|conclusions?|limitations|acknowledge?ments|references|bibliography|appendix)$",
                    re.IGNORECASE)


def _is_heading(line: str) -> bool:
    """A numbered heading ("2 Method", "3.1 Data"), a usual section name, or a short Title Case line."""
    line = line.strip()
    words = line.split()
    if not words or len(line) > 100 or _SENTENCE_END.search(line):
        return False
    if _KNOWN.match(line) or (_NUMBERED.match(line) and len(words) <= 12):
        return True
    long_words = [w for w in words if len(w) > 3]
    return (len(words) <= 14 and line[:1].isupper() and bool(long_words)
            and sum(w[:1].isupper() for w in long_words) >= 0.6 * len(long_words))


def clean_pages(pages: Sequence[str]) -> str:
    """Extracted page texts to clean text: one heading or one paragraph per line.

    Ligatures and other compatibility characters (NFKC), soft hyphens, words hyphenated at a line
    end joined, running headers / footers and bare page numbers removed, everything from the last
    "References" heading on cut, lines that are mostly symbols (equation residue) dropped."""
    split = []
    for page in pages:
        text = unicodedata.normalize("NFKC", page).replace("\u00ad", "")
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
        if _is_heading(ln):
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


# ---------------------------------------------------------------- the corpus
@dataclass
class Corpus:
    papers: list[dict]  # key, title, field, text, pages, words, problems
    report: list[dict]  # one entry per URL: key, url, status, reason, ...

    def __str__(self) -> str:
        lines = [f"{len(self.papers)} usable papers of {len(self.report)} URLs"]
        for r in self.report:
            lines.append(f"  {r['status']:<12} {r['key']:<18} {r['reason']}")
        return "\n".join(lines)


def read_paper(paper: Paper, path: str | Path) -> tuple[dict | None, str, str]:
    """``(paper record or None, status, reason)`` for a downloaded file."""
    try:
        parsed = read_pdf(path)
    except PDFError as exc:
        return None, "unreadable", exc.reason
    score = max(title_score(paper.title, parsed.metadata_title), title_score(paper.title, parsed.pages[0][:TITLE_WINDOW]))
    if score < TITLE_MATCH:
        first = " ".join(parsed.pages[0].split()[:14])
        return None, "wrong_paper", (f"expected {paper.title!r}, page 1 begins {first!r} "
                                     f"({score:.0%} of the title's words found)")
    text = clean_pages(parsed.pages)
    record = {"key": paper.key, "title": paper.title, "field": paper.field, "text": text,
              "pages": len(parsed.pages), "words": len(re.findall(r"[A-Za-z]+", text)),
              "problems": parsed.problems, "title_score": score}
    note = f"{len(parsed.pages)} pages, {record['words']} words"
    if parsed.problems:
        note += f"; skipped {'; '.join(parsed.problems)}"
    return record, "ok", note


def collect(papers: Sequence[Paper], folder: str | Path, progress: bool = True, **download_kwargs) -> Corpus:
    """Download, read, check and clean ``papers``; a paper that fails any step is reported, never trained on.

    Never raises for a bad URL or file; a paper list with the same key twice is a :class:`ValueError`
    (:func:`paper_files`). ``download_kwargs`` go to :func:`download_one` (``deadline_s``, ``retries``, ...)."""
    fetches = download(papers, folder, progress=progress, **download_kwargs)
    kept, report = [], []
    for paper, fetch in zip(papers, fetches):
        entry = fetch.as_dict()
        if fetch.status in ("ok", "cached"):
            try:
                record, status, reason = read_paper(paper, fetch.path)
            except Exception as exc:  # noqa: BLE001 - one paper that breaks the reader must not lose the others
                record, status, reason = None, "unreadable", f"unexpected {type(exc).__name__}: {_short(exc)}"
            if record is None:
                entry.update(status=status, reason=reason)
            else:
                entry["reason"] = f"{fetch.reason}; {reason}"
                kept.append(record)
        report.append(entry)
    return Corpus(kept, report)


def sample(path: str | Path = SAMPLE) -> list[dict]:
    """The project's own mini-papers (``data/papers_sample.json``), as written."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sample_text(paper: Mapping) -> str:
    """A bundled mini-paper as :func:`clean_pages` would return it after a perfect extraction."""
    lines = [paper["title"]] + ([paper["authors"]] if paper.get("authors") else [])
    for section in paper["sections"]:
        lines += [section["heading"], section["text"]]
    return "\n".join(lines)


# ---------------------------------------------------------------- words
STOPWORDS_EXTRA = {"also", "using", "used", "use", "based", "however", "one", "two", "may", "can", "will", "et",
                   "al", "fig", "figure", "table", "section", "paper", "results", "show", "shown", "well", "thus",
                   "arxiv", "preprint", "e", "g", "i", "ie", "eg", "abstract", "introduction", "conclusion",
                   "discussion", "method", "article", "study"}


def body(text: str) -> str:
    """A cleaned text without its front matter (title, authors, affiliations): its :func:`sections`."""
    return "\n".join(f"{heading}\n{' '.join(sentences)}" for heading, sentences in sections(text))


def word_counts(text: str, min_len: int = 3) -> Counter:
    """Lower-cased words of ``text`` without wordcloud's English stopwords (and a few of papers' own)."""
    from wordcloud import STOPWORDS

    stop = STOPWORDS | STOPWORDS_EXTRA
    return Counter(w for w in re.findall(r"[a-z][a-z-]*[a-z]", text.lower()) if len(w) >= min_len and w not in stop)


# ---------------------------------------------------------------- training rows
def split_by_paper(keys: Sequence[str], validation: float = 0.2, holdout: float = 0.2,
                   seed: int = 3407) -> dict[str, list[str]]:
    """Papers into train / validation / holdout (at least one each); no paper in two splits.

    Each paper's split is decided by its own key alone: a hash of seed and key, read as a number
    in [0, 1), falls below ``validation`` (validation), below ``validation + holdout`` (holdout)
    or above (train). So adding a paper never moves the others, and the shares are the expected
    ones, not exact counts. Only while a split would be empty (very few papers) does it borrow
    the paper whose number is nearest to its interval, and that paper returns to its own split
    once another paper falls in the empty one."""
    keys = list(dict.fromkeys(keys))
    if len(keys) < 3:
        raise ValueError(f"{len(keys)} papers: at least 3 are needed for train, validation and holdout")
    if not (0 < validation and 0 < holdout and validation + holdout < 1):
        raise ValueError(f"validation={validation}, holdout={holdout}: both must be > 0 and sum to < 1")
    where = {k: int(hashlib.sha256(f"{seed}:{k}".encode()).hexdigest(), 16) / 16**64 for k in keys}
    bounds = {"validation": (0.0, validation), "holdout": (validation, validation + holdout),
              "train": (validation + holdout, 1.0)}
    splits = {name: [k for k in keys if lo <= where[k] < hi] for name, (lo, hi) in bounds.items()}
    for name, (lo, hi) in bounds.items():
        if not splits[name]:
            donor = max(splits, key=lambda n: len(splits[n]))
            key = min(splits[donor], key=lambda k: min(abs(where[k] - lo), abs(where[k] - hi)))
            splits[donor].remove(key)
            splits[name].append(key)
    return {name: sorted(splits[name]) for name in ("train", "validation", "holdout")}


_SPLIT_SENTENCES = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")


def sections(text: str) -> list[tuple[str, list[str]]]:
    """``[(heading, sentences)]`` of a cleaned text (headings are the short lines :func:`clean_pages` keeps apart)."""
    out: list[tuple[str, list[str]]] = []
    heading, sentences = "", []
    for line in text.splitlines():
        if _is_heading(line):
            if sentences:
                out.append((heading, sentences))
            heading, sentences = line, []
        else:
            sentences += [s.strip() for s in _SPLIT_SENTENCES.split(line) if s.strip()]
    if sentences:
        out.append((heading, sentences))
    # front matter (title, authors, affiliations) comes before the first usual or numbered heading
    first = next((i for i, (h, _) in enumerate(out) if _KNOWN.match(h) or _NUMBERED.match(h)), 0)
    return out[first:]


def spread(items: Sequence, n: int | None) -> list:
    """At most ``n`` of ``items``, evenly spaced from the first to the last (all of them when ``n`` is None)."""
    items = list(items)
    if not n or len(items) <= n:
        return items
    return [items[round(j * (len(items) - 1) / (n - 1))] for j in range(n)] if n > 1 else items[:1]


PROMPT = "Paper: {title}\nSection: {section}\n\n{context}\n\nContinue the passage with its next sentence."


def continuation_rows(paper: Mapping, context: int = 2, min_words: int = 6, max_words: int = 45,
                      max_rows: int | None = None) -> list[dict]:
    """Rows for one paper: the prompt is the title, the section heading and up to ``context``
    sentences; the answer is the sentence that follows in the paper. Answers shorter than
    ``min_words`` or longer than ``max_words`` words are left out (a word is one with a visible
    character: bidi marks or NUL alone are not words); ``max_rows`` spreads the kept rows evenly over
    the paper. Each row passes :func:`gemma_helpers.chat.validate_rows`."""
    rows = []
    for heading, sentences in sections(paper["text"]):
        for i in range(1, len(sentences)):
            target = sentences[i]
            if not min_words <= sum(bool(visible(w)) for w in target.split()) <= max_words:  # invisible "words" not counted
                continue
            prompt = PROMPT.format(title=paper["title"], section=heading or "(none)",
                                   context=" ".join(sentences[max(0, i - context): i]))
            rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": target}],
                         "paper": paper["key"], "section": heading, "previous": sentences[i - 1]})
    return spread(rows, max_rows)


ROLES = ("abstract", "introduction", "method", "results", "conclusion")  # the answers of :func:`section_rows`
_ROLE_WORDS = (  # first match wins; a numbered heading that matches none is the paper's method
    ("abstract", re.compile(r"\babstract\b", re.IGNORECASE)),
    ("introduction", re.compile(r"\b(introduction|background|related work|motivation|preliminaries)\b", re.IGNORECASE)),
    ("conclusion", re.compile(r"\b(conclusions?|concluding|summary|future work|outlook)\b", re.IGNORECASE)),
    ("results", re.compile(r"\b(results?|experiments?|experimental|evaluation|discussion|analysis|findings|ablations?)\b",
                           re.IGNORECASE)),
    (None, re.compile(r"\b(appendix|acknowledge?ments?|references|bibliography|limitations|ethics|impact)\b",
                      re.IGNORECASE)),
)
ROLE_PROMPT = ("Paper: {title}\n\n{passage}\n\nWhich part of the paper is this passage from? "
               "Answer with one word: " + ", ".join(ROLES[:-1]) + " or " + ROLES[-1] + ".")


def section_role(heading: str) -> str | None:
    """The part of a paper a section heading names, one of :data:`ROLES`: by its words ("3 Experiments",
    "Discussion" -> ``results``; "Related Work" -> ``introduction``), else ``method`` for any other
    numbered heading ("2 How Trees Cool Streets"); ``None`` for appendices, acknowledgements,
    limitations and unnumbered headings of no known part (no row is made of them)."""
    for role, words in _ROLE_WORDS:
        if words.search(heading):
            return role
    return "method" if _NUMBERED.match(heading.strip()) else None


def section_rows(paper: Mapping, context: int = 2, min_words: int = 6, max_words: int = 80,
                 max_rows: int | None = None) -> list[dict]:
    """Rows for one paper, notebook 01's task: the prompt is the title and a passage of up to
    ``context`` consecutive sentences of one section (ending at each of its sentences in turn); the
    answer is the part of the paper the section is (:func:`section_role`, one word of :data:`ROLES`).

    Every paper has every part, so a split of a few papers still trains on every answer, and the answer
    follows from the passage's wording ("This article reviews...", "In our experiments...") in any
    paper, seen or not. Passages shorter than ``min_words`` or longer than ``max_words`` words are left
    out; ``max_rows`` spreads the kept rows evenly over the paper. Each row passes
    :func:`gemma_helpers.chat.validate_rows` and keeps its ``passage`` (copying it is a trivial baseline)."""
    rows = []
    for heading, sentences in sections(paper["text"]):
        role = section_role(heading)
        if role is None:
            continue
        for i in range(len(sentences)):
            passage = " ".join(sentences[max(0, i + 1 - context): i + 1])
            if not min_words <= sum(bool(visible(w)) for w in passage.split()) <= max_words:
                continue
            prompt = ROLE_PROMPT.format(title=paper["title"], passage=passage)
            rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": role}],
                         "paper": paper["key"], "section": heading, "passage": passage})
    return spread(rows, max_rows)


def build_rows(papers: Sequence[Mapping], splits: Mapping[str, Sequence[str]], task=continuation_rows,
               **kwargs) -> dict[str, list[dict]]:
    """``{split: rows}`` from ``task`` (:func:`continuation_rows` or :func:`section_rows`) of the papers in each split."""
    by_key = {p["key"]: p for p in papers}
    return {name: [row for key in keys for row in task(by_key[key], **kwargs)]
            for name, keys in splits.items()}


def sample_rows(split: str = "train", **kwargs) -> list[dict]:
    """Training rows of the bundled mini-papers straight from their text (the throughput benchmark's papers recipe)."""
    papers = [{**p, "text": sample_text(p)} for p in sample()]
    return build_rows(papers, split_by_paper([p["key"] for p in papers]), **kwargs)[split]


# ---------------------------------------------------------------- PDFs written here (CPU profile, tests)
def _font(pdf) -> str:
    from matplotlib import font_manager

    pdf.add_font("dejavu", fname=font_manager.findfont("DejaVu Sans"))
    return "dejavu"


def _wrap(pdf, text: str, width: float, hyphenate: bool) -> list[str]:
    """Greedy line breaking; a long word that does not fit is hyphenated when ``hyphenate``."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if pdf.get_string_width(candidate) <= width:
            line = candidate
            continue
        if hyphenate and len(word) >= 8 and word.isalpha():
            for cut in range(len(word) - 3, 2, -1):
                head = f"{line} {word[:cut]}-".strip()
                if pdf.get_string_width(head) <= width:
                    lines.append(head)
                    line = word[cut:]
                    break
            else:
                lines.append(line)
                line = word
            continue
        lines.append(line)
        line = word
    if line:
        lines.append(line)
    return lines


def write_pdf(path: str | Path | None, title: str, sections: Sequence[tuple[str, str]], authors: str = "",
              references: Sequence[str] = (), running_header: str = "", hyphenate: bool = True,
              ligatures: bool = True, broken_pages: Iterable[int] = (), password: str | None = None,
              image_only: bool = False) -> bytes:
    """A small paper as a PDF (fpdf2, DejaVu Sans), written to ``path`` when given; returns the bytes.

    Like a real paper it has a running header and page numbers, words hyphenated at line ends and
    "fi"/"fl" ligatures (what :func:`clean_pages` must undo). For tests: ``broken_pages`` (1-based)
    get a corrupt content stream, ``password`` encrypts the file, ``image_only`` draws the text as
    an image (no text layer)."""
    from fpdf import FPDF

    class _Paper(FPDF):
        def header(self):
            if running_header and not image_only:
                self.set_font(font, size=8)
                self.cell(0, 5, running_header, align="C", new_x="LMARGIN", new_y="NEXT")
                self.ln(2)

        def footer(self):
            if image_only:  # a scan: no text at all
                return
            self.set_y(-12)
            self.set_font(font, size=8)
            self.cell(0, 5, str(self.page_no()), align="C")

    pdf = _Paper(format=(148, 210))  # A5
    font = _font(pdf)
    pdf.set_title(title)
    pdf.set_auto_page_break(True, margin=16)
    pdf.add_page()
    width = pdf.epw

    def lig(s: str) -> str:
        return s.replace("fi", "\ufb01").replace("fl", "\ufb02") if ligatures else s

    def paragraph(text: str, size: float, style_gap: float = 2.0):
        pdf.set_font(font, size=size)
        for ln in _wrap(pdf, text, width, hyphenate):
            pdf.cell(0, size * 0.5, lig(ln), new_x="LMARGIN", new_y="NEXT")
        pdf.ln(style_gap)

    if image_only:
        from PIL import Image, ImageDraw

        img = Image.new("RGB", (800, 400), "white")
        ImageDraw.Draw(img).text((20, 20), title, fill="black")
        pdf.image(img, w=width)
    else:
        paragraph(title, 14, 1)
        if authors:
            paragraph(authors, 9)
        for heading, text in sections:
            paragraph(heading, 11, 1)
            paragraph(text, 9)
        if references:
            paragraph("References", 11, 1)
            for ref in references:
                paragraph(ref, 8, 1)
    data = bytes(pdf.output())
    broken = set(broken_pages)
    if broken or password:
        from pypdf import PdfReader, PdfWriter
        from pypdf.generic import NameObject, StreamObject

        writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
        for number in broken:
            garbage = StreamObject()
            garbage._data = b"\x00this is not deflate data"
            garbage[NameObject("/Filter")] = NameObject("/FlateDecode")
            writer.pages[number - 1][NameObject("/Contents")] = writer._add_object(garbage)
        if password:
            writer.encrypt(user_password=password, owner_password=password + "-owner", algorithm="RC4-128")
        buf = io.BytesIO()
        writer.write(buf)
        data = buf.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data


def sample_pdf(paper: Mapping, path: str | Path | None = None, **kwargs) -> bytes:
    """A bundled mini-paper rendered by :func:`write_pdf`."""
    return write_pdf(path, paper["title"], [(s["heading"], s["text"]) for s in paper["sections"]],
                     authors=paper.get("authors", ""), references=paper.get("references", ()),
                     running_header=f"gemma-lora-notebooks mini-papers - {paper['field']}", **kwargs)


# ---------------------------------------------------------------- a loopback HTTP server
FAULTS = ("html", "truncate", "flaky", "429", "404", "500", "hang", "no_length", "gzip", "bad_gzip", "bad_length",
          "trickle", "empty", "503_retry_after", "429_forever", "redirect", "redirect_loop", "redirect_forever",
          "redirect_file")


class LoopbackServer:
    """Serves ``files`` (``{name: bytes}``) on 127.0.0.1 with optional ``faults`` per name:

    ``html`` an HTML page with status 200, ``truncate`` half the bytes then a closed connection,
    ``flaky`` / ``429`` one 500 / 429 answer before the file, ``404`` / ``500`` always that status,
    ``hang`` no answer for ``hang_s`` seconds, ``no_length`` the file without a Content-Length,
    ``gzip`` the file gzip-encoded (``Content-Encoding: gzip``), ``bad_gzip`` the file declared gzip
    but sent as it is, ``bad_length`` a ``Content-Length`` that is not a number, ``trickle`` one byte
    every ``trickle_s`` seconds, ``empty`` a 200 with no body, ``503_retry_after`` two 503 answers
    with ``Retry-After: 1`` before the file, ``429_forever`` always 429 with ``Retry-After: 3600``,
    ``redirect`` a 301 to the file, ``redirect_loop`` two addresses redirecting to each other,
    ``redirect_forever`` a new address every time, ``redirect_file`` a redirect to ``file:///etc/passwd``.
    ``hits`` counts requests per name and ``times`` keeps when each came (``time.monotonic``).
    Use as a context manager; ``url(name)`` gives the address."""

    def __init__(self, files: Mapping[str, bytes], faults: Mapping[str, str] | None = None, hang_s: float = 30.0,
                 trickle_s: float = 2.0):
        self.files, self.faults, self.hang_s, self.trickle_s = dict(files), dict(faults or {}), hang_s, trickle_s
        bad = {k: v for k, v in self.faults.items() if v not in FAULTS}
        if bad:
            raise ValueError(f"unknown faults {bad}; known: {FAULTS}")
        self.hits: Counter = Counter()
        self.times: dict[str, list[float]] = {}
        self._server = None

    def url(self, name: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/{urllib.parse.quote(name)}"

    def _handler(self):
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, code, body: bytes, ctype="application/pdf", length: int | None = None, close=False,
                      headers=()):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                for name, value in headers:
                    self.send_header(name, value)
                if length is not None:
                    self.send_header("Content-Length", str(length))
                if close or length is None:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

            def _redirect(self, location: str):
                return self._send(302, b"", "text/html", 0, headers=[("Location", location)])

            def do_GET(self):
                path, _, query = self.path.partition("?")
                name = urllib.parse.unquote(path.lstrip("/"))
                outer.hits[name] += 1
                outer.times.setdefault(name, []).append(time.monotonic())
                fault, data = outer.faults.get(name), outer.files.get(name)
                hits, here = outer.hits[name], "/" + urllib.parse.quote(name)
                page = b"<!DOCTYPE html><html><body><h1>Error</h1></body></html>"
                try:
                    if fault == "hang":
                        time.sleep(outer.hang_s)
                    if fault == "redirect" and not query:
                        return self._send(301, b"", "text/html", 0, headers=[("Location", here + "?moved")])
                    if fault == "redirect_loop":
                        return self._redirect(here if query else here + "?again")
                    if fault == "redirect_forever":
                        return self._redirect(f"{here}?hop={hits}")
                    if fault == "redirect_file":
                        return self._redirect("file:///etc/passwd")
                    if data is None or fault == "404":
                        return self._send(404, page, "text/html", len(page))
                    if fault == "500" or (fault == "flaky" and hits == 1):
                        return self._send(500, page, "text/html", len(page))
                    if fault == "429" and hits == 1:
                        return self._send(429, page, "text/html", len(page), headers=[("Retry-After", "0")])
                    if fault == "503_retry_after" and hits <= 2:
                        return self._send(503, page, "text/html", len(page), headers=[("Retry-After", "1")])
                    if fault == "429_forever":
                        return self._send(429, page, "text/html", len(page), headers=[("Retry-After", "3600")])
                    if fault == "html":
                        return self._send(200, page, "text/html; charset=utf-8", len(page))
                    if fault == "truncate":
                        return self._send(200, data[: len(data) // 2], length=len(data), close=True)
                    if fault == "no_length":
                        return self._send(200, data, length=None)
                    if fault == "empty":
                        return self._send(200, b"", length=0)
                    if fault == "gzip":
                        packed = gzip.compress(data)
                        return self._send(200, packed, length=len(packed), headers=[("Content-Encoding", "gzip")])
                    if fault == "bad_gzip":
                        return self._send(200, data, length=len(data), headers=[("Content-Encoding", "gzip")])
                    if fault == "bad_length":
                        return self._send(200, data, headers=[("Content-Length", "lots")])
                    if fault == "trickle":
                        self._send(200, b"", length=len(data), close=True)
                        for i in range(len(data)):
                            self.wfile.write(data[i: i + 1])
                            self.wfile.flush()
                            time.sleep(outer.trickle_s)
                        return None
                    return self._send(200, data, length=len(data))
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler

    def start(self) -> LoopbackServer:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
