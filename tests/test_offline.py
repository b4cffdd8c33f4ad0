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
