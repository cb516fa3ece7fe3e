"""Frames in: video files, folders and iterables, frame by frame; the limits; and every kind of bad video refused
with a message (not a video, empty, no frames, a frame size beyond the limit in the header) or read up to its
damage (truncated)."""
from __future__ import annotations

import struct

import av
import numpy as np
import pytest
from PIL import Image

from grounding.errors import InvalidVideoError
from grounding.video import VideoLimits, open_frames


def frames_of(source, **kwargs):
    with open_frames(source, **kwargs) as frames:
        return [f for f in frames], frames.info, frames.notes


def test_a_video_file_decodes_frame_by_frame(footage_mp4, footage):
    frames, info, notes = frames_of(footage_mp4)
    assert len(frames) == 120 and info.frames == 120 and info.fps == 30.0 and info.size == (256, 256)
    assert frames[0].shape == (256, 256, 3) and frames[0].dtype == np.uint8 and not notes
    assert np.abs(frames[50].astype(int) - footage[0][50]).mean() < 6  # H.264 at crf 23 stays close


def test_limits_cut_the_video_and_scale_frames_down(footage_mp4):
    frames, info, notes = frames_of(footage_mp4, limits=VideoLimits(max_seconds=1.0, max_side=100))
    assert len(frames) == 30 and info.frames == 30 and info.size == (100, 100) and frames[0].shape == (100, 100, 3)
    assert notes == ["Only the first 30 of 120 frames (1.0 s) were used (the frame/time limit)."]
    frames, _, _ = frames_of(footage_mp4, limits=VideoLimits(max_frames=7))
    assert len(frames) == 7


def test_a_folder_of_frames_and_an_iterable(tmp_path, footage):
    for index, frame in enumerate(footage[0][:5]):
        Image.fromarray(frame).save(tmp_path / f"frame_{index:03d}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    frames, info, _ = frames_of(tmp_path, fps=12)
    assert len(frames) == 5 and info.fps == 12 and info.frames == 5
    np.testing.assert_array_equal(frames[3], footage[0][3])
    frames, info, _ = frames_of(iter(footage[0][:4]))
    assert len(frames) == 4 and info.frames is None and info.fps == 30.0


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory, footage_mp4):
    folder = tmp_path_factory.mktemp("bad")
    data = footage_mp4.read_bytes()
    (folder / "text.mp4").write_text("not a video, only a renamed text file\n" * 50)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "truncated_head.mp4").write_bytes(data[:200])  # inside the index: nothing can be read
    zero = av.open(str(folder / "zero.mkv"), "w")
    stream = zero.add_stream("libx264", rate=30)
    stream.width = stream.height = 64
    stream.pix_fmt = "yuv420p"
    zero.start_encoding()
    zero.close()
    # A tiny raw AVI whose headers then claim frames of 20000 x 20000 and 10000 x 10000 px.
    small = folder / "small.avi"
    with av.open(str(small), "w") as out:
        raw = out.add_stream("rawvideo", rate=30)
        raw.width = raw.height = 64
        raw.pix_fmt = "rgb24"
        for packet in raw.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")):
            out.mux(packet)
        for packet in raw.encode(None):
            out.mux(packet)
    for side in (20000, 10000):
        header = bytearray(small.read_bytes())
        struct.pack_into("<ii", header, header.index(b"strf") + 12, side, side)  # BITMAPINFOHEADER width, height
        struct.pack_into("<II", header, header.index(b"avih") + 40, side, side)  # AVI main header width, height
        (folder / f"claims_{side}.avi").write_bytes(bytes(header))
    return folder


@pytest.mark.parametrize("name, message", [
    ("text.mp4", "could not be read as a video"),
    ("empty.mp4", "could not be read as a video"),
    ("truncated_head.mp4", "has no video stream|could not be read as a video"),
    ("zero.mkv", "has no frames|could not be read as a video"),
    ("claims_20000.avi", "too large to decode|more than the"),
    ("claims_10000.avi", "frames of 10000×10000 px, more than the 67,108,864 pixels"),
    ("missing.mp4", "neither a video file nor a folder"),
])
def test_bad_videos_are_refused_with_a_message(bad_videos, name, message):
    with pytest.raises(InvalidVideoError, match=message) as refused:
        frames_of(bad_videos / name)
    assert str(bad_videos) not in str(refused.value)  # the file's name, never the server's folders


def test_a_truncated_video_gives_the_frames_before_the_cut(tmp_path, footage_mp4):
    data = footage_mp4.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # +faststart: the index first, half the frames
    frames, info, notes = frames_of(tmp_path / "cut.mp4")
    assert 0 < len(frames) < 120 and info.source_frames == 120
    assert notes and f"ends after frame {len(frames)} of the 120" in notes[0]


@pytest.mark.parametrize("source", [b"bytes", 42, np.zeros((4, 4, 3), np.uint8)])
def test_sources_that_are_not_videos(source):
    with pytest.raises(InvalidVideoError):
        open_frames(source)


def test_a_picture_that_is_not_an_image_stops_with_its_frame_number(tmp_path, footage):
    Image.fromarray(footage[0][0]).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG broken")
    with open_frames(tmp_path) as frames, pytest.raises(InvalidVideoError, match="Frame 2"):
        list(frames)


def test_a_playlist_never_opens_other_files(tmp_path):
    """An HLS playlist (or an ffconcat list) uploaded as a video would make FFmpeg read the files it names."""
    secret = tmp_path / "secret.ts"
    with av.open(str(secret), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for value in range(5):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), 50 * value, np.uint8), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    assert len(frames_of(secret)[0]) == 5  # a plain MPEG-TS file is a video
    (tmp_path / "list.m3u8").write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n{secret}\n#EXT-X-ENDLIST\n")
    (tmp_path / "list.mp4").write_text(f"ffconcat version 1.0\nfile '{secret}'\n")
    for name in ("list.m3u8", "list.mp4"):
        with pytest.raises(InvalidVideoError, match="could not be read as a video"):
            frames_of(tmp_path / name)
