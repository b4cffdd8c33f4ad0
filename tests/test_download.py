"""data.download, the hardened PDF download, against the loopback server (more hostile servers: test_hostile_input)."""
from __future__ import annotations

import time

from gemma_helpers import offline
from gemma_helpers.data import download
from gemma_helpers.data import papers as P


def fetch(server, name, tmp_path, **kwargs):
    return download.download_one(server.url(name), tmp_path / download.safe_filename(name), name, progress=False, **kwargs)


def test_download_keeps_every_good_file_and_names_every_bad_one(tmp_path):
    pdf = offline.example_pdf()
    files = {n: pdf for n in ("good", "html", "truncated", "flaky", "rate_limited", "missing", "hang", "huge")}
    files["huge"] = pdf + b"%" * 300_000  # still a PDF, but over the cap
    files["stream_huge"] = files["huge"]
    del files["missing"]
    faults = {"html": "html", "truncated": "truncate", "flaky": "flaky", "rate_limited": "429", "hang": "hang",
              "stream_huge": "no_length"}
    names = ["good", "html", "truncated", "flaky", "rate_limited", "missing", "hang", "huge", "stream_huge"]
    papers = [P.Paper(n, "Marine Heat and Coral Reefs", "climate") for n in names]
    with offline.LoopbackServer(files, faults, hang_s=4) as server:
        papers = [P.Paper(p.key, p.title, p.field, url=server.url(p.key)) for p in papers]
        started = time.time()
        got = {f.key: f for f in download.download(papers, tmp_path, progress=False, max_bytes=200_000,
                                            timeout=(2, 1), retries=1, backoff_s=0.05)}
        elapsed = time.time() - started
    assert got["good"].status == "ok" and (tmp_path / "good.pdf").read_bytes() == pdf
    assert got["flaky"].status == "ok" and got["flaky"].attempts == 2  # a 500, then the file
    assert got["rate_limited"].status == "ok" and got["rate_limited"].attempts == 2  # a 429 (Retry-After 0), then it
    expected = {"html": "not a PDF", "truncated": "truncated", "missing": "HTTP 404", "hang": "read timeout",
                "huge": "too large", "stream_huge": "too large"}
    for name, words in expected.items():
        assert got[name].status == "failed", got[name]
        assert words in got[name].reason, got[name].reason
        assert not (tmp_path / f"{name}.pdf").exists()
    assert got["missing"].attempts == 1  # a 404 is not retried
    assert got["truncated"].attempts == 2 and got["hang"].attempts == 2  # retried once, then reported
    assert "text/html" in got["html"].reason
    assert not list(tmp_path.glob(".*.part"))  # nothing half-written is left
    assert elapsed < 30


def test_download_skips_complete_files_and_refuses_other_schemes(tmp_path):
    pdf = offline.example_pdf()
    with offline.LoopbackServer({"a": pdf}) as server:
        first = fetch(server, "a", tmp_path)
        second = fetch(server, "a", tmp_path)
        assert (first.status, second.status) == ("ok", "cached") and server.hits["a"] == 1
    refused = download.download_one("file:///etc/passwd", tmp_path / "x.pdf", progress=False)
    assert refused.status == "failed" and "only http(s)" in refused.reason
    assert download.safe_filename("../../etc/passwd") == "passwd.pdf"
    assert download.safe_filename("Attention Is All You Need?.pdf") == "Attention_Is_All_You_Need_.pdf"
