"""Scientific papers to training rows: the paper list, the corpus, words, splits by paper, rows.

The pipeline, each step reporting what went wrong by name instead of stopping:

1. :func:`gemma_helpers.data.download.download`: the hardened download, one
   :class:`~gemma_helpers.data.download.Fetch` per URL (``ok`` / ``cached`` / ``failed`` and why).
2. :func:`gemma_helpers.data.pdf.read_pdf` and :func:`~gemma_helpers.data.pdf.clean_pages`: pypdf
   page by page, then ligatures, hyphenation, running headers, page numbers, references removed.
3. :func:`collect`: the two steps for a list of :class:`Paper`, plus a check that the title found
   in the PDF is the title expected (the seed trained on the wrong paper for half of its list).
4. :func:`split_by_paper` and :func:`section_rows`: notebook 01's training task, naming the part of
   the paper (abstract, introduction, method, results, conclusion) a passage comes from (see the
   notebook for why), with no paper in two splits. :func:`continuation_rows` is the earlier
   next-sentence task, kept for the throughput benchmark's papers recipe (:func:`sample_rows`).

Offline (CI), :mod:`gemma_helpers.offline` renders the project's own mini-papers
(``data/papers_sample.json``) to PDF and serves them on 127.0.0.1, so the same download code runs.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..chat import visible
from ..env import SEED, arxiv_mirror
from .download import download, short_error
from .pdf import (
    KNOWN_HEADING,
    NUMBERED_HEADING,
    TITLE_MATCH,
    TITLE_WINDOW,
    PDFError,
    clean_pages,
    is_heading,
    read_pdf,
    title_score,
)

FIELDS = ("ai", "climate", "healthcare", "vision")
SAMPLE = Path(__file__).resolve().parents[2] / "data" / "papers_sample.json"


@dataclass(frozen=True)
class Paper:
    """One paper of the download list: key, the title its PDF must carry, field and URL."""

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
ARXIV_PAPERS = tuple(
    Paper(key, title, field, arxiv_id)
    for key, field, arxiv_id, title in (
        [part.strip() for part in line.split("|")] for line in """
attention        | ai         | 1706.03762 | Attention Is All You Need
lora             | ai         | 2106.09685 | LoRA: Low-Rank Adaptation of Large Language Models
qlora            | ai         | 2305.14314 | QLoRA: Efficient Finetuning of Quantized LLMs
llama            | ai         | 2302.13971 | LLaMA: Open and Efficient Foundation Language Models
llama2           | ai         | 2307.09288 | Llama 2: Open Foundation and Fine-Tuned Chat Models
mamba            | ai         | 2312.00752 | Mamba: Linear-Time Sequence Modeling with Selective State Spaces
tackling_climate | climate    | 1906.05433 | Tackling Climate Change with Machine Learning
climax           | climate    | 2301.10343 | ClimaX: A foundation model for weather and climate
fourcastnet      | climate    | 2202.11214 | FourCastNet: A Global Data-driven High-resolution Weather Model using Adaptive Fourier Neural Operators
graphcast        | climate    | 2212.12794 | GraphCast: Learning skillful medium-range global weather forecasting
climategan       | climate    | 2110.02871 | ClimateGAN: Raising Climate Change Awareness by Generating Images of Floods
med_palm         | healthcare | 2212.13138 | Large Language Models Encode Clinical Knowledge
med_palm2        | healthcare | 2305.09617 | Towards Expert-Level Medical Question Answering with Large Language Models
chexnet          | healthcare | 1711.05225 | CheXNet: Radiologist-Level Pneumonia Detection on Chest X-Rays with Deep Learning
unet             | healthcare | 1505.04597 | U-Net: Convolutional Networks for Biomedical Image Segmentation
resnet           | vision     | 1512.03385 | Deep Residual Learning for Image Recognition
vit              | vision     | 2010.11929 | An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale
sam              | vision     | 2304.02643 | Segment Anything
mask_rcnn        | vision     | 1703.06870 | Mask R-CNN
yolo             | vision     | 1506.02640 | You Only Look Once: Unified, Real-Time Object Detection
llava            | vision     | 2304.08485 | Visual Instruction Tuning
instructblip     | vision     | 2305.06500 | InstructBLIP: Towards General-purpose Vision-Language Models with Instruction Tuning
""".strip().splitlines()
    )
)


def arxiv_papers(mirror: str | None = None) -> list[Paper]:
    """:data:`ARXIV_PAPERS`, the GPU profile's download list, from arxiv.org or from a mirror that serves
    arXiv's paths (``mirror``, default ``$GEMMA_ARXIV_MIRROR``: :func:`gemma_helpers.env.arxiv_mirror`),
    each PDF at ``<mirror>/pdf/<id>``. The title check after the download is the same either way."""
    base = (mirror or "").rstrip("/") or arxiv_mirror()
    if not base:
        return list(ARXIV_PAPERS)
    return [replace(p, url=f"{base}/pdf/{p.arxiv_id}") for p in ARXIV_PAPERS]


# ---------------------------------------------------------------- the corpus
@dataclass
class Corpus:
    """What collect returns: the usable papers and one report entry per URL."""

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
    (:func:`paper_files`). ``download_kwargs`` go to :func:`download_one` (``deadline_s``, ``retries``, ...).

    Notebook 01, section 2."""
    fetches = download(papers, folder, progress=progress, **download_kwargs)
    kept, report = [], []
    for paper, fetch in zip(papers, fetches):
        entry = fetch.as_dict()
        if fetch.status in ("ok", "cached"):
            try:
                record, status, reason = read_paper(paper, fetch.path)
            except Exception as exc:  # noqa: BLE001 - one paper that breaks the reader must not lose the others
                record, status, reason = None, "unreadable", f"unexpected {type(exc).__name__}: {short_error(exc)}"
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
    """A bundled mini-paper as :func:`~gemma_helpers.data.pdf.clean_pages` would return it after a perfect extraction."""
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
    """A cleaned text without its front matter (title, authors, affiliations): its :func:`sections`.

    Notebook 01, section 3."""
    return "\n".join(f"{heading}\n{' '.join(sentences)}" for heading, sentences in sections(text))


def word_counts(text: str, min_len: int = 3) -> Counter:
    """Lower-cased words of ``text`` without wordcloud's English stopwords (and a few of papers' own).

    Notebook 01, section 3."""
    from wordcloud import STOPWORDS

    stop = STOPWORDS | STOPWORDS_EXTRA
    return Counter(w for w in re.findall(r"[a-z][a-z-]*[a-z]", text.lower()) if len(w) >= min_len and w not in stop)


# ---------------------------------------------------------------- training rows
def split_by_paper(keys: Sequence[str], validation: float = 0.2, holdout: float = 0.2,
                   seed: int = SEED) -> dict[str, list[str]]:
    """Papers into train / validation / holdout (at least one each); no paper in two splits.

    Each paper's split is decided by its own key alone: a hash of seed and key, read as a number
    in [0, 1), falls below ``validation`` (validation), below ``validation + holdout`` (holdout)
    or above (train). So adding a paper never moves the others, and the shares are the expected
    ones, not exact counts. Only while a split would be empty (very few papers) does it borrow
    the paper whose number is nearest to its interval, and that paper returns to its own split
    once another paper falls in the empty one.

    Notebook 01, section 4."""
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
    """``[(heading, sentences)]`` of a cleaned text (headings are the short lines :func:`~gemma_helpers.data.pdf.clean_pages` keeps apart).

    Notebook 01, section 4."""
    out: list[tuple[str, list[str]]] = []
    heading, sentences = "", []
    for line in text.splitlines():
        if is_heading(line):
            if sentences:
                out.append((heading, sentences))
            heading, sentences = line, []
        else:
            sentences += [s.strip() for s in _SPLIT_SENTENCES.split(line) if s.strip()]
    if sentences:
        out.append((heading, sentences))
    # front matter (title, authors, affiliations) comes before the first usual or numbered heading
    first = next((i for i, (h, _) in enumerate(out) if KNOWN_HEADING.match(h) or NUMBERED_HEADING.match(h)), 0)
    return out[first:]


def spread(items: Sequence, n: int | None) -> list:
    """At most ``n`` of ``items``, evenly spaced from the first to the last (all of them when ``n`` is None).

    Notebook 01, section 4."""
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
    limitations and unnumbered headings of no known part (no row is made of them).

    Notebook 01, section 4."""
    for role, words in _ROLE_WORDS:
        if words.search(heading):
            return role
    return "method" if NUMBERED_HEADING.match(heading.strip()) else None


def section_rows(paper: Mapping, context: int = 2, min_words: int = 6, max_words: int = 80,
                 max_rows: int | None = None) -> list[dict]:
    """Rows for one paper, notebook 01's task: the prompt is the title and a passage of up to
    ``context`` consecutive sentences of one section (ending at each of its sentences in turn); the
    answer is the part of the paper the section is (:func:`section_role`, one word of :data:`ROLES`).

    Every paper has every part, so a split of a few papers still trains on every answer, and the answer
    follows from the passage's wording ("This article reviews...", "In our experiments...") in any
    paper, seen or not. Passages shorter than ``min_words`` or longer than ``max_words`` words are left
    out; ``max_rows`` spreads the kept rows evenly over the paper. Each row passes
    :func:`gemma_helpers.chat.validate_rows` and keeps its ``passage`` (copying it is a trivial baseline).

    Notebook 01, section 4."""
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
    """``{split: rows}`` from ``task`` (:func:`continuation_rows` or :func:`section_rows`) of the papers in each split.

    Notebook 01, section 4."""
    by_key = {p["key"]: p for p in papers}
    return {name: [row for key in keys for row in task(by_key[key], **kwargs)]
            for name, keys in splits.items()}


def sample_rows(split: str = "train", **kwargs) -> list[dict]:
    """Training rows of the bundled mini-papers straight from their text (the throughput benchmark's papers recipe)."""
    papers = [{**p, "text": sample_text(p)} for p in sample()]
    return build_rows(papers, split_by_paper([p["key"] for p in papers]), **kwargs)[split]
