"""One video end to end (`VideoJob`, `label_video`, the CLI): the MP4 decodes back to every frame at its size,
tracks.json and the MOT file agree with what the tracker returned (RLE included), a stopped job leaves valid
outputs, and a long stream runs in flat memory."""
from __future__ import annotations

import json
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from grounding.export import coco_rle_to_mask
from grounding.pipeline import GroundedSAM
from grounding.train.moving_shapes import moving_shapes
from grounding.video import MOT_FILE, TRACKS_FILE, VIDEO_FILE, TrackerConfig, VideoJob, label_video
from grounding.video.outputs import Mp4Writer
from tests.video.conftest import PROMPT

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def decoded(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)], stream.codec_context.name


def test_outputs_hold_every_frame_and_agree(shapes, footage_mp4, tmp_path):
    seen = []
    summary = label_video(shapes, footage_mp4, PROMPT, tmp_path, TrackerConfig(keyframe_interval=5),
                          on_frame=lambda tracked, info: seen.append(tracked))
    frames, codec = decoded(tmp_path / VIDEO_FILE)
    assert len(frames) == summary.frames == 120 and frames[0].shape == (256, 256, 3)
    assert codec == "h264" and summary.codec == "libx264" and summary.keyframes == 24 and not summary.stopped
    tracks = json.loads((tmp_path / TRACKS_FILE).read_text())
    assert [f["frame"] for f in tracks["frames"]] == list(range(120)) and tracks["notes"] == []
    assert tracks["video"]["width"] == 256 and tracks["prompt"] == "red circle . blue square . green star . yellow triangle ."
    assert {t["phrase"] for t in tracks["tracks"]} == {"red circle", "blue square", "green star", "yellow triangle"}
    for frame, entry in zip(seen[::17], tracks["frames"][::17]):
        assert [o["track_id"] for o in entry["objects"]] == [o.track_id for o in frame.objects]
        for obj, written in zip(frame.objects, entry["objects"]):
            np.testing.assert_array_equal(coco_rle_to_mask(written["segmentation"]), obj.mask)
            np.testing.assert_allclose(written["bbox_xyxy"], obj.box, atol=0.01)
    mot = [line.split(",") for line in (tmp_path / MOT_FILE).read_text().splitlines()]
    assert len(mot) == sum(len(f.objects) for f in seen)
    first = seen[0].objects[0]
    frame_no, track_id, x, y, w, h = mot[0][:6]
    assert (int(frame_no), int(track_id)) == (1, first.track_id)
    np.testing.assert_allclose([float(x), float(y), float(x) + float(w), float(y) + float(h)], first.box, atol=0.02)


def test_odd_sized_frames_and_a_stopped_job(tiny_detector, tmp_path):
    frames = [np.full((45, 61, 3), 40 * i, np.uint8) for i in range(6)]
    job = VideoJob(GroundedSAM(tiny_detector, None), frames, "red block", tmp_path, TrackerConfig(box_threshold=0.3))
    for tracked in job:
        if tracked.index == 2:
            break  # a user's Stop
    summary = job.summary()
    assert summary.stopped and summary.frames == 3 and "Stopped after frame 3" in summary.notes[-1]
    video, _ = decoded(tmp_path / VIDEO_FILE)
    assert len(video) == 3 and video[0].shape == (46, 62, 3)  # padded to even sides for 4:2:0
    tracks = json.loads((tmp_path / TRACKS_FILE).read_text())  # valid JSON though stopped
    assert len(tracks["frames"]) == 3 and tracks["notes"] == summary.notes


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_long_stream_runs_in_flat_memory(tiny_detector, tmp_path):
    """2000 frames decoded from an MP4, tracked (boxes: SAM's per-frame cost is the same at any length) and
    written, sampled along the way."""
    source = tmp_path / "long.mp4"
    writer = Mp4Writer(source, (96, 96), 30.0)
    for frame, _ in moving_shapes(2000, side=96):
        writer.write(frame)
    writer.close()
    samples = {}
    job = VideoJob(GroundedSAM(tiny_detector, None), source, "red block . blue block", tmp_path / "out",
                   TrackerConfig(keyframe_interval=100, box_threshold=0.3))
    for tracked in job:
        if tracked.index + 1 in (300, 1000, 2000):
            samples[tracked.index + 1] = rss_mb()
    print(f"\nRSS over a 2000-frame stream: {samples} MB")
    assert job.summary().frames == 2000 and len(decoded(tmp_path / "out" / VIDEO_FILE)[0]) == 2000
    assert samples[2000] - samples[300] < 40  # MB; holding each decoded 96x96 frame would add 55 MB


def test_the_command_line(tmp_path, footage):
    for index, frame in enumerate(footage[0][:12]):
        Image.fromarray(frame).save(tmp_path / f"{index:03d}.png")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "grounding.video", "--video", str(tmp_path), "--prompt", "red circle",
                           "--detector", "shapes", "--out", str(out), "--fps", "12", "--keyframe-interval", "4"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "12 frames, 1 tracks" in done.stdout
    assert len(decoded(out / VIDEO_FILE)[0]) == 12 and (out / MOT_FILE).stat().st_size > 0
    (tmp_path / "fake.mp4").write_text("hello")
    refused = subprocess.run([sys.executable, "-m", "grounding.video", "--video", str(tmp_path / "fake.mp4"), "--prompt",
                              "red circle", "--detector", "shapes", "--out", str(out)], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert refused.returncode == 2 and "fake.mp4 could not be read as a video" in refused.stderr
    assert "Traceback" not in refused.stderr
