import pytest

import gemma_helpers as gh
from gemma_helpers import env


def test_shared_pins_agree_between_local_and_colab():
    assert env.pin_mismatches() == []


def test_pin_mismatch_is_reported(tmp_path):
    local = tmp_path / "local.txt"
    colab = tmp_path / "colab.txt"
    local.write_text("transformers==5.17.0\ntrl==1.15.0\npeft==0.21.2\ndatasets==4.8.5\naccelerate==1.15.0\nbitsandbytes==0.50.2\n")
    colab.write_text("--no-deps transformers==5.16.0\ntrl==1.15.0\npeft==0.21.2\ndatasets==4.8.5\naccelerate==1.15.0\n")
    problems = env.pin_mismatches(local, colab)
    assert any("transformers" in p and "5.16.0" in p for p in problems)
    assert any(p.startswith("bitsandbytes") for p in problems)
    assert len(problems) == 2


def test_parse_pins_normalises_names_and_skips_comments(tmp_path):
    req = tmp_path / "r.txt"
    req.write_text("# comment\nUnsloth_Zoo==2026.10.9  # trailing\n'foo[bar]==1.0'\nbaz>=2\n")
    assert env.parse_pins(req) == {"unsloth-zoo": "2026.10.9", "foo": "1.0"}


def test_profile_override(monkeypatch):
    monkeypatch.setenv("GEMMA_PROFILE", "gpu")
    assert env.profile() == "gpu"
    monkeypatch.setenv("GEMMA_PROFILE", "tpu")
    with pytest.raises(ValueError, match="GEMMA_PROFILE"):
        env.profile()
    monkeypatch.delenv("GEMMA_PROFILE")
    assert env.profile() == ("gpu" if env.cuda_available() else "cpu")


def test_report_compares_installed_versions_with_pins(capsys):
    rep = env.report()
    names = {name: (have, want) for name, have, want in rep.packages}
    have, want = names["transformers"]
    assert want == "5.17.0" and have == env.installed_version("transformers")
    assert rep.off_pin == [], f"installed versions differ from requirements-local.txt: {rep.off_pin}"
    out = capsys.readouterr().out
    assert "transformers" in out and "4-bit" in out and "unsloth" in out
    if not env.cuda_available():
        assert rep.unsloth is False and rep.bf16 is False


def test_answers_stream_only_where_a_person_watches(base_model, capsys, monkeypatch):
    model, tok = base_model
    assert not gh.env.watched()  # under pytest (nbmake's kernels inherit PYTEST_CURRENT_TEST)
    question = ["What is the capital of France?"]
    quiet = gh.ask(model, tok, question, max_new_tokens=8, stream=None)
    assert capsys.readouterr().out == ""
    streamed = gh.ask(model, tok, question, max_new_tokens=8, stream=True)
    assert streamed == quiet and quiet[0] and quiet[0] in capsys.readouterr().out
    for key in ("CI", "NBMAKE", "PYTEST_CURRENT_TEST"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release")
    assert gh.env.watched()
    monkeypatch.setenv("CI", "true")
    assert not gh.env.watched()
