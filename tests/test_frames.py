"""data.frames on clips written on the fly with PyAV, including a corrupt file and a too-short clip."""
import numpy as np
import pytest

from gemma_helpers import offline
from gemma_helpers.data import frames as F


def centre_x(image):
    red = np.asarray(image)[..., 0] > 150
    return np.argwhere(red)[:, 1].mean()


def test_sample_frames_are_evenly_spaced_and_resized(tmp_path):
    clip = offline.write_clip(tmp_path / "right.mp4", offline.shape_frames("moving right", n_frames=10, size=64))
    frames = F.sample_frames(clip, n=4, size=32)
    assert len(frames) == 4 and all(f.size == (32, 32) and f.mode == "RGB" for f in frames)
    xs = [centre_x(f) for f in frames]
    assert xs == sorted(xs) and xs[-1] - xs[0] > 8  # first to last frame: the shape moved right (a quarter of the frame)
    # evenly spaced over 10 frames: indices 0, 3, 6, 9 -> equal steps in position
    steps = np.diff(xs)
    assert steps.max() - steps.min() < 3


def test_bad_clips_are_reported_by_name_and_skipped(tmp_path, capsys):
    good = offline.synthetic_clips(tmp_path / "clips", per_action=1, actions=("growing", "moving up"))
    corrupt = tmp_path / "clips" / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00 this is not a video " * 20)
    short = offline.write_clip(tmp_path / "clips" / "short.mp4", offline.shape_frames("shrinking", n_frames=3, size=64))
    with pytest.raises(F.ClipError, match="short.mp4: 3 decodable frames"):
        F.sample_frames(short, n=4)
    rows, skipped = F.build_rows([*good, (corrupt, "x"), (short, "shrinking")], tmp_path / "root", n=4, size=48,
                                 progress=False)
    assert [s.clip for s in skipped] == ["corrupt.mp4", "short.mp4"]
    assert "cannot be decoded" in skipped[0].reason and "fewer than the 4" in skipped[1].reason
    assert "skipped corrupt.mp4" in capsys.readouterr().out
    assert [F.answer_of(r) for r in rows] == ["growing", "moving up"]
    user = rows[0]["messages"][0]["content"]
    assert [p["type"] for p in user] == ["image"] * 4 + ["text"] and user[-1]["text"] == F.PROMPT
    assert user[0]["image"] == "frames/growing_00/frame_0.jpg"
    images = F.load_images(rows[0], tmp_path / "root")
    assert len(images) == 4 and images[0].size == (48, 48)
    assert (tmp_path / "root" / "frames" / "growing_00" / "frame_3.jpg").read_bytes()[:2] == b"\xff\xd8"  # JPEG


def test_split_is_by_clip_and_covers_every_action(tmp_path):
    rows = [F.row([f"frames/{a}{i}/frame_0.jpg"], a, f"{a}{i}") for a in ("left", "up", "grow") for i in range(4)]
    rows += [F.row(["frames/left0/frame_1.jpg"], "left", "left0")]  # a second row of one clip
    train, held = F.split_by_clip(rows, heldout=0.25, seed=1)
    assert not {r["clip"] for r in train} & {r["clip"] for r in held}
    assert {F.answer_of(r) for r in held} == {"left", "up", "grow"}
    assert len(train) + len(held) == len(rows)


def test_swapped_frames_come_from_another_clip_and_keep_the_question(tmp_path):
    rows = [F.row([f"frames/{a}{i}/frame_{k}.jpg" for k in range(4)], a, f"{a}{i}")
            for a in ("left", "up", "grow") for i in range(3)]
    swapped = F.swap_frames(rows, seed=3)
    assert [F.answer_of(r) for r in swapped] == [F.answer_of(r) for r in rows]
    assert all(s["frames_from"] != r["clip"] for s, r in zip(swapped, rows))  # nobody keeps its own frames
    assert sorted(s["frames_from"] for s in swapped) == sorted(r["clip"] for r in rows)  # each donor once
    for s in swapped:
        user = s["messages"][0]["content"]
        assert [p["type"] for p in user] == ["image"] * 4 + ["text"] and user[-1]["text"] == F.PROMPT
        assert all(p["image"].startswith(f"frames/{s['frames_from']}/") for p in user[:4])
    assert rows[0]["messages"][0]["content"][0]["image"] == "frames/left0/frame_0.jpg"  # the originals untouched
    with pytest.raises(ValueError, match="at least 2 rows"):
        F.swap_frames(rows[:1])


def test_the_verdict_on_synthetic_clips_says_it_checks_the_pipeline_not_real_actions():
    bar, bar_ci = 0.17, [0.06, 0.27]  # 8 of 48 clips: a constant answer's interval
    shown, sentence = F.verdict(0.6, [0.46, 0.73], bar, bar_ci, 0.15, 48, F.SYNTHETIC)
    assert shown and sentence.startswith("Shown: on 48 held-out clips")
    assert "3.5 times" in sentence and "0.15 (within the bar's interval)" in sentence
    assert "synthetic moving-shape clips" in sentence and "not recognition of real actions" in sentence
    shown, sentence = F.verdict(0.6, [0.46, 0.73], bar, bar_ci, 0.04, 48, "/content/drive/MyDrive/clips")
    assert shown and "synthetic" not in sentence and "/content/drive/MyDrive/clips" in sentence
    assert "0.04 (below the bar's interval)" in sentence  # below chance still means the frames steered it


def test_the_verdict_stands_on_the_intervals_not_the_points():
    bar, bar_ci = 0.17, [0.06, 0.27]
    shown, sentence = F.verdict(0.45, [0.31, 0.58], bar, bar_ci, 0.15, 48)  # 2.6 times the bar
    assert not shown and sentence.startswith("NOT shown") and "less than 3 times" in sentence
    shown, sentence = F.verdict(0.58, [0.15, 0.95], bar, bar_ci, 0.15, 12)  # 3.4 times, but a wide interval
    assert not shown and "lower end 0.15 not above the bar" in sentence
    shown, sentence = F.verdict(0.6, [0.46, 0.73], bar, bar_ci, 0.31, 48)  # other clips' frames still answered
    assert not shown and "stays at 0.31 (above the bar's interval)" in sentence
