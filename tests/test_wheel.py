"""The package installs as a package: a wheel built from the checkout holds every subpackage, and a
fresh virtual environment that installs it (no ``-e``) imports ``gemma_helpers.data.papers`` from it."""
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from gemma_helpers import env


def test_a_built_wheel_holds_every_subpackage_and_imports_outside_the_checkout(tmp_path):
    source = tmp_path / "source"  # a copy: setuptools writes build/ and *.egg-info beside the sources
    shutil.copytree(env.REPO_ROOT / "gemma_helpers", source / "gemma_helpers", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(env.REPO_ROOT / name, source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("gemma_lora_notebooks-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(str(p.parent.relative_to(env.REPO_ROOT)) for p in (env.REPO_ROOT / "gemma_helpers").rglob("__init__.py"))
    missing = [p for p in packages if f"{p}/__init__.py" not in names]
    assert packages and not missing, f"the wheel {wheel.name} leaves out {missing}"

    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True, timeout=120)
    python = fresh / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    # the dependencies come from this environment's site-packages (a path entry: its editable hook is not run)
    fresh_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip()
    Path(fresh_site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    probe = subprocess.run([str(python), "-c", "import gemma_helpers.data.papers as p, gemma_helpers as g; "
                            "print(g.__file__); print(len(p.__dict__))"], capture_output=True, text=True,
                           cwd=tmp_path, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.splitlines()[0].startswith(fresh_site), probe.stdout
