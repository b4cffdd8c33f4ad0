"""Command line: ``python -m gemma_helpers run NOTEBOOK [--results NAME]`` executes a notebook
headless (outputs go to ``outputs/notebooks/``, the committed file is left untouched) and
prints its results table; ``python -m gemma_helpers sync DIR`` rewrites each ``.ipynb`` from
its jupytext ``py:percent`` pair, without outputs, after stamping the setup cell template
(:mod:`gemma_helpers.setup_cell`) into each ``.py``; ``python -m gemma_helpers env`` prints the
environment report; ``python -m gemma_helpers rehearse DIR`` runs every notebook's GPU profile on CPU
stand-ins (:mod:`gemma_helpers.rehearsal`) and writes ``outputs/results/rehearsal.json``;
``python -m gemma_helpers gpu-check`` runs it on a CUDA GPU under a T4's limits on random-weight checkpoints
of the real sizes (:mod:`gemma_helpers.gpu_check`) and writes ``outputs/results/gpu_check.json``;
``python -m gemma_helpers gpu-vendor`` unpacks what that GPU machine lacks into ``vendor/gpu/``;
``python -m gemma_helpers serve FILE [--port N]`` serves a GGUF file behind llama-cpp-python's
OpenAI-compatible server on 127.0.0.1 until Ctrl-C."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import env, results


def run_notebook(path: Path, timeout: int = 1800) -> Path:
    """Execute one notebook in place with nbclient and return its path."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    started = time.time()
    print(f"executing {path} ...", flush=True)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    out = env.REPO_ROOT / "outputs" / "notebooks" / path.name
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    print(f"done in {time.time() - started:.0f} s; executed copy: {out}")
    return out


def _cells(nb) -> list[tuple]:
    """What a notebook says, cell by cell: type, source and tags (the pair-drift test compares the same)."""
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


def sync(folder: Path) -> list[Path]:
    """Stamp the setup cell into every notebook .py of folder and write its paired .ipynb."""
    import jupytext

    from .setup_cell import stamp

    written = []
    for py in sorted(folder.glob("*.py")):
        text = py.read_text(encoding="utf-8")
        if stamp(text) != text:
            py.write_text(stamp(text), encoding="utf-8")
            print(f"stamped the setup cell into {py}")
        nb = jupytext.read(py, fmt="py:percent")
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
        target = py.with_suffix(".ipynb")
        if target.exists() and _cells(jupytext.read(target)) == _cells(nb):
            continue  # unchanged: rewriting would only churn the cell ids
        jupytext.write(nb, target, fmt="ipynb")
        written.append(target)
        print(f"wrote {target}")
    return written


def main(argv: list[str] | None = None) -> int:
    """The ``python -m gemma_helpers`` command line: run, sync, serve and the other subcommands."""
    parser = argparse.ArgumentParser(prog="python -m gemma_helpers")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("notebook", type=Path)
    run.add_argument("--results", help="name of the outputs/results JSON to print afterwards")
    s = sub.add_parser("sync")
    s.add_argument("folder", type=Path)
    sub.add_parser("env")
    r = sub.add_parser("rehearse", help="every notebook's GPU profile on CPU stand-ins (gemma_helpers.rehearsal)")
    r.add_argument("folder", type=Path)
    r.add_argument("--only", nargs="*", default=(), help="notebook numbers, e.g. 03 05")
    g = sub.add_parser("gpu-check", help="every notebook's gpu profile, cut, on a CUDA GPU under a T4's limits")
    g.add_argument("--only", nargs="*", default=(), help="notebook numbers, e.g. 01 03")
    g.add_argument("--seconds", type=int, default=540, help="the whole check's time, building included")
    sub.add_parser("gpu-vendor", help="unpack the packages the GPU machine lacks into vendor/gpu/")
    srv = sub.add_parser("serve")
    srv.add_argument("gguf", type=Path)
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--n-ctx", type=int, default=2048)
    args = parser.parse_args(argv)
    if args.cmd == "run":
        run_notebook(args.notebook)
        if args.results:
            print(results.summary_table(results.load(args.results)))
    elif args.cmd == "rehearse":
        from .rehearsal import run_notebooks

        report = run_notebooks(args.folder, tuple(args.only))
        return 0 if all(e["status"] != "error" for e in report["notebooks"]) else 1
    elif args.cmd == "gpu-check":
        from .gpu_check import main as gpu_check

        return gpu_check(tuple(args.only), args.seconds)
    elif args.cmd == "gpu-vendor":
        from .gpu_check import build_vendor

        build_vendor()
    elif args.cmd == "sync":
        sync(args.folder)
    elif args.cmd == "serve":
        from .serve import serve

        with serve(args.gguf, port=args.port, n_ctx=args.n_ctx) as server:
            print(f"serving {server.model_name} at {server.base_url} (OpenAI API); Ctrl-C stops it", flush=True)
            try:
                server.process.wait()
            except KeyboardInterrupt:
                pass
    else:
        env.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
