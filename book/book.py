"""The book: the notebooks as `make test` executed them, built into a static site with Sphinx.

``python book/book.py prepare`` copies every ``notebooks/*.ipynb`` into ``outputs/executed/`` and
stamps each copy with the commit and the UTC time of the run (notebook metadata ``gemma_run``);
``pytest --nbmake --overwrite outputs/executed`` then executes the copies in place, so the committed
notebooks keep no outputs. ``python book/book.py build`` stages ``book/`` and the executed copies into
``outputs/book-src/`` and runs Sphinx into ``outputs/book/`` (warnings are errors). It stops with a
clear message when an executed notebook is missing, unstamped, unexecuted or holds an error.
``python book/book.py serve`` serves the built site on 127.0.0.1 until Ctrl-C.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "outputs" / "executed"
STAGE = ROOT / "outputs" / "book-src"
SITE = ROOT / "outputs" / "book"
CHARTS = ROOT / "charts"
RESULTS = ROOT / "outputs" / "results"
CHART_NAME = re.compile(r"[\"'](\d\d_[A-Za-z0-9_]+\.png)[\"']")


def _rel(path: Path) -> str:
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


class BookError(SystemExit):
    """A book that cannot be built from what is on disk; the message says what to run."""


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def run_stamp() -> dict:
    """The commit the notebooks are about to run from, whether tracked files differ from it, and now (UTC)."""
    dirty = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
             if not line[3:].startswith(("outputs/", "charts/"))]  # results and charts are what a run rewrites
    now = time.time()
    return {"commit": git("rev-parse", "HEAD") or "unknown", "dirty": dirty, "started_epoch": now,
            "started": datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def prepare(names: list[str] | None = None) -> list[Path]:
    """Copy the committed notebooks (all, or those whose name starts with one of names) into outputs/executed/, stamped."""
    import nbformat

    stamp = run_stamp()
    EXECUTED.mkdir(parents=True, exist_ok=True)
    if not names:  # a whole run: no executed copy of an earlier run stays beside it
        for old in EXECUTED.glob("*.ipynb"):
            old.unlink()
    written = []
    for src in sorted(NOTEBOOKS.glob("*.ipynb")):
        if names and not src.name.startswith(tuple(names)):
            continue
        nb = nbformat.read(src, as_version=4)
        nb.metadata["gemma_run"] = stamp
        out = EXECUTED / src.name
        nbformat.write(nb, out)
        written.append(out)
    print(f"book: {len(written)} notebook(s) copied to {_rel(EXECUTED)} for the run of "
          f"{stamp['commit'][:10]}{' (uncommitted changes)' if stamp['dirty'] else ''}")
    return written


def _stamp_line(stamp: dict) -> str:
    commit = stamp.get("commit", "unknown")
    dirty = stamp.get("dirty") or []
    changed = (f" plus uncommitted changes to {len(dirty)} tracked file(s) ({', '.join(dirty[:4])}"
               f"{', ...' if len(dirty) > 4 else ''})") if dirty else ""
    return f"commit `{commit[:10]}`{changed}, run started {stamp.get('started', 'at an unknown time')}"


def closing_output(nb) -> str:
    """The notebook's closing verdict: the last line printed by its last code cell that printed something,
    leaving out the optional share-it cells at the end (``push_to_hub``, which only say they were skipped)."""
    for cell in reversed(nb.cells):
        if cell.cell_type != "code" or "push_to_hub" in cell.source:
            continue
        text = "".join(o.get("text", "") if o.get("output_type") == "stream" and o.get("name") == "stdout"
                       else o.get("data", {}).get("text/plain", "") if o.get("output_type") == "execute_result" else ""
                       for o in cell.get("outputs", []))
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return ""


def check_executed(names: list[str], allow_missing: bool = False) -> dict[str, object]:
    """Read outputs/executed/<name>.ipynb for each committed notebook; stop on any that is not a finished, stamped run."""
    import nbformat

    found, problems = {}, []
    for name in names:
        path = EXECUTED / f"{name}.ipynb"
        if not path.exists():
            if not allow_missing:
                problems.append(f"{_rel(path)} is missing")
            continue
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
        errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
        if "gemma_run" not in nb.metadata:
            problems.append(f"{_rel(path)} carries no run stamp (not written by `make notebooks`)")
        elif errors:
            problems.append(f"{_rel(path)} holds an error: {errors[0].get('ename')}: {errors[0].get('evalue')}")
        elif any(c.get("execution_count") is None for c in code):
            if allow_missing:
                continue
            problems.append(f"{_rel(path)} was not executed to the end (a code cell has no execution count)")
        elif not closing_output(nb):
            problems.append(f"{_rel(path)} printed nothing (no closing verdict)")
        else:
            found[name] = nb
    if problems:
        raise BookError("book: cannot build from the executed notebooks:\n  " + "\n  ".join(problems)
                        + "\nRun `make notebooks` (or `make test`) first: it executes every notebook into outputs/executed/.")
    return found


def _chart_cells(nb, started: float, problems: list[str], used: set[str]) -> None:
    """After each code cell that writes a chart into charts/, a markdown cell showing that chart (the run's own file)."""
    import nbformat

    cells = []
    for cell in nb.cells:
        cells.append(cell)
        if cell.cell_type != "code":
            continue
        for chart in dict.fromkeys(CHART_NAME.findall(cell.source)):
            path = CHARTS / chart
            if not path.exists():
                problems.append(f"charts/{chart}, written by a cell of {nb.metadata['gemma_name']}, is missing")
                continue
            if path.stat().st_mtime < started:
                problems.append(f"charts/{chart} is older than the run of {nb.metadata['gemma_name']} (not written by it)")
                continue
            used.add(chart)
            cells.append(nbformat.v4.new_markdown_cell(f"```{{figure}} ../charts/{chart}\n:alt: {chart}\n\n"
                                                       f"`charts/{chart}`, written by the cell above in this run\n```"))
    nb.cells = cells


def _results_files() -> str:
    """A table of outputs/results/*.json: which run each file comes from (this book's run, or the commit that stored it)."""
    rows = ["| file | from |", "| --- | --- |"]
    for path in sorted(RESULTS.glob("*.json")):
        rel = _rel(path)
        tracked = bool(git("ls-files", rel))
        changed = tracked and bool(git("status", "--porcelain", "--", rel))
        if tracked and not changed:
            origin = git("log", "-1", "--format=committed in `%h` (%cs), unchanged", "--", rel)
        else:
            written = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            origin = f"this machine's latest run, written {written}" + (
                " (differs from the committed file)" if changed else " (not committed)")
        rows.append(f"| `{rel}` | {origin} |")
    return "\n".join(rows) + "\n"


def stage(allow_missing: bool = False) -> Path:
    """outputs/book-src/: book/'s pages, the executed notebooks (stamped, charts inlined) and the run's charts."""
    import nbformat

    names = [p.stem for p in sorted(NOTEBOOKS.glob("*.ipynb"))]
    executed = check_executed(names, allow_missing)
    if STAGE.exists():
        shutil.rmtree(STAGE)
    shutil.copytree(BOOK, STAGE, ignore=shutil.ignore_patterns("*.py", "tests", "__pycache__"))
    (STAGE / "notebooks").mkdir()
    problems, used = [], set()
    for name in names:
        out = STAGE / "notebooks" / f"{name}.ipynb"
        if name not in executed:  # development only (--allow-missing): a page that says so
            nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
                f"# {name}\n\nNot executed in this build (`book.py build --allow-missing`); `make book` refuses to build without it.")])
            nbformat.write(nb, out)
            continue
        nb = executed[name]
        stamp = nb.metadata["gemma_run"]
        nb.metadata["gemma_name"] = name
        started = stamp.get("started_epoch", 0.0)
        _chart_cells(nb, started, problems, used)
        note = nbformat.v4.new_markdown_cell(
            "```{admonition} The run on this page\n:class: note\n"
            f"Every output below comes from one headless execution by `make test` (nbmake): {_stamp_line(stamp)}, "
            f"on the CPU profile. The committed notebook, `notebooks/{name}.ipynb`, stores no outputs.\n```")
        nb.cells.insert(1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0, note)
        nbformat.write(nb, out)
    if problems:
        raise BookError("book: " + "\n  ".join(problems) + "\nRerun the notebook (`make notebooks`) so its charts come from its run.")
    (STAGE / "charts").mkdir()
    for chart in sorted(used):
        shutil.copy2(CHARTS / chart, STAGE / "charts" / chart)
    for chart in CHARTS.glob("bench_*.png"):  # the training benchmark's, for the results page (make bench writes them)
        shutil.copy2(chart, STAGE / "charts" / chart.name)
    (STAGE / "_results_files.md").write_text(_results_files(), encoding="utf-8")
    return STAGE


def build(allow_missing: bool = False) -> Path:
    """Stage the sources and run Sphinx (warnings are errors) into outputs/book/; returns the site's folder."""
    started = time.time()
    stage(allow_missing)
    if SITE.exists():
        shutil.rmtree(SITE)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-E", "-q", "-W", "--keep-going", "-c", str(BOOK),
           str(STAGE), str(SITE)]
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise BookError("book: Sphinx reported the warnings or errors above; the book was not built")
    print(f"book: built {_rel(SITE)}/index.html in {time.time() - started:.0f} s")
    return SITE


def serve(port: int = 8000) -> None:
    """Serve the built site on 127.0.0.1 until Ctrl-C."""
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SITE))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        print(f"book: http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
        server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="book/book.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="copy the committed notebooks into outputs/executed/, stamped with this run")
    p.add_argument("names", nargs="*", help="only notebooks whose name starts with one of these (e.g. 00 02)")
    b = sub.add_parser("build", help="build outputs/book/ from outputs/executed/")
    b.add_argument("--allow-missing", action="store_true", help="development: a placeholder page for a notebook not executed")
    s = sub.add_parser("serve", help="serve outputs/book/ on 127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args.names)
    elif args.cmd == "build":
        build(args.allow_missing)
    else:
        serve(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
