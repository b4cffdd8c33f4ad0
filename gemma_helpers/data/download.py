"""Hardened download of PDFs over HTTP(S): one :class:`Fetch` per URL, never an exception for a bad one (notebook 01, section 2).

Streaming (``requests``), timeouts per read and a deadline per URL, retries with exponential
backoff (or the server's ``Retry-After``) on 429 / 5xx / truncation, redirects checked hop by hop,
gzip decoded before a size cap, a check that the bytes are a PDF and not an HTML error page, a
temporary file renamed only when complete, files already complete skipped, progress bars.
``status`` is ``ok`` / ``cached`` / ``failed`` and ``reason`` says why. Offline, the tests and the
CPU profile point it at :class:`gemma_helpers.offline.LoopbackServer`.
"""
from __future__ import annotations

import contextlib
import datetime
import email.utils
import hashlib
import os
import re
import time
import unicodedata
import urllib.parse
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol


class Paper(Protocol):
    """What a download needs of an item (:class:`gemma_helpers.data.papers.Paper` is one): a ``key``, the
    file's name, and the ``source`` URL."""

    key: str

    @property
    def source(self) -> str: ...

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
    """``name`` as a file name: its last path part only, letters, digits, ``._-``, at most 100 characters
    (notebook 01, section 2).

    Notebook 01, section 2."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("\\", "/").rsplit("/", 1)[-1]).strip("._")[:100]
    stem = stem or hashlib.sha1(name.encode()).hexdigest()[:12]
    return stem if stem.lower().endswith(suffix) else stem + suffix


def is_complete_pdf(path: str | Path) -> bool:
    """Starts with ``%PDF-`` and has the ``%%EOF`` marker in its last kilobytes (notebook 01, section 2: a rerun
    finds the papers already on disk)."""
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
        raise _Failed(f"connection failed: {type(exc).__name__} ({short_error(exc)})", retry=True, code=code) from exc
    except requests.exceptions.RequestException as exc:  # InvalidURL, InvalidHeader, ...
        raise _Failed(f"request refused: {type(exc).__name__} ({short_error(exc)})", code=code) from exc


def short_error(exc: BaseException, n: int = 160) -> str:
    """An exception's message on one line, at most ``n`` characters (for a report's ``reason``)."""
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
                return Fetch(key, url, "failed", f"unexpected {type(exc).__name__}: {short_error(exc)}", attempts=attempt,
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
    :class:`Fetch` each, in order (notebook 01, section 2, through :func:`gemma_helpers.data.papers.collect`)."""
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
