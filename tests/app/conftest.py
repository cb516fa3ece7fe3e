"""The studio launched for real: `python app.py` subprocesses on 127.0.0.1 with tiny random models written
in the official checkpoint formats (tests/fixtures), loaded through the command-line flags."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 240  # the tiny models load in seconds; a loaded 2-core CI box can be very slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppServer:
    """`python app.py ...` in a subprocess, its output in a log file, stopped by its pid."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_path
        self.env = env
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "app.py"), "--host", "127.0.0.1", "--port", str(self.port), *args],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> "AppServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "config", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"app.py did not answer within {timeout} s:\n{self.log()}")

    def log(self, tail: int | None = 4000) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return text[-tail:] if tail else text

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def offline_env(tmp: Path) -> dict[str, str]:
    """No network, no weights from earlier runs: fresh cache folders, offline switches on."""
    env = {k: v for k, v in os.environ.items() if k not in ("GROUNDING_DINO_CHECKPOINT", "SAM_CHECKPOINT")}
    env.update(
        GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
        TRANSFORMERS_OFFLINE="1", GROUNDING_OFFLINE="1", HF_HOME=str(tmp / "hf"),
        GROUNDING_CACHE_DIR=str(tmp / "grounding-cache"), GRADIO_TEMP_DIR=str(tmp / "gradio"),
        PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
        GROUNDING_LOAD_RETRY_S="3600",  # a failed load is tried again on purpose only (tests/app/test_hosting.py)
        GROUNDING_SHAPES_DIR=str(tmp / "no-shapes"),  # no shipped demo models either (tests/app/test_shipped.py)
    )
    return env


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random Grounding DINO (.pth with config) and SAM ("tiny" variant, official .pth layout)."""
    from tests.fixtures.dino import tiny_official_checkpoint
    from tests.fixtures.sam import tiny_sam_checkpoint

    folder = tmp_path_factory.mktemp("weights")
    tiny_official_checkpoint(folder / "tiny_dino.pth")
    return {"detector": folder / "tiny_dino.pth", "sam": tiny_sam_checkpoint(folder / "tiny_sam.pth")}


@pytest.fixture(scope="session")
def servers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, AppServer]]:
    """Both studios: "no_weights" (defaults, offline) starts first and imports while the tiny weights are
    written; then "tiny" (weights passed by flags)."""
    tmp = tmp_path_factory.mktemp("servers")
    started = {"no_weights": AppServer([], offline_env(tmp / "none"), tmp / "none.log")}
    try:
        weights = request.getfixturevalue("tiny_weights")
        started["tiny"] = AppServer(
            ["--detector", str(weights["detector"]), "--sam", str(weights["sam"])],
            offline_env(tmp / "tiny"), tmp / "tiny.log",
        )
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """`python app.py` with its defaults, offline, no real weights anywhere: it falls back to the shipped shapes
    models (demo mode), as a newcomer without network access meets it."""
    tmp = tmp_path_factory.mktemp("demo_server")
    env = offline_env(tmp)
    del env["GROUNDING_SHAPES_DIR"]
    server = AppServer([], env, tmp / "server.log").wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def studio_url(servers: dict[str, AppServer]) -> str:
    return servers["tiny"].url


@pytest.fixture(scope="session")
def client(studio_url: str):
    from gradio_client import Client

    return Client(studio_url, verbose=False)
