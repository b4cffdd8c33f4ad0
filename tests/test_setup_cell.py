"""The setup cell: one template, the same in every notebook; on Colab it stops with what to set."""
import subprocess
import sys
from pathlib import Path

import pytest

from gemma_helpers import env
from gemma_helpers.__main__ import sync
from gemma_helpers.setup_cell import TEMPLATE, setup_cell, stamp

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("0*.py"))


def test_there_are_seven_notebooks():
    assert len(NOTEBOOKS) == 7


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_setup_cell_is_the_template(py):
    assert setup_cell(py.read_text(encoding="utf-8")) == TEMPLATE, f"{py.name}: its setup cell differs; run `make sync`"


@pytest.mark.parametrize("path", [p for py in NOTEBOOKS for p in (py, py.with_suffix(".ipynb"))], ids=lambda p: p.name)
def test_no_placeholder_url(path):
    assert "your-account" not in path.read_text(encoding="utf-8")


def test_a_changed_copy_is_caught_and_sync_restores_it(tmp_path):
    original = NOTEBOOKS[3].read_text(encoding="utf-8")
    edited = original.replace('REPO_URL = ""', 'REPO_URL = "https://example.org/x.git"', 1)
    assert edited != original and setup_cell(edited) != TEMPLATE
    (tmp_path / NOTEBOOKS[3].name).write_text(edited, encoding="utf-8")
    sync(tmp_path)
    restored = (tmp_path / NOTEBOOKS[3].name).read_text(encoding="utf-8")
    assert restored == original == stamp(original)  # the rest of the notebook is untouched
    assert (tmp_path / NOTEBOOKS[3].name).with_suffix(".ipynb").is_file()


def _run_cell(monkeypatch, colab: bool, calls: list):
    """Execute the template as a notebook would; ``subprocess.run`` records instead of running pip."""
    real_run = subprocess.run

    def run(cmd, *a, **kw):
        calls.append(cmd)
        if cmd[:2] == ["git", "clone"]:
            return real_run(cmd, *a, **kw)
        raise AssertionError(f"the cell ran {cmd}")

    monkeypatch.setattr(subprocess, "run", run)
    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    namespace = {}
    exec(compile(TEMPLATE, "setup-cell", "exec"), namespace)
    return namespace


def test_locally_the_cell_only_imports_and_reports(monkeypatch, capsys):
    calls = []
    namespace = _run_cell(monkeypatch, colab=False, calls=calls)
    assert calls == [] and namespace["gh"].__name__ == "gemma_helpers"
    assert "transformers" in capsys.readouterr().out  # the environment report


@pytest.mark.skipif(Path("/content/gemma-lora-notebooks").exists(), reason="a clone is already there")
def test_on_colab_without_url_it_says_what_to_set(monkeypatch):
    monkeypatch.delenv("GEMMA_REPO_URL", raising=False)
    calls = []
    with pytest.raises(SystemExit, match=r"No repository URL\. Set REPO_URL .*GEMMA_REPO_URL"):
        _run_cell(monkeypatch, colab=True, calls=calls)
    assert calls == []


@pytest.mark.skipif(Path("/content/gemma-lora-notebooks").exists(), reason="a clone is already there")
def test_on_colab_a_failed_clone_stops_with_the_url_and_git_reason(monkeypatch, tmp_path):
    missing = tmp_path / "no-such-repo"
    monkeypatch.setenv("GEMMA_REPO_URL", str(missing))
    calls = []
    with pytest.raises(SystemExit, match=rf"git clone {missing} failed: .*(does not exist|not a git repository|not found).*\nSet REPO_URL"):
        _run_cell(monkeypatch, colab=True, calls=calls)
    assert [c[:2] for c in calls] == [["git", "clone"]]  # stopped before any pip call


def test_colab_install_keeps_installed_torch_and_runs_once(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(env, "kept_versions", lambda names=env.KEEP: {"torch": "2.9.0+cu126", "torchaudio": "2.9.0+cu126"})
    env.colab_install(tmp_path)
    assert (tmp_path / "colab-constraints.txt").read_text() == "torch==2.9.0+cu126\ntorchao==0.14.1\ntorchaudio==2.9.0+cu126\n"
    assert calls == [[sys.executable, "-m", "pip", *args] for args in env.colab_pip_calls(tmp_path, tmp_path / "colab-constraints.txt")]
    assert calls[0][-2:] == ["-r", str(tmp_path / "requirements-colab.txt")] and "-c" in calls[0]
    env.colab_install(tmp_path)  # a second run of the cell installs nothing
    assert len(calls) == 2


def test_ensure_installs_an_extra_on_colab_only(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw["env"])))
    monkeypatch.setattr(env.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(env, "in_colab", lambda: False)
    with pytest.raises(ImportError, match="llama_cpp is not installed; run `make setup`"):
        env.ensure("llama_cpp")
    monkeypatch.setattr(env, "in_colab", lambda: True)
    env.ensure("llama_cpp")
    (cmd, environ), = calls
    pins = env.parse_pins(env.REPO_ROOT / "requirements-local.txt")
    assert f"llama-cpp-python=={pins['llama-cpp-python']}" in cmd and f"openai=={pins['openai']}" in cmd  # serve + client
    assert "-DLLAVA_BUILD=OFF" in environ["CMAKE_ARGS"]
    with pytest.raises(KeyError, match="no install known"):
        env.ensure("tensorflow")


def test_ensure_does_nothing_when_importable(monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **kw: pytest.fail("pip was called"))
    env.ensure("json")


def _fake_drive(monkeypatch, mounted: list):
    """``google.colab`` with a ``drive.mount`` that records the mount point (Colab's asks for consent)."""
    colab = type(sys)("google.colab")
    colab.drive = type(sys)("google.colab.drive")
    colab.drive.mount = lambda point, **kw: mounted.append(point)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.drive", colab.drive)


def test_outputs_on_drive_off_colab_changes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(env, "in_colab", lambda: False)
    (tmp_path / "outputs").mkdir()
    assert env.keep_outputs_on_drive(tmp_path, tmp_path / "drive") == tmp_path / "outputs"
    assert not (tmp_path / "outputs").is_symlink() and not (tmp_path / "drive").exists()
    assert not env.resume_training(tmp_path / "outputs")
    assert "not on Colab" in capsys.readouterr().out


def test_outputs_on_drive_links_keeps_what_was_there_and_turns_resume_on(tmp_path, monkeypatch):
    mounted = []
    _fake_drive(monkeypatch, mounted)
    repo, drive = tmp_path / "repo", tmp_path / "MyDrive" / "gemma-lora-notebooks"
    (repo / "outputs" / "results").mkdir(parents=True)
    (repo / "outputs" / "results" / "03_xylandia.json").write_text("committed")
    (repo / "outputs" / "results" / "01_papers.json").write_text("committed")
    (drive / "outputs" / "results").mkdir(parents=True)
    (drive / "outputs" / "results" / "03_xylandia.json").write_text("from the last session")
    assert not env.resume_training(repo / "outputs")
    env.keep_outputs_on_drive(repo, drive)
    assert mounted == ["/content/drive"]
    assert (repo / "outputs").is_symlink() and (repo / "outputs").resolve() == (drive / "outputs").resolve()
    assert (drive / "outputs" / "results" / "03_xylandia.json").read_text() == "from the last session"  # not overwritten
    assert (drive / "outputs" / "results" / "01_papers.json").read_text() == "committed"  # copied where missing
    assert (repo / "outputs.before-drive" / "results" / "01_papers.json").is_file()  # the local folder kept
    assert env.resume_training(repo / "outputs")
    env.keep_outputs_on_drive(repo, drive)  # the setup cell run again: the same link, nothing else
    assert (repo / "outputs").resolve() == (drive / "outputs").resolve()


def test_outputs_linked_elsewhere_are_not_taken_over(tmp_path, monkeypatch):
    _fake_drive(monkeypatch, [])
    (tmp_path / "mine").mkdir()
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "outputs").symlink_to(tmp_path / "mine")
    with pytest.raises(FileExistsError, match="already links to"):
        env.keep_outputs_on_drive(tmp_path / "repo", tmp_path / "drive")
    assert (tmp_path / "repo" / "outputs").resolve() == (tmp_path / "mine").resolve()
