"""Offline stand-ins for the internet and for real videos, used by the CPU profile and the tests.

CI has no network and no video set, so the code that downloads papers and reads clips is exercised
against things written here instead (notebook 01, sections 1 and 2; notebook 04, "Data"):

- :func:`write_pdf` / :func:`sample_pdf`: PDFs rendered from the project's own mini-papers
  (``data/papers_sample.json``), with the faults real PDFs have (ligatures, hyphenation, running
  headers, a reference section, an image-only or encrypted file);
- :class:`LoopbackServer`: those files served on 127.0.0.1 with chosen HTTP faults (HTML error
  pages, truncation, 429 / 5xx, hangs, redirects, bad gzip ...), so the real download code runs;
- :func:`synthetic_clips`: short MPEG-4 clips of a shape moving, growing or shrinking, whose action
  is the answer (PyAV).

Nothing here is used on the GPU profile with real data; ``python -m gemma_helpers rehearse`` serves
these PDFs under the real papers' titles as the arXiv mirror of the ``rehearse`` profile.
"""
from __future__ import annotations

import gzip
import http.server
import io
import random
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from typing_extensions import Self

from .data.frames import ACTIONS


# ---------------------------------------------------------------- PDFs (notebook 01's CPU profile, tests)
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
    "fi"/"fl" ligatures (what :func:`gemma_helpers.data.pdf.clean_pages` must undo). For tests: ``broken_pages`` (1-based)
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
    """A bundled mini-paper rendered by :func:`write_pdf` (notebook 01, section 1: the CPU profile's papers)."""
    return write_pdf(path, paper["title"], [(s["heading"], s["text"]) for s in paper["sections"]],
                     authors=paper.get("authors", ""), references=paper.get("references", ()),
                     running_header=f"gemma-lora-notebooks mini-papers - {paper['field']}", **kwargs)


EXAMPLE_SECTIONS = (
    ("Abstract", ("Sea surface temperature controls where corals can live. When the water stays too warm the "
                  "algae inside the coral leave and the reef turns white.")),
    ("1 Introduction", ("Coral reefs cover a small area of the ocean floor. They shelter a large share of marine "
                        "species and protect coastlines from waves.")),
    ("2 Method", ("We describe how a temperature anomaly is accumulated over twelve weeks. The accumulated "
                  "anomaly is compared with a threshold that signals bleaching risk.")),
)


def example_pdf(title: str = "Marine Heat and Coral Reefs", **kwargs) -> bytes:
    """A three-section paper (:data:`EXAMPLE_SECTIONS`) with an author, a running header and one reference,
    as :func:`write_pdf` writes it (``kwargs``: ``password``, ``image_only``, ...): the tests' usual PDF."""
    return write_pdf(None, title, EXAMPLE_SECTIONS, authors="A. Author", running_header="Journal of Examples",
                     references=["Doe, J. (2020). Warm water. Reef Letters 1, 1-2."], **kwargs)


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
    Use as a context manager; ``url(name)`` gives the address (notebook 01, section 1: the CPU profile's arXiv)."""

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



def sample_papers() -> tuple[LoopbackServer, list, dict[str, str]]:
    """The CPU profile's paper source (notebook 01, section 1, through gemma_helpers.paper_parts.paper_list):
    the project's eight mini-papers served as PDFs on a started
    :class:`LoopbackServer`, one of them from a server that answers 500 once and then sends the file,
    plus three entries a download report must name: an HTML page served as ``.pdf`` (``login_page``),
    a 404 (``gone``) and the file of one paper under another's title (``mislabelled``, the seed's
    "DreamFusion" problem). Returns ``(server, papers, expected)``: ``expected`` is each entry's
    status in a first download (``ok``, or what is wrong); the caller stops the server."""
    from .data import papers as gp

    sample = gp.sample()
    files = {p["key"]: sample_pdf(p) for p in sample}
    flaky = sample[2]["key"]
    files.update({"login_page": b"", "mislabelled": files[sample[1]["key"]]})
    server = LoopbackServer(files, {"login_page": "html", flaky: "flaky"}).start()
    listed = [gp.Paper(p["key"], p["title"], p["field"], url=server.url(p["key"])) for p in sample]
    listed += [gp.Paper("login_page", "A Paper Behind a Login", "ai", url=server.url("login_page")),
               gp.Paper("gone", "A Paper That Was Moved", "vision", url=server.url("gone")),
               gp.Paper("mislabelled", "Efficient Attention for Long Documents", "ai", url=server.url("mislabelled"))]
    expected = {**{p["key"]: "ok" for p in sample}, "login_page": "failed", "gone": "failed", "mislabelled": "wrong_paper"}
    return server, listed, expected


# ---------------------------------------------------------------- video clips (notebook 04's CPU profile, tests)
def write_clip(path: str | Path, frames: Sequence, fps: int = 8) -> Path:
    """Write RGB uint8 arrays (H x W x 3) as an MPEG-4 video with PyAV."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.bit_rate = 400_000
        for arr in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def shape_frames(action: str, n_frames: int = 12, size: int = 64, shape: str = "square",
                 color=(230, 40, 40), jitter: random.Random | None = None, radius: float = 0.22) -> list:
    """Frames of one shape performing ``action`` (one of :data:`ACTIONS`) on a dark background.

    Every clip starts from a shape of half-width ``radius`` (a share of the frame side) near the
    centre: a moving shape travels a third of the frame towards one edge, a growing one doubles, a
    shrinking one ends at a quarter. The actions thus differ in where and how large the shape is over
    the clip, not only in the order of the frames, which a random-weight vision tower (the CPU
    profile) and a few training clips are enough to read."""
    import numpy as np

    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; expected one of {ACTIONS}")
    rng = jitter or random.Random(0)
    c0 = size / 2 + rng.uniform(-size / 16, size / 16)
    c1 = size / 2 + rng.uniform(-size / 16, size / 16)
    travel = size / 3
    yy, xx = np.mgrid[0:size, 0:size]
    frames = []
    for t in range(n_frames):
        f = t / max(n_frames - 1, 1)
        cx, cy, r = c0, c1, size * radius
        if action == "moving left":
            cx = c0 - travel * f
        elif action == "moving right":
            cx = c0 + travel * f
        elif action == "moving up":
            cy = c1 - travel * f
        elif action == "moving down":
            cy = c1 + travel * f
        elif action == "growing":
            r = size * radius * (1 + f)
        else:  # shrinking
            r = size * radius * (1 - 0.75 * f)
        if shape == "circle":
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        else:
            mask = (abs(xx - cx) <= r) & (abs(yy - cy) <= r)
        img = np.full((size, size, 3), 20, dtype=np.uint8)
        img[mask] = color
        frames.append(img)
    return frames


def synthetic_clips(out_dir: str | Path, per_action: int = 6, n_frames: int = 12, size: int = 64,
                    seed: int = 0, actions: Sequence[str] = ACTIONS, color=(255, 255, 255),
                    radius: float = 0.22) -> list[tuple[Path, str]]:
    """Write ``per_action`` clips of moving shapes for every action; ``[(clip path, action), ...]``
    (notebook 04, "Data": the CPU profile's clips).

    Shape (square or circle) and starting point vary from clip to clip; the colour does not: under a
    random-weight vision tower (the CPU profile) a change of colour moves the image features far more
    than the motion does, and the few training clips could not teach the adapter to look past it.

    Notebook 04, "Data"."""
    rng = random.Random(seed)
    clips = []
    for action in actions:
        for i in range(per_action):
            frames = shape_frames(action, n_frames, size, ("square", "circle")[i % 2], color, rng, radius)
            name = f"{action.replace(' ', '_')}_{i:02d}.mp4"
            clips.append((write_clip(Path(out_dir) / name, frames), action))
    return clips
