"""Every chart: one function per chart, each saving a PNG under ``charts/`` and returning its path."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from .env import REPO_ROOT

CHARTS = REPO_ROOT / "charts"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, name: str, charts_dir: str | Path | None) -> Path:
    out = Path(charts_dir or CHARTS)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def loss_curves(histories: Mapping[str, Sequence[dict]], name: str, title: str = "Training loss",
                charts_dir: str | Path | None = None) -> Path:
    """One line per run: loss against optimizer step (from ``TrainResult.history``)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, history in histories.items():
        points = [(h["step"], h["loss"]) for h in history if "loss" in h]
        if points:
            steps, losses = zip(*points)
            ax.plot(steps, losses, marker=".", label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean per-token loss (labelled tokens)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, name, charts_dir)


def grouped_bars(groups: Mapping[str, Mapping[str, float]], name: str, title: str, ylabel: str,
                 charts_dir: str | Path | None = None, ylim: tuple[float, float] | None = None) -> Path:
    """``{series: {metric: value}}`` as grouped bars, value printed on each bar."""
    plt = _plt()
    series = list(groups)
    metrics = list(next(iter(groups.values())))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(metrics)), 4))
    for i, s in enumerate(series):
        xs = [j + i * width for j in range(len(metrics))]
        values = [groups[s][m] for m in metrics]
        bars = ax.bar(xs, values, width, label=s)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(metrics))], metrics)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.legend()
    return _save(fig, name, charts_dir)


def metric_panels(rows: Sequence[Mapping], metrics: Mapping[str, str], name: str, title: str,
                  label_key: str = "name", charts_dir: str | Path | None = None) -> Path:
    """One panel per metric (``{key: axis label}``), one bar per row (``row[label_key]``), value on each bar."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4), squeeze=False)
    labels = [str(r[label_key]) for r in rows]
    colors = [f"C{i}" for i in range(len(rows))]
    for ax, (key, axis_label) in zip(axes[0], metrics.items()):
        values = [float(r[key]) if r.get(key) is not None else 0.0 for r in rows]
        bars = ax.bar(range(len(rows)), values, color=colors)
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], fontsize=8)
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right")
        ax.set_title(axis_label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return _save(fig, name, charts_dir)
