"""Every chart: one function per chart, each saving a PNG under ``charts/`` and returning its path."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from .env import REPO_ROOT, SEED

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
    """One line per run: loss against optimizer step (from ``TrainResult.history``).

    Notebook 02, section 6; Notebook 03, section 2; Notebook 04, "Ablation: the same adapter, frames from other
    clips" (also notebook 06)."""
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
    """``{series: {metric: value}}`` as grouped bars, value printed on each bar; a value of None (a
    figure that does not exist, such as the retention of controls the model never knew) has no bar.

    Notebook 03, section 2; Notebook 04, "Ablation: the same adapter, frames from other clips"; Notebook 06, "Answers
    side by side"."""
    plt = _plt()
    series = list(groups)
    metrics = list(next(iter(groups.values())))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(metrics)), 4))
    for i, s in enumerate(series):
        xs = [j + i * width for j in range(len(metrics))]
        values = [groups[s][m] for m in metrics]
        bars = ax.bar(xs, [math.nan if v is None else v for v in values], width, label=s)
        ax.bar_label(bars, labels=["n/a" if v is None else f"{v:.2f}" for v in values], fontsize=8)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(metrics))], metrics)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.legend()
    return _save(fig, name, charts_dir)


def bar_panels(panels: Mapping[str, Mapping[str, Mapping[str, float]]], name: str, title: str = "",
               ylim: tuple[float, float] | None = None, charts_dir: str | Path | None = None) -> Path:
    """One panel per ``{panel: {series: {group: value}}}``: grouped bars (series side by side per group).

    Notebook 01, section 8."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for ax, (panel, groups) in zip(axes[0], panels.items()):
        series = list(groups)
        keys = list(next(iter(groups.values())))
        width = 0.8 / len(series)
        for i, s in enumerate(series):
            values = [groups[s][k] for k in keys]
            bars = ax.bar([j + i * width for j in range(len(keys))], values, width, label=s, color=f"C{i}")
            ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7)
        ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(keys))], keys)
        ax.set_title(panel, fontsize=10)
        if ylim:
            ax.set_ylim(*ylim)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, name, charts_dir)


def metric_panels(rows: Sequence[Mapping], metrics: Mapping[str, str], name: str, title: str,
                  label_key: str = "name", charts_dir: str | Path | None = None) -> Path:
    """One panel per metric (``{key: axis label}``), one bar per row (``row[label_key]``), value on each bar.

    Notebook 05, section 4."""
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


def train_val_loss(history: Sequence[dict], eval_history: Sequence[dict], name: str, title: str = "",
                   charts_dir: str | Path | None = None) -> Path:
    """Training loss per step and validation loss at each evaluation (``TrainResult.history`` /
    ``.eval_history``); the adapter kept (the last evaluation entry) is marked.

    Notebook 01, section 7."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    if train:
        ax.plot(*zip(*train), marker=".", alpha=0.7, label="train")
    during = [(h["step"], h["eval_loss"]) for h in eval_history if not h.get("final")]
    if during:
        ax.plot(*zip(*during), marker="o", label="validation")
    final = [h for h in eval_history if h.get("final")]
    if final:
        ax.axhline(final[-1]["eval_loss"], color="C1", linestyle=":",
                   label=f"validation, adapter kept ({final[-1]['eval_loss']:.3f})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean per-token loss (answer tokens)")
    ax.set_title(title or "Train and validation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, name, charts_dir)


def word_count_bars(words: Mapping[str, int], groups: Mapping[str, str], name: str, title: str = "Words per paper",
                    charts_dir: str | Path | None = None) -> Path:
    """One bar per paper (``{paper: word count}``), coloured by its group (``{paper: field}``).

    Notebook 01, section 3."""
    plt = _plt()
    keys = sorted(words, key=lambda k: (groups.get(k, ""), k))
    kinds = sorted({groups.get(k, "") for k in keys})
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(keys) + 2), 4.5))
    bars = ax.bar(range(len(keys)), [words[k] for k in keys], color=[f"C{kinds.index(groups.get(k, ''))}" for k in keys])
    ax.bar_label(bars, fontsize=7)
    ax.set_xticks(range(len(keys)), keys, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("words after cleaning")
    ax.set_title(title)
    handles = [plt.Rectangle((0, 0), 1, 1, color=f"C{i}") for i in range(len(kinds))]
    ax.legend(handles, kinds, title="field")
    return _save(fig, name, charts_dir)


def word_clouds(freqs: Mapping[str, Mapping[str, int]], name: str, cols: int = 4, max_words: int = 60,
                seed: int = SEED, charts_dir: str | Path | None = None) -> Path:
    """A grid of word clouds, one per ``{title: {word: count}}`` (the wordcloud package).

    Notebook 01, section 3."""
    from wordcloud import WordCloud

    plt = _plt()
    items = [(t, f) for t, f in freqs.items() if f]
    if not items:
        raise ValueError("no words to draw")
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, f) in zip(axes.flat, items):
        cloud = WordCloud(width=500, height=300, background_color="white", max_words=max_words, random_state=seed,
                          collocations=False).generate_from_frequencies(dict(f))
        ax.imshow(cloud, interpolation="bilinear")
        ax.set_title(title, fontsize=9)
    return _save(fig, name, charts_dir)


def memory_bars(report: Mapping[str, float], name: str, title: str = "Memory",
                charts_dir: str | Path | None = None) -> Path:
    """The parts of :func:`gemma_helpers.memory.memory_monitor`'s report as horizontal bars (MiB).

    Notebook 01, section 7."""
    plt = _plt()
    parts = {"weights": "weights_mb", "adapter parameters": "adapter_params_mb", "optimizer state": "optimizer_state_mb",
             "gradients": "gradients_mb", "activations and temporaries": "activations_mb",
             "training peak (total)": "training_peak_mb"}
    shown = {label: float(report[key]) for label, key in parts.items() if report.get(key) is not None}
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bars = ax.barh(list(shown)[::-1], list(shown.values())[::-1], color="#4c72b0")
    ax.bar_label(bars, labels=[f"{v:,.1f}" for v in list(shown.values())[::-1]], fontsize=8)
    ax.set_xlabel(f"MiB ({report.get('device', '')})")
    ax.set_title(title)
    return _save(fig, name, charts_dir)


# --- Persian (right-to-left) text --------------------------------------------------------------
# matplotlib draws characters left to right, unshaped. rtl() joins Arabic-script letters into
# their contextual forms (arabic-reshaper) and puts them in visual order (python-bidi); DejaVu
# Sans, matplotlib's own default font, has the Persian letters and their presentation forms.

_STOPWORDS = (
    "و در به از که این آن را با است برای یا تا هم می هر اگر چه بر بی نیز شود شده کنید کند کنیم کرد "
    "دارد دارند باشد هستند بود ها های یک دو سه ای اما پس چون نه ما من تو او شما آنها آن‌ها همه خود "
    "بله هست دهید می‌شود می‌کند می‌کنند بسیار کمی حتی روی بین درباره کنم بدهید"
)
PERSIAN_STOPWORDS = frozenset(_STOPWORDS.split())


def rtl(text: str) -> str:
    """Persian / Arabic text shaped and reordered so matplotlib draws it right.

    Notebook 02, section 6."""
    import arabic_reshaper
    from bidi.algorithm import get_display

    return get_display(arabic_reshaper.reshape(text))


def font_path() -> str:
    """DejaVu Sans as matplotlib ships it (offline, has the Persian glyphs)."""
    from matplotlib import font_manager

    return font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"), fallback_to_default=False)


def token_histogram(lengths: Sequence[int], stats: Mapping[str, float], name: str, title: str = "",
                    xlabel: str = "tokens per conversation", charts_dir: str | Path | None = None) -> Path:
    """Histogram of token lengths with the mean, p50 and p95 drawn as lines (titles may be Persian).

    Notebook 02, section 2."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(lengths, bins=min(30, max(5, len(lengths) // 3)), color="#4c72b0", alpha=0.8)
    for key, style in (("mean", "-"), ("p50", "--"), ("p95", ":")):
        if key in stats:
            ax.axvline(stats[key], color="black", linestyle=style, label=f"{key} {stats[key]:.0f}")
    ax.set_xlabel(rtl(xlabel))
    ax.set_ylabel(rtl("تعداد گفتگو") + " (conversations)")
    ax.set_title(rtl(title) if title else "")
    ax.legend()
    return _save(fig, name, charts_dir)


def persian_words(texts: Sequence[str], stopwords=PERSIAN_STOPWORDS, min_len: int = 2) -> dict[str, int]:
    """Word counts of Persian text (letters and half-spaces), stopwords and short words left out."""
    import re
    from collections import Counter

    counts: Counter = Counter()
    for text in texts:
        for word in re.findall("[\u0621-\u063a\u0641-\u0655\u067e\u0686\u0698\u06a9\u06af\u06cc\u200c]+", text):
            word = word.strip("\u200c")
            if len(word) >= min_len and word not in stopwords:
                counts[word] += 1
    return dict(counts)


def word_cloud(texts: Sequence[str], name: str, title: str = "", max_words: int = 120, seed: int = SEED,
               charts_dir: str | Path | None = None) -> Path:
    """A word cloud of Persian text: each word shaped right to left, drawn in DejaVu Sans.

    Notebook 02, section 9."""
    from wordcloud import WordCloud

    plt = _plt()
    from PIL import features

    # Pillow with libraqm shapes and reorders right-to-left text itself; without it, do it here
    shape = (lambda w: w) if features.check_feature("raqm") else rtl
    freqs = {shape(w): c for w, c in persian_words(texts).items()}
    if not freqs:
        raise ValueError("no Persian words to draw: the texts are empty or all stopwords")
    cloud = WordCloud(font_path=font_path(), width=1000, height=520, background_color="white",
                      max_words=max_words, random_state=seed, collocations=False, prefer_horizontal=1.0).generate_from_frequencies(freqs)
    fig, ax = plt.subplots(figsize=(10, 5.4))
    ax.imshow(cloud, interpolation="bilinear")
    ax.axis("off")
    if title:
        ax.set_title(rtl(title))
    return _save(fig, name, charts_dir)
