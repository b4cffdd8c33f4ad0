"""Results files: ``outputs/results/<name>.json``, written atomically, and a printable table."""
from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

from .env import REPO_ROOT, write_whole

RESULTS = REPO_ROOT / "outputs" / "results"


def save(name: str, data: Mapping, results_dir: str | Path | None = None) -> Path:
    """Write a notebook's results as outputs/results/<name>.json (atomically) and return the path.

    Notebook 01, "Results"; Notebook 02, "Results"; Notebook 03, "Results" (also notebooks 04, 05, 06)."""
    out = Path(results_dir or RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    return write_whole(path, json.dumps(data, indent=2, default=str))


def expect(condition: bool, message: str) -> None:
    """A notebook's check of what training achieved: raises ``AssertionError(message)`` when it fails.
    A profile whose runs cannot meet an outcome bar (:data:`gemma_helpers.env.OUTCOMES_CHECKED`: the
    ``rehearse`` profile's random-weight stand-ins, trained 2 steps) has the verdict printed as not
    applicable instead, on a line of its own.

    Notebook 01, "Results"; Notebook 02, "Results"; Notebook 03, "Before training" (also notebooks 05, 06)."""
    from .env import OUTCOMES_CHECKED, profile

    if condition:
        return
    name = profile()
    if not OUTCOMES_CHECKED[name]:
        print(f"outcome check not applicable in the {name} profile (its models learn nothing): {message}", flush=True)
        return
    raise AssertionError(message)


@contextmanager
def recorded(results: dict, name: str):
    """Run a ``with`` block whose failure is a result, not a crash (notebook 06, section 2: the optional
    Keras stack): an exception that stops the block is stored as ``results[name] = {"error": "Type:
    message"}`` and printed, and the notebook goes on. ``KeyboardInterrupt`` still stops it.

    Notebook 06, section 2."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - whatever stops the block is recorded, not faked
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"{name} could not run: {results[name]['error']}")


def load(name: str, results_dir: str | Path | None = None) -> dict:
    """Read outputs/results/<name>.json."""
    return json.loads((Path(results_dir or RESULTS) / f"{name}.json").read_text())


def table(rows: Mapping[str, Mapping[str, object]]) -> str:
    """``{row: {column: value}}`` as a fixed-width text table.

    Notebook 01, sections 3, 6, 7 and 8; Notebook 02, sections 6 and 7; Notebook 03, sections 1 and 2 (also notebooks
    05, 06)."""
    columns: list[str] = []
    for values in rows.values():
        columns += [c for c in values if c not in columns]
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    width = max([len(r) for r in rows] + [4])
    cw = {c: max(len(c), *(len(fmt(v.get(c, ""))) for v in rows.values())) for c in columns}
    lines = [" " * width + "  " + "  ".join(c.rjust(cw[c]) for c in columns)]
    for r, values in rows.items():
        lines.append(r.ljust(width) + "  " + "  ".join(fmt(values.get(c, "")).rjust(cw[c]) for c in columns))
    return "\n".join(lines)


def summary_table(data: dict) -> str:
    """The scalar figures of a results file: a row per figure, a column for the top level and each nested run.

    Notebook 04, "Results"; Notebook 06, "Results"."""
    runs = {"result": data, **{k: v for k, v in data.items() if isinstance(v, dict)}}
    rows: dict[str, dict] = {}
    for run, values in runs.items():
        for key, value in values.items():
            if isinstance(value, (int, float, bool)):
                rows.setdefault(key, {})[run] = value
    return table(rows)
