"""Command line: ``python -m gemma_helpers run NOTEBOOK [--results NAME]`` executes a notebook
headless (outputs go to ``outputs/notebooks/``, the committed file is left untouched) and
prints its results table; ``python -m gemma_helpers sync DIR`` rewrites each ``.ipynb`` from
its jupytext ``py:percent`` pair, without outputs; ``python -m gemma_helpers env`` prints the
environment report."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import env, results


def run_notebook(path: Path, timeout: int = 1800) -> Path:
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


def sync(folder: Path) -> list[Path]:
    import jupytext

    written = []
    for py in sorted(folder.glob("*.py")):
        nb = jupytext.read(py, fmt="py:percent")
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
        target = py.with_suffix(".ipynb")
        jupytext.write(nb, target, fmt="ipynb")
        written.append(target)
        print(f"wrote {target}")
    return written


def summary_table(data: dict) -> str:
    """The scalar figures of a results file: a row per figure, a column for the top level and each nested run."""
    runs = {"result": data, **{k: v for k, v in data.items() if isinstance(v, dict)}}
    rows: dict[str, dict] = {}
    for run, values in runs.items():
        for key, value in values.items():
            if isinstance(value, (int, float, bool)):
                rows.setdefault(key, {})[run] = value
    return results.table(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gemma_helpers")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("notebook", type=Path)
    run.add_argument("--results", help="name of the outputs/results JSON to print afterwards")
    s = sub.add_parser("sync")
    s.add_argument("folder", type=Path)
    sub.add_parser("env")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        run_notebook(args.notebook)
        if args.results:
            print(summary_table(results.load(args.results)))
    elif args.cmd == "sync":
        sync(args.folder)
    else:
        env.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
