"""The Video tab's endpoint through the launched studio (demo mode: the shipped shapes models): a clip in, the
annotated MP4, tracks.json and MOT out; bad clips and foreign paths refused with a message."""
from __future__ import annotations

import json
import re
from pathlib import Path

import av
import pytest

from grounding.train.moving_shapes import moving_shapes
from grounding.video.outputs import Mp4Writer
from tests.app.test_browser import browser  # noqa: F401 (the shared headless Chromium fixture)
from tests.app.test_first_contact import open_page, screenshot_dir
from tests.app.test_hosting import http_call, stream_error

FRAMES = 30


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "shapes clip.mp4"
    writer = Mp4Writer(path, (256, 256), 30.0)
    for frame, _ in moving_shapes(FRAMES):
        writer.write(frame)
    writer.close()
    return path


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """300 frames: long enough to press Stop in the middle, whatever the machine's speed."""
    path = tmp_path_factory.mktemp("clip") / "long.mp4"
    writer = Mp4Writer(path, (256, 256), 30.0)
    for frame, _ in moving_shapes(300):
        writer.write(frame)
    writer.close()
    return path


@pytest.fixture(scope="module")
def demo_client(demo_server):
    from gradio_client import Client

    return Client(demo_server.url, verbose=False)


def call(client, video, prompt="red circle . blue square", keyframes=5):
    from gradio_client import handle_file

    return client.predict(handle_file(str(video)), prompt, 0.35, 0.25, keyframes, True, "shapes", None, api_name="/video")


def test_video_endpoint_returns_the_tracked_clip(demo_client, clip):
    video, status, files, summary = call(demo_client, clip)
    with av.open(video["video"] if isinstance(video, dict) else video) as container:
        stream = container.streams.video[0]
        frames = [frame for frame in container.decode(stream)]
        assert stream.codec_context.name == "h264"
    assert len(frames) == FRAMES and (frames[0].width, frames[0].height) == (256, 256)
    assert summary["frames"] == FRAMES and summary["keyframes"] == FRAMES // 5 and not summary["stopped"]
    assert {t["phrase"] for t in summary["tracks"]} == {"red circle", "blue square"}
    assert "outputs" not in summary and "/" not in json.dumps(summary)  # no server paths
    assert f"2 tracks · {FRAMES} frames" in status
    names = sorted(Path(f).name for f in files)
    assert names == ["tracks.json", "tracks_mot.txt"]
    tracks = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())
    assert len(tracks["frames"]) == FRAMES and tracks["frames"][0]["objects"][0]["segmentation"]["size"] == [256, 256]


def test_bad_clips_are_refused_with_a_message(demo_client, tmp_path):
    from gradio_client.exceptions import AppError

    fake = tmp_path / "holiday.mp4"
    fake.write_text("this is a text file with a video's name\n" * 20)
    with pytest.raises(AppError, match="holiday.mp4 could not be read as a video"):
        call(demo_client, fake)
    with pytest.raises(AppError, match="keyframe_interval must be a whole number"):
        call(demo_client, fake, keyframes=2.5)
    with pytest.raises(AppError, match="prompt|Prompt"):
        call(demo_client, fake, prompt=" . . ")


def test_a_server_path_is_never_read(demo_server):
    data = [{"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}, "red circle", 0.35, 0.25, 5, True, "shapes", None]
    status, body = http_call(demo_server.url, "video", data)
    error = stream_error(body)
    assert error and "Paths and links are not read" in error and "/etc" not in error


def test_the_video_tab_in_a_browser(browser, demo_server, clip, long_clip, tmp_path):  # noqa: F811
    """Upload a clip in the Video tab, Run: the tracked video plays in the page and the tracks are listed."""
    page = open_page(browser, demo_server.url, "desktop")
    page.get_by_role("tab", name="Video").click()
    page.locator("#input-video input[type=file]").set_input_files(str(clip))
    page.locator("#video-prompt textarea").fill("red circle . blue square")
    page.locator("#video-run").click()
    page.locator("#video-status").get_by_text("2 tracks").wait_for(timeout=120_000)
    duration = page.evaluate("""async () => { const v = document.querySelector('#video-result video');
        if (v.readyState < 1) await new Promise(r => v.addEventListener('loadedmetadata', r, {once: true}));
        return v.duration; }""")
    assert abs(duration - FRAMES / 30) < 0.1  # the browser reads the H.264 file
    assert "red circle #1" in page.locator("#video-status").inner_text()
    page.screenshot(path=str(screenshot_dir(tmp_path) / "video_tab.png"), full_page=True)
    # A longer clip, and Stop once it has started: the frames done are shown, with a note.
    page.locator("#input-video").get_by_role("button", name=re.compile("clear", re.I)).first.click()
    page.locator("#input-video input[type=file]").set_input_files(str(long_clip))
    page.locator("#video-run").click()
    page.locator("#video-status").get_by_text(re.compile(r"Frame \d+ of 300")).wait_for(timeout=120_000)
    page.locator("#video-stop").click()
    note = page.locator("#video-status").get_by_text("Stopped at your request")
    note.wait_for(timeout=120_000)
    stopped_at = int(note.inner_text().split("after frame ")[1].rstrip("."))
    assert 5 <= stopped_at < 300
    duration = page.evaluate("""async () => { const v = document.querySelector('#video-result video');
        if (v.readyState < 1) await new Promise(r => v.addEventListener('loadedmetadata', r, {once: true}));
        return v.duration; }""")
    assert abs(duration - stopped_at / 30) < 0.1
    page.close()
