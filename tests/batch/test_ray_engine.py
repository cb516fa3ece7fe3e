"""`--engine ray` for real: a local Ray with 2 CPUs, the shipped shapes models, 40 generated scenes and a damaged
file. The Ray run's COCO equals the local engine's; a driver killed after some shards, rerun, and a model actor
killed mid-run both end with every image exactly once and the same answer; without Ray the CLI says how to get it."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.batch.conftest import (
    BROKEN, PROMPT, REPO, SCENES, assert_same_coco, batch_command, batch_env, committed_records, run_batch,
)

RAY_ARGS = ("--engine", "ray", "--ray-num-cpus", "2", "--batch-size", "2", "--shard-size", "4")


def ray_args(images: Path, out: Path) -> list[str]:
    return ["--images", str(images), "--prompt", PROMPT, "--out", str(out), "--detector", "shapes", *RAY_ARGS]


def start_ray_run(images: Path, out: Path) -> subprocess.Popen:
    """The CLI in its own session, so that killing the group takes the local Ray it started with it."""
    return subprocess.Popen(batch_command(*ray_args(images, out)), cwd=REPO, env=batch_env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_shards(out: Path, process: subprocess.Popen, count: int = 1, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while len(list((out / "shards").glob("part-*.jsonl"))) < count:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no shard committed in time"
        time.sleep(0.02)


def assert_each_image_once(out: Path) -> None:
    """Every scene has exactly one committed result; the damaged file only error records."""
    records = committed_records(out)
    done = [record["id"] for record in records if "error" not in record]
    assert sorted(done) == sorted(set(done)) and len(done) == SCENES
    assert {record["id"] for record in records if "error" in record} == {BROKEN}


def test_ray_run_equals_the_local_engine(scenes_folder, reference_coco, tmp_path):
    out = tmp_path / "ray"
    run = run_batch(*ray_args(scenes_folder, out))
    assert run.returncode == 1, run.stderr[-3000:]  # 1: one image failed
    assert f"{SCENES}/{SCENES + 1} images" in run.stdout
    assert f"failed: {BROKEN}" in run.stderr and "not an image file" in run.stderr
    assert_same_coco(json.loads((out / "coco.json").read_text()), reference_coco)
    assert json.loads((out / "failed.json").read_text())[0]["id"] == BROKEN
    assert len(list((out / "annotated").glob("*.png"))) == SCENES
    assert_each_image_once(out)


def test_driver_killed_after_some_shards_resumes_to_the_same_answer(scenes_folder, reference_coco, tmp_path):
    out = tmp_path / "ray"
    process = start_ray_run(scenes_folder, out)
    try:
        wait_for_shards(out, process, count=2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    kept = committed_records(out)
    assert 0 < len(kept) < SCENES, "the run ended before it could be interrupted"
    assert not (out / "coco.json").exists()

    run = run_batch(*ray_args(scenes_folder, out))
    assert run.returncode == 1, run.stderr[-3000:]
    assert_same_coco(json.loads((out / "coco.json").read_text()), reference_coco)
    assert_each_image_once(out)
    assert committed_records(out)[: len(kept)] == kept  # the first run's shards are kept as they were


# Joins the local Ray the CLI (pid argv[1]) started, found by its session folder (never another Ray on the
# machine), waits until the model actor is up (ALIVE: models loaded, blocks on their way), lets it work for
# argv[2] seconds, kills its process, then waits for Ray to restart it. Prints the two pids, the actor's restart
# count and how many images were committed (argv[3]) when it died. The GCS actor table is read because Ray's
# state API needs the dashboard, which the engine does not start.
KILL_ACTOR = """
import glob, json, os, signal, sys, time
import ray
from ray._private import services, state

driver, wait_s, shards = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + 240
while True:
    ports = glob.glob(f"/tmp/ray/session_*_{driver}/gcs_server_port_*")
    if ports and open(ports[0]).read().strip():
        break
    assert time.monotonic() < deadline, "the CLI's Ray never came up"
    time.sleep(0.1)
ray.init(address=f"{services.get_node_ip_address()}:{open(ports[0]).read().strip()}", logging_level="ERROR")

def label_actors():
    return {actor["ActorID"]: actor for actor in state.actors().values()
            if actor["State"] == "ALIVE" and "_LabelActor" in actor["ActorClassName"]}

while not label_actors():
    assert time.monotonic() < deadline, "the model actor never came up"
    time.sleep(0.05)
time.sleep(wait_s)
actor_id, actor = next(iter(label_actors().items()))
os.kill(actor["Pid"], signal.SIGKILL)
committed = sum(len(open(path).read().splitlines()) for path in glob.glob(os.path.join(shards, "part-*.jsonl")))
while (alive := label_actors()).get(actor_id, actor)["Pid"] == actor["Pid"]:  # one listing per look: it may change
    assert time.monotonic() < deadline, "the actor was not restarted"
    time.sleep(0.05)
restarted = alive[actor_id]
print(json.dumps([actor["Pid"], restarted["Pid"], restarted["NumRestarts"], committed]))
"""


def test_killed_model_actor_is_replaced_and_its_images_redone(scenes_folder, reference_coco, tmp_path):
    out = tmp_path / "ray"
    process = start_ray_run(scenes_folder, out)
    try:
        killer = subprocess.run([sys.executable, "-c", KILL_ACTOR, str(process.pid), "0.3", str(out / "shards")],
                                capture_output=True, text=True, timeout=300,
                                env={**batch_env(), "RAY_AUTH_MODE": "token"})  # a local Ray starts with a token
        assert killer.returncode == 0, killer.stderr[-3000:]
        killed, replacement, restarts, committed = json.loads(killer.stdout.strip().splitlines()[-1])
        assert killed != replacement and restarts >= 1
        assert committed < SCENES, "the actor was killed after the run's work was done"
        stdout, stderr = process.communicate(timeout=240)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 1, stderr[-3000:]
    assert f"{SCENES}/{SCENES + 1} images" in stdout
    assert_same_coco(json.loads((out / "coco.json").read_text()), reference_coco)
    assert_each_image_once(out)


def test_without_ray_the_cli_says_how_to_install_it(scenes_folder, tmp_path, monkeypatch, capsys):
    from grounding.batch.__main__ import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as where it is not installed
    monkeypatch.setitem(sys.modules, "ray.data", None)
    out = tmp_path / "out"
    code = main(["--images", str(scenes_folder), "--prompt", PROMPT, "--out", str(out), "--detector", "shapes",
                 "--engine", "ray"])
    assert code == 2
    error = capsys.readouterr().err
    assert "pip install -r requirements-ray.txt" in error and "--engine local" in error
    assert not out.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--actors", "0"], "actors must be at least 1"),
    (["--num-gpus", "-1"], "GPUs per actor"),
    (["--ray-address", "127.0.0.1:1"], "nothing answers at 127.0.0.1:1"),
    (["--ray-address", "not an address"], "is not auto, host:port"),
    (["--ray-num-cpus", "2", "--actors", "2"], "need 3 CPUs; this Ray has 2"),  # a local Ray would wait forever
    (["--ray-num-cpus", "2", "--detector", "/nonexistent/detector.pth"], "the model actors could not start"),
])
def test_bad_ray_options_exit_2_with_a_message(scenes_folder, tmp_path, capsys, args, message):
    from grounding.batch.__main__ import main

    code = main(["--images", str(scenes_folder), "--prompt", PROMPT, "--out", str(tmp_path / "out"), "--detector",
                 "shapes", "--engine", "ray", *args])
    assert code == 2
    assert message in capsys.readouterr().err
