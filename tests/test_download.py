"""data.download, the hardened PDF download, against the loopback server: good and bad files side by side,
then hostile but realistic servers (each case asserts the named error AND that the good papers beside
the bad one are intact; fast: short deadlines, tiny backoff bases)."""
from __future__ import annotations

import datetime
import gzip
import socket
import time

import pytest

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


FAST = {"retries": 2, "backoff_s": 0.01, "timeout": (1.0, 5.0), "progress": False}


@pytest.fixture(scope="module")
def sample():
    """Three of the bundled mini-papers as PDF bytes, by key."""
    return {p["key"]: (p, offline.sample_pdf(p)) for p in P.sample()[:3]}


def paper(server, key, title, url=None):
    return P.Paper(key, title, "ai", url=url if url is not None else server.url(key))


# ---------------------------------------------------------------- hostile servers
def test_one_collect_call_keeps_every_good_paper_whatever_the_bad_urls_do(tmp_path, sample):
    (a, pdf_a), (b, pdf_b), (c, pdf_c) = sample.values()
    files = {a["key"]: pdf_a, b["key"]: pdf_b, "zipped": pdf_c, "odd_length": pdf_a, "never_answers": pdf_a,
             "loop": pdf_a, "to_file": pdf_a, "endless": pdf_a, "trickle": pdf_b}
    faults = {"zipped": "gzip", "odd_length": "bad_length", "never_answers": "hang", "loop": "redirect_loop",
              "to_file": "redirect_file", "endless": "redirect_forever", "trickle": "trickle"}
    deadline = 2.0
    with offline.LoopbackServer(files, faults, hang_s=30, trickle_s=0.5) as server:
        papers = [paper(server, a["key"], a["title"]), paper(server, b["key"], b["title"]),
                  paper(server, "zipped", c["title"]), paper(server, "odd_length", a["title"]),
                  paper(server, "never_answers", a["title"]), paper(server, "loop", a["title"]),
                  paper(server, "to_file", a["title"]), paper(server, "endless", a["title"]),
                  paper(server, "malformed", a["title"], url="http://"),
                  paper(server, "trickle", b["title"])]
        started = time.monotonic()
        corpus = P.collect(papers, tmp_path, deadline_s=deadline, max_redirects=5, **FAST)
        elapsed = time.monotonic() - started
        hits = dict(server.hits)
    print(f"must-show collect: {elapsed:.2f} s\n{corpus}")
    report = {r["key"]: r for r in corpus.report}
    assert [r["key"] for r in corpus.report] == [p.key for p in papers]  # one line per URL, in order
    kept = {p["key"]: p for p in corpus.papers}
    assert set(kept) == {a["key"], b["key"], "zipped", "odd_length"}
    for key, source in ((a["key"], a), (b["key"], b), ("zipped", sample[list(sample)[2]][0])):
        assert source["sections"][0]["text"].split(".")[0] in kept[key]["text"]  # parsed, cleaned text
    # gzip on the wire: decoded before the size and completeness checks, the file on disk is the PDF
    assert report["zipped"]["status"] == "ok" and "gzip" in report["zipped"]["reason"]
    assert (tmp_path / "zipped.pdf").read_bytes() == pdf_c and report["zipped"]["bytes"] == len(pdf_c)
    assert report["odd_length"]["status"] == "ok" and "Content-Length 'lots' is not a number" in report["odd_length"]["reason"]
    bad = {"never_answers": f"deadline: no answer (0 bytes arrived) within the {deadline:g} s",
           "loop": "redirect loop: ", "to_file": "file:///etc/passwd (only http(s) URLs are fetched",
           "endless": "too many redirects: more than 5", "malformed": "malformed URL 'http://': no host name",
           "trickle": f"within the {deadline:g} s allowed for this URL"}
    for key, words in bad.items():
        assert report[key]["status"] == "failed" and words in report[key]["reason"], report[key]
        assert not (tmp_path / f"{key}.pdf").exists()
    assert report["loop"]["reason"].count(" -> ") == 2 and report["loop"]["attempts"] == 1
    assert "malformed" not in hits  # refused before any request
    trickled = int(report["trickle"]["reason"].split("deadline: only ")[1].split(" of ")[0])
    assert 0 < trickled < len(pdf_b)  # the true count, not "0 bytes"
    assert not list(tmp_path.glob(".*.part"))
    # the two slow URLs each end at their deadline; everything else is fast
    assert elapsed < 2 * deadline + 4, elapsed


@pytest.mark.parametrize("url, words", [
    ("http://", "no host name"), ("https:///path.pdf", "no host name"), ("http://host:port/x.pdf", "malformed URL"),
    ("http://host:99999/x.pdf", "malformed URL"), ("ftp://host/x.pdf", "only http(s) URLs are fetched, not 'ftp'"),
    ("file:///etc/passwd", "only http(s)"), ("javascript:alert(1)", "only http(s)"), ("", "not 'a bare path'"),
    ("/etc/passwd", "not 'a bare path'"), ("http://exa mple.org/x.pdf", "whitespace or control characters"),
    ("http://example.org/x\n.pdf", "whitespace or control characters"), (b"http://x/y".decode() + "\x00", "control"),
    (42, "the URL is a int, not text"),
])
def test_malformed_urls_are_refused_before_any_request(tmp_path, url, words):
    class NoNetwork:
        def get(self, *args, **kwargs):
            raise AssertionError("a request was made")

    got = download.download_one(url, tmp_path / "x.pdf", "x", session=NoNetwork(), progress=False)
    assert got.status == "failed" and words in got.reason and got.attempts == 0, got


def test_redirects_good_and_bad_beside_each_other(tmp_path, sample):
    (a, pdf), *_ = sample.values()
    files = {"moved": pdf, "loop": pdf, "to_file": pdf, "endless": pdf}
    faults = {"moved": "redirect", "loop": "redirect_loop", "to_file": "redirect_file", "endless": "redirect_forever"}
    with offline.LoopbackServer(files, faults) as server:
        got = {f.key: f for f in download.download([paper(server, k, a["title"]) for k in files], tmp_path,
                                            max_redirects=3, **FAST)}
        endless_hits = server.hits["endless"]
    assert got["moved"].status == "ok" and "1 redirect(s)" in got["moved"].reason
    assert (tmp_path / "moved.pdf").read_bytes() == pdf
    assert "redirect loop" in got["loop"].reason and got["loop"].http_status == 302
    assert "redirect refused" in got["to_file"].reason and "file:///etc/passwd" in got["to_file"].reason
    assert "too many redirects: more than 3" in got["endless"].reason and endless_hits == 4  # the cap, not more
    assert all(got[k].attempts == 1 for k in ("loop", "to_file", "endless"))  # a bad redirect is not retried


def test_backoff_is_exponential_and_honours_retry_after(tmp_path, sample):
    (a, pdf), *_ = sample.values()
    files = {"down": pdf, "busy": pdf, "good": pdf, "rate": pdf}
    faults = {"down": "500", "busy": "503_retry_after", "rate": "429_forever"}
    with offline.LoopbackServer(files, faults) as server:
        got = {f.key: f for f in download.download([paper(server, k, a["title"]) for k in files], tmp_path,
                                            retries=3, backoff_s=0.1, max_wait_s=5, timeout=(1, 5), progress=False)}
        times = {k: list(v) for k, v in server.times.items()}
    gaps = [t2 - t1 for t1, t2 in zip(times["down"], times["down"][1:])]
    assert len(gaps) == 3 and all(g >= want - 0.01 for g, want in zip(gaps, (0.1, 0.2, 0.4))), gaps
    assert got["down"].status == "failed" and "HTTP 500" in got["down"].reason and got["down"].attempts == 4
    busy_gaps = [t2 - t1 for t1, t2 in zip(times["busy"], times["busy"][1:])]
    assert got["busy"].status == "ok" and got["busy"].attempts == 3 and min(busy_gaps) >= 0.99, busy_gaps  # Retry-After: 1
    # Retry-After: 3600 is more than anyone waits here: one request, and the reason says so
    assert got["rate"].status == "failed" and got["rate"].attempts == 1 and "Retry-After" in got["rate"].reason
    assert got["good"].status == "ok" and (tmp_path / "good.pdf").read_bytes() == pdf


def test_backoff_that_would_pass_the_deadline_stops_and_says_so(tmp_path, sample):
    (_, pdf), *_ = sample.values()
    with offline.LoopbackServer({"down": pdf}, {"down": "500"}) as server:
        started = time.monotonic()
        got = download.download_one(server.url("down"), tmp_path / "down.pdf", "down", retries=5, backoff_s=0.5,
                             deadline_s=1.0, progress=False)
        elapsed = time.monotonic() - started
    assert got.status == "failed" and "would pass the 1 s deadline" in got.reason and elapsed < 1.5, (got, elapsed)


def test_retry_after_as_an_http_date_and_nonsense():
    from email.utils import format_datetime
    from types import SimpleNamespace

    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=30)
    assert 28 <= download._retry_after(SimpleNamespace(headers={"Retry-After": format_datetime(soon, usegmt=True)})) <= 30
    assert download._retry_after(SimpleNamespace(headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0  # past
    for nonsense in ("soon", "-5", "1.5e9", ""):
        assert download._retry_after(SimpleNamespace(headers={"Retry-After": nonsense})) is None


def test_a_refused_connection_is_retried_and_reported_beside_a_good_paper(tmp_path, sample):
    (a, pdf), *_ = sample.values()
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with offline.LoopbackServer({"good": pdf}) as server:
        got = download.download([paper(server, "good", a["title"]),
                          paper(server, "closed", a["title"], url=f"http://127.0.0.1:{closed}/x.pdf")], tmp_path, **FAST)
    assert got[0].status == "ok" and (tmp_path / "good.pdf").read_bytes() == pdf
    assert got[1].status == "failed" and "connection failed" in got[1].reason and got[1].attempts == 3


def test_truncation_encodings_and_sizes_report_true_byte_counts(tmp_path, sample):
    (a, pdf), *_ = sample.values()
    padded = pdf + b"%" * 300_000  # still a PDF once decoded, but over the cap: a small gzip that inflates
    files = {"cut": pdf, "bad_zip": pdf, "bomb": padded, "empty": pdf, "good": pdf, "zipped": pdf}
    faults = {"cut": "truncate", "bad_zip": "bad_gzip", "bomb": "gzip", "empty": "empty", "zipped": "gzip"}
    with offline.LoopbackServer(files, faults) as server:
        got = {f.key: f for f in download.download([paper(server, k, a["title"]) for k in files], tmp_path,
                                            max_bytes=200_000, **FAST)}
    assert got["cut"].status == "failed" and got["cut"].attempts == 3  # retried, then reported
    assert f"truncated: the connection closed after {len(pdf) // 2} of {len(pdf)} bytes" in got["cut"].reason
    assert got["bad_zip"].status == "failed" and "'gzip' content encoding could not be decoded" in got["bad_zip"].reason
    assert got["bomb"].status == "failed" and "too large: more than the cap of 200000 bytes" in got["bomb"].reason
    assert len(gzip.compress(padded)) < 200_000  # what was declared passed the cap; what it inflated to did not
    assert got["empty"].status == "failed" and "empty body" in got["empty"].reason
    for key in ("good", "zipped"):
        assert got[key].status == "ok" and (tmp_path / f"{key}.pdf").read_bytes() == pdf
    assert not list(tmp_path.glob(".*.part"))


def test_duplicate_keys_are_an_error_naming_both_entries(tmp_path):
    papers = [P.Paper("lora", "LoRA", "ai", url="http://127.0.0.1:9/a.pdf"),
              P.Paper("other", "Other", "ai", url="http://127.0.0.1:9/o.pdf"),
              P.Paper("lora", "LoRA again", "ai", url="http://127.0.0.1:9/b.pdf")]
    with pytest.raises(ValueError, match=r"'lora' is used twice: entry 0 \(http://127.0.0.1:9/a.pdf\) and entry 2 "
                                         r"\(http://127.0.0.1:9/b.pdf\)"):
        P.collect(papers, tmp_path, progress=False)
    assert not any(tmp_path.iterdir())  # nothing was fetched


def test_keys_that_sanitise_alike_never_share_a_file(tmp_path, sample):
    (a, pdf_a), (b, pdf_b), (c, pdf_c) = sample.values()
    keys = {"a b": (a, pdf_a), "a_b": (b, pdf_b), "A_B": (c, pdf_c), "x/a_b": (a, pdf_a)}
    assert len({download.safe_filename(k).lower() for k in keys}) == 1  # what went wrong before
    with offline.LoopbackServer({k: v[1] for k, v in keys.items()}) as server:
        papers = [P.Paper(k, v[0]["title"], "ai", url=server.url(k)) for k, v in keys.items()]
        corpus = P.collect(papers, tmp_path, **FAST)
        again = P.collect(papers, tmp_path, **FAST)  # a rerun finds each paper's own file
    names = download.paper_files(papers)
    assert names[0] == "a_b.pdf" and len({n.lower() for n in names}) == len(keys)
    assert [r["status"] for r in corpus.report] == ["ok"] * 4 and [r["status"] for r in again.report] == ["cached"] * 4
    for (key, (_, pdf)), name in zip(keys.items(), names):
        assert (tmp_path / name).read_bytes() == pdf, key
    assert [p["title"] for p in corpus.papers] == [v[0]["title"] for v in keys.values()]
