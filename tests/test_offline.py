"""gemma_helpers.offline: the stand-ins themselves (the code they stand in for is tested with them in
test_download, test_pdf, test_papers and test_frames)."""
import urllib.error
import urllib.request

import pytest

from gemma_helpers import offline
from gemma_helpers.data import frames


def test_loopback_server_listens_on_127_0_0_1_only_and_serves_what_it_was_given():
    with offline.LoopbackServer({"a.pdf": b"%PDF-1.4 x %%EOF"}, {"b": "404"}) as server:
        host, _ = server._server.server_address
        assert host == "127.0.0.1" and server.url("a.pdf").startswith("http://127.0.0.1:")
        assert urllib.request.urlopen(server.url("a.pdf"), timeout=5).read() == b"%PDF-1.4 x %%EOF"
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(server.url("b"), timeout=5)
        assert server.hits == {"a.pdf": 1, "b": 1}
    with pytest.raises(ValueError, match="unknown faults"):
        offline.LoopbackServer({}, {"x": "no_such_fault"})


def test_synthetic_clips_write_every_action_as_a_decodable_clip(tmp_path):
    clips = offline.synthetic_clips(tmp_path, per_action=1, n_frames=4, size=32)
    assert [action for _, action in clips] == list(frames.ACTIONS)
    for path, _ in clips:
        assert len(frames.sample_frames(path, n=4, size=32)) == 4


def test_notebook_01s_offline_papers_report_every_fault_and_keep_every_good_paper_across_a_rerun(tmp_path):
    from gemma_helpers.data import papers as gp

    server, listed, expected = offline.sample_papers()
    try:
        first = gp.collect(listed, tmp_path, progress=False, retries=2, backoff_s=0.05)
        again = gp.collect(listed, tmp_path, progress=False, retries=2, backoff_s=0.05)  # a rerun of the cell
    finally:
        server.stop()
    assert {r["key"]: r["status"] for r in first.report} == expected
    flaky = [r for r in first.report if r["attempts"] > 1]
    assert [r["status"] for r in flaky] == ["ok"]  # the server that answered 500 once was retried
    good = [k for k, status in expected.items() if status == "ok"]
    assert sorted(p["key"] for p in first.papers) == sorted(good) == sorted(p["key"] for p in again.papers)
    assert {r["key"]: r["status"] for r in again.report if r["key"] in good} == dict.fromkeys(good, "cached")
