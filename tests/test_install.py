"""The Colab install resolves against the torch Colab ships and keeps it (pip --dry-run --report).

pip reads each candidate's metadata from the index (PEP 658), so nothing is built or downloaded
in full. Cost measured here: 67 s at load average 3.5 on the 2 cores, 330 s at load 10 (about 36 s
of CPU either way); marked ``network`` (``-m "not network"`` skips them), `make test` runs them.
The constraint file is written by the same function and the pip call is the one the setup cell
makes (``env.colab_pip_calls``); torch, torchvision and torchaudio are named as requirements so the
resolver must fit them in, as on Colab where they are installed."""
import json
import subprocess
import sys

import pytest

from gemma_helpers import env

# A Colab-like CUDA torch: the pairing of 2.9 (on PyPI for this Python). Without the constraint pip
# would replace it by torch 2.14.1 with its nvidia-*-cu13 wheels and leave torchaudio stale.
COLAB_TORCH = {"torch": "2.9.1", "torchvision": "0.24.1", "torchaudio": "2.9.1"}


def _dry_run(repo, tmp_path):
    constraints = env.write_constraints(tmp_path / "colab-constraints.txt", env.colab_constraints(COLAB_TORCH))
    report = tmp_path / "report.json"
    args = env.colab_pip_calls(repo, constraints)[0]
    cmd = [sys.executable, "-m", "pip", *args, "--dry-run", "--ignore-installed", "--report", str(report), *COLAB_TORCH]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    resolved = {}
    if done.returncode == 0:
        resolved = {env.normalise(i["metadata"]["name"]): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    return done, resolved


@pytest.mark.network
def test_colab_install_resolves_and_keeps_colab_torch(tmp_path):
    done, resolved = _dry_run(env.REPO_ROOT, tmp_path)
    assert done.returncode == 0, f"pip could not resolve requirements-colab.txt with {COLAB_TORCH}:\n{done.stderr[-3000:]}"
    replaced = {n: resolved.get(n) for n, v in COLAB_TORCH.items() if resolved.get(n) != v}
    assert replaced == {}, f"the install would replace Colab's {replaced} (Colab has {COLAB_TORCH})"
    pins = env.parse_pins(env.REPO_ROOT / "requirements-colab.txt")
    off = {n: (v, resolved.get(n)) for n, v in pins.items() if resolved.get(n) != v}
    assert off == {}, f"pinned vs resolved: {off}"
    assert "unsloth" in pins and "llama-cpp-python" not in resolved  # built by notebook 05 alone
    # torchao (pulled in by unsloth_zoo) must be the build for Colab's torch: 0.18 fails to import on 2.9
    assert resolved.get("torchao") in (None, env.TORCHAO_FOR_TORCH[COLAB_TORCH["torch"]]), resolved.get("torchao")
    # Gemma 3n's vision tower (MobileNetV5) needs timm >= 1.0.16; Colab's preinstalled one may be older
    assert "timm" in pins and resolved.get("timm") == pins["timm"]


@pytest.mark.network
def test_an_unresolvable_pin_fails_the_check(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    text = (env.REPO_ROOT / "requirements-colab.txt").read_text()
    assert "\ntransformers==" in text
    (repo / "requirements-colab.txt").write_text(text.replace("\ntransformers==", "\ntransformers==0.0.0.dev0  # was ", 1))
    done, _ = _dry_run(repo, tmp_path)
    assert done.returncode != 0
    assert "transformers==0.0.0.dev0" in done.stderr


def test_the_constraint_file_names_only_what_is_installed():
    kept = env.kept_versions()
    assert set(kept) <= set(env.KEEP) and kept.get("torch") == env.installed_version("torch")


def test_the_constraints_add_the_torchao_built_for_colabs_torch():
    assert env.colab_constraints({"torch": "2.9.1+cu126", "torchvision": "0.24.1"}) == {
        "torch": "2.9.1+cu126", "torchvision": "0.24.1", "torchao": "0.15.0"}
    assert env.colab_constraints({"torch": "2.9.0"})["torchao"] == "0.14.1"
    assert "torchao" not in env.colab_constraints({"torch": "2.11.0"})  # torchao checks its own minimum there
    with pytest.raises(RuntimeError, match="torch 2.8.0: no torchao known"):
        env.colab_constraints({"torch": "2.8.0"})
