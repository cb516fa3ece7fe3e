"""One model run at a time per device, whatever event asks for it (upload, Run, slider, masks toggle, export),
while a threshold move that needs no model answers at once. The studio is launched in this process over a
tiny detector and SAM whose forwards are slowed down and watched by a probe."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tests.app.conftest import free_port

FORWARD_S = 0.4  # each probed forward takes at least this long


class OverlapProbe:
    """Counts model forwards running at the same moment (the ground truth of "one at a time")."""

    def __init__(self) -> None:
        self.active = 0
        self.max_active = 0
        self.calls = 0
        self._lock = threading.Lock()

    def wrap(self, fn):
        def probed(*args, **kwargs):
            with self._lock:
                self.active += 1
                self.calls += 1
                self.max_active = max(self.max_active, self.active)
            try:
                time.sleep(FORWARD_S)
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.active -= 1

        return probed


@pytest.fixture(scope="module")
def probed_studio(tmp_path_factory, tiny_weights):
    """(url, probe): the studio launched in-process with the probe around every detector and SAM forward."""
    from app.models import ModelRegistry
    from app.settings import StudioSettings
    from app.studio import Studio
    from app.ui import build_demo, launch
    from grounding.detector import GroundingDetector
    from grounding.pipeline import GroundedSAM
    from grounding.segmenters.sam import SamSegmenter

    probe = OverlapProbe()
    detector = GroundingDetector.from_pretrained(tiny_weights["detector"], device="cpu", download=False)
    segmenter = SamSegmenter.from_pretrained("tiny", checkpoint=tiny_weights["sam"], device="cpu", download=False)
    for model, names in ((detector, ("encode_image", "run_text")), (segmenter, ("encode_image", "decode_boxes"))):
        for name in names:
            setattr(model, name, probe.wrap(getattr(model, name)))
    pipeline = GroundedSAM(detector, segmenter)
    registry = ModelRegistry({"probed": lambda: pipeline})
    registry.load_all()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        demo = build_demo(registry, Studio(registry))
        port = free_port()
        launch(demo, StudioSettings(port=port), prevent_thread_lock=True)
        try:
            yield f"http://127.0.0.1:{port}/", probe
        finally:
            demo.close()


def _images(folder, count: int) -> list[str]:
    paths = []
    for index in range(count):
        path = folder / f"scene_{index}.png"
        picture = np.full((90, 120, 3), 40 * index, np.uint8)
        picture[20:60, 30:90] = (200, 30 + 40 * index, 30)
        Image.fromarray(picture).save(path)
        paths.append(str(path))
    return paths


def test_model_runs_never_overlap_and_cached_slider_moves_do_not_wait(probed_studio, tmp_path):
    from gradio_client import Client, handle_file

    url, probe = probed_studio
    images = _images(tmp_path, 5)
    prompt = "red box . background"
    warm = Client(url, verbose=False)
    # Image 0 fully computed, with and without masks: its threshold moves need no model.
    warm.predict(handle_file(images[0]), prompt, 0.0, 0.25, 1.0, True, "probed", api_name="/segment")
    calls_before = probe.calls

    def call(endpoint, image, use_sam=True, box=0.0):
        client = Client(url, verbose=False)
        if endpoint == "/encode":
            return client.predict(handle_file(image), "probed", use_sam, api_name=endpoint)
        return client.predict(handle_file(image), prompt, box, 0.25, 1.0, use_sam, "probed", api_name=endpoint)

    heavy = [("/encode", images[1], True), ("/segment", images[2], True), ("/refilter", images[3], True),
             ("/export", images[4], True), ("/refilter", images[1], False)]
    with ThreadPoolExecutor(len(heavy) + 3) as pool:
        started = time.perf_counter()
        running = [pool.submit(call, endpoint, image, use_sam) for endpoint, image, use_sam in heavy]
        time.sleep(0.5)  # the model runs are under way
        quick = []
        for box in (0.2, 0.5, 0.8):
            tick = time.perf_counter()
            call("/refilter", images[0], True, box)
            quick.append(time.perf_counter() - tick)
        for future in running:
            future.result()
        total = time.perf_counter() - started
    assert probe.calls - calls_before >= 10  # every heavy event ran models (image encoders, text, SAM)
    assert probe.max_active == 1, f"{probe.max_active} model forwards ran at once"
    # The heavy events took >= 10 forwards x 0.4 s one after the other; each cached slider move did not wait.
    assert total >= 10 * FORWARD_S
    assert max(quick) < total / 2, (quick, total)
