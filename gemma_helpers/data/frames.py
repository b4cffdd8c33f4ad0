"""Video clips to training rows: N evenly spaced frames per clip, as JPEGs, in the messages format.

A row has the layout of the seed data set (``kinetic_3K.json``): the user turn is N image parts
(``{"type": "image", "image": "frames/<clip>/frame_k.jpg"}``, relative to a root folder) followed by
one text part, the assistant turn is the action as text. Rows also carry ``"clip"`` (the clip's
name), so that train and held-out sets are split by clip, never by frame.

The CPU profile trains on synthetic clips (:func:`gemma_helpers.offline.synthetic_clips`): one
shape per clip that moves left, right, up or down, grows or shrinks; the action is the answer.
"""
from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

PROMPT = "Please analyze the sequence of frames from this video. What specific action or event is happening?"
ACTIONS = ("moving left", "moving right", "moving up", "moving down", "growing", "shrinking")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")


class ClipError(ValueError):
    """A clip that cannot be used; the message names the file."""


@dataclass
class Skipped:
    """A clip that build_rows left out, with the reason."""

    clip: str
    reason: str


def sample_frames(path: str | Path, n: int = 4, size: int | None = 336) -> list:
    """``n`` evenly spaced frames of a video file as RGB PIL images, resized to ``size`` x ``size``.

    The first and the last frame are always among them. Raises :class:`ClipError` naming the file
    when it cannot be decoded or has fewer than ``n`` frames."""
    import av

    path = Path(path)
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClipError(f"{path}: no video stream")
            for frame in container.decode(video=0):
                frames.append(frame.to_image())  # every frame: stream.frames is unreliable for many containers
    except ClipError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        if not frames:
            raise ClipError(f"{path}: cannot be decoded ({type(exc).__name__}: {exc})") from exc
        # a truncated file: keep the frames decoded before the damage
    if len(frames) < n:
        raise ClipError(f"{path}: {len(frames)} decodable frames, fewer than the {n} requested")
    picks = [round(i * (len(frames) - 1) / (n - 1)) for i in range(n)] if n > 1 else [len(frames) // 2]
    chosen = [frames[i].convert("RGB") for i in picks]
    if size:
        chosen = [im.resize((size, size)) for im in chosen]
    return chosen


def write_frames(clip: str | Path, out_dir: str | Path, n: int = 4, size: int | None = 336,
                 quality: int = 90) -> list[Path]:
    """Sample ``n`` frames of ``clip`` and write them as ``out_dir/frame_0.jpg`` ... (JPEG)."""
    out_dir = Path(out_dir)
    images = sample_frames(clip, n, size)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, im in enumerate(images):
        p = out_dir / f"frame_{k}.jpg"
        im.save(p, format="JPEG", quality=quality)
        paths.append(p)
    return paths


def row(frame_paths: Sequence[str], answer: str, clip: str, prompt: str = PROMPT) -> dict:
    """One training row in the seed's messages format: N image parts, then the text; the answer as assistant."""
    content = [{"type": "image", "image": str(p)} for p in frame_paths] + [{"type": "text", "text": prompt}]
    return {"messages": [{"role": "user", "content": content},
                         {"role": "assistant", "content": [{"type": "text", "text": answer}]}],
            "clip": clip}


def build_rows(clips: Iterable[tuple[str | Path, str]], root: str | Path, n: int = 4, size: int | None = 336,
               prompt: str = PROMPT, progress: bool = True) -> tuple[list[dict], list[Skipped]]:
    """Rows for ``(clip path, answer)`` pairs; frames go to ``root/frames/<clip name>/``.

    Image paths in the rows are relative to ``root``. A clip that cannot be decoded or is shorter
    than ``n`` frames is reported by name and skipped; the others are kept.

    Notebook 04, "Data"."""
    from tqdm.auto import tqdm

    root = Path(root)
    rows, skipped = [], []
    clips = list(clips)
    for clip, answer in tqdm(clips, desc="sampling frames", disable=not progress):
        clip = Path(clip)
        try:
            paths = write_frames(clip, root / "frames" / clip.stem, n, size)
        except ClipError as exc:
            skipped.append(Skipped(clip.name, str(exc)))
            print(f"skipped {clip.name}: {exc}")
            continue
        rows.append(row([p.relative_to(root).as_posix() for p in paths], answer, clip.stem, prompt))
    return rows, skipped


def load_images(row: dict, root: str | Path) -> list:
    """The PIL images of a row's user turn, in order (paths relative to ``root``).

    Notebook 04, "Data"."""
    from PIL import Image

    images = []
    for msg in row["messages"]:
        for part in msg["content"] if isinstance(msg["content"], list) else []:
            if part.get("type") == "image":
                with Image.open(Path(root) / part["image"]) as im:
                    images.append(im.convert("RGB"))
    return images


def answer_of(row: dict) -> str:
    """The text of a row's last (assistant) turn.

    Notebook 04, "Ablation: the same adapter, frames from other clips"."""
    content = row["messages"][-1]["content"]
    return content if isinstance(content, str) else "".join(p.get("text") or "" for p in content)


def split_by_clip(rows: Sequence[dict], heldout: float = 0.25, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Train / held-out rows, split by clip name (every row of a clip lands on one side),
    stratified by answer so each action appears on both sides when it has at least two clips.

    Notebook 04, "Data"."""
    by_answer: dict[str, list[str]] = {}
    for r in rows:
        clips = by_answer.setdefault(answer_of(r), [])
        if r["clip"] not in clips:
            clips.append(r["clip"])
    rng = random.Random(seed)
    held: set[str] = set()
    for clips in by_answer.values():
        clips = sorted(clips)
        rng.shuffle(clips)
        k = round(len(clips) * heldout) if len(clips) > 1 else 0
        held.update(clips[: max(k, 1 if len(clips) > 1 and heldout > 0 else 0)])
    return [r for r in rows if r["clip"] not in held], [r for r in rows if r["clip"] in held]


def swap_frames(rows: Sequence[dict], seed: int = 0) -> list[dict]:
    """Copies of ``rows`` whose images are those of another row, text and answer unchanged: the
    ablation that tells whether a model's answers come from the frames.

    The donors follow one random cycle through the rows (Sattolo's shuffle), so no row keeps its own
    frames and every row's frames are used once; ``"frames_from"`` names the donor clip.

    Notebook 04, "Ablation: the same adapter, frames from other clips"."""
    if len(rows) < 2:
        raise ValueError(f"swapping frames needs at least 2 rows, got {len(rows)}")
    rng = random.Random(seed)
    donor = list(range(len(rows)))
    for i in range(len(rows) - 1, 0, -1):  # Sattolo: a single cycle, hence no fixed point
        j = rng.randrange(i)
        donor[i], donor[j] = donor[j], donor[i]
    swapped = []
    for r, d in zip(rows, donor):
        images = [p for p in rows[d]["messages"][0]["content"] if p.get("type") == "image"]
        text = [p for p in r["messages"][0]["content"] if p.get("type") != "image"]
        user = dict(r["messages"][0], content=images + text)
        swapped.append(dict(r, messages=[user, *r["messages"][1:]], frames_from=rows[d]["clip"]))
    return swapped


def clips_from_csv(folder: str | Path, csv_name: str = "annotations.csv") -> list[tuple[Path, str]]:
    """``[(clip path, answer), ...]`` from ``folder/annotations.csv`` (columns ``clip,answer``; ``clip``
    is a file name in ``folder/clips/``). A listed clip that is missing is reported and left out.

    Notebook 04, "Data"."""
    import csv

    folder = Path(folder)
    pairs = []
    with open(folder / csv_name, newline="", encoding="utf-8") as fh:
        for i, rec in enumerate(csv.DictReader(fh), start=2):
            if not rec.get("clip") or not (rec.get("answer") or "").strip():
                raise ValueError(f"{folder / csv_name} line {i}: 'clip' and 'answer' are required")
            path = folder / "clips" / rec["clip"]
            if not path.is_file():
                print(f"skipped {rec['clip']}: {path} does not exist")
                continue
            pairs.append((path, rec["answer"].strip()))
    return pairs


SYNTHETIC = "synthetic"  # the clip source named in results when notebook 04 made its own moving-shape clips


def verdict(after: float, after_ci: Sequence[float], bar: float, bar_ci: Sequence[float], ablated: float, n: int,
            clips: str = SYNTHETIC) -> tuple[bool, str]:
    """``(shown, sentence)``: whether the adapter's held-out exact match ``after`` is at least three times
    the most-common-answer ``bar`` with the lower end of its interval ``after_ci`` above the bar, while
    frames from other clips (``ablated``) fall back to no more than the top of the bar's own interval
    ``bar_ci`` (what a model that ignores the frames reaches on these ``n`` clips); and the sentence
    notebook 04 prints, naming each margin. On synthetic clips the sentence says so: the figure then
    checks the pipeline (frames reach the adapter and steer its answer), not recognition of real actions.

    Notebook 04, "Results"."""
    times = after >= 3 * bar
    clears = after_ci[0] > bar
    falls = ablated <= bar_ci[1]
    shown = times and clears and falls
    ratio = f"{after / bar:.1f} times" if bar else "above"
    where = "within" if bar_ci[0] <= ablated <= bar_ci[1] else ("below" if ablated < bar_ci[0] else "above")
    sentence = (f"{'Shown' if shown else 'NOT shown'}: on {n} held-out clips the adapter's exact match is "
                f"{after:.2f} [{after_ci[0]:.2f}, {after_ci[1]:.2f}], {ratio} the most-common-answer bar of "
                f"{bar:.2f} [{bar_ci[0]:.2f}, {bar_ci[1]:.2f}] ({'at least' if times else 'less than'} 3 times; "
                f"its interval's lower end {after_ci[0]:.2f} {'above' if clears else 'not above'} the bar), "
                f"and with frames from other clips it {'falls back to' if falls else 'stays at'} {ablated:.2f} "
                f"({where} the bar's interval), so the answers "
                f"{'come from' if shown else 'are not shown to come from'} the frames.")
    if clips == SYNTHETIC:
        sentence += (" These are synthetic moving-shape clips: the figure checks the pipeline, not recognition of "
                     "real actions (set CLIPS_DIR to a folder of real clips for that).")
    else:
        sentence += f" Clips from {clips}."
    return shown, sentence
