"""The Ray engine: the same per-image steps as the local engine, as a Ray Data stream.

    items (driver) -> read_image: CPU tasks -> label_image: actor pool, models loaded once per actor (GPU actors
    with num_gpus) -> encode_record: CPU tasks -> records streamed back to the driver, which commits the shards

Ray Data streams blocks of `batch_size` images through the three stages at once (reading and encoding overlap
the models), restarts an actor that dies and retries its block. The driver alone writes OUT (`RunFolder`), so
a record that arrives twice is dropped and a killed run loses at most the records not yet committed.

Ray is optional (`requirements-ray.txt`); it is imported only when this engine runs.
"""
from __future__ import annotations

import logging
import math
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grounding.batch.config import BatchConfig, RayConfig
from grounding.batch.inputs import ImageItem
from grounding.batch.records import (EncodedImage, LabelledImage, ReadImage, encode_record, from_row, label_image,
                                     load_pipeline, read_image, to_row)
from grounding.errors import BatchRunError, GroundingError, MissingDependencyError

INSTALL_HINT = "pip install -r requirements-ray.txt"
REPO_ROOT = Path(__file__).resolve().parents[2]


def import_ray() -> Any:
    """The `ray` module with Ray Data, else MissingDependencyError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the engine needs Ray Data, not only Ray core)
    except ImportError as error:
        raise MissingDependencyError(
            f"--engine ray needs Ray Data, which is not installed here: {INSTALL_HINT} (ray[data]). "
            "--engine local needs nothing more."
        ) from error
    return ray


def run_ray(todo: list[ImageItem], config: BatchConfig, ray_config: RayConfig,
            keep: Callable[[EncodedImage], None], flush: Callable[[], None] = lambda: None) -> None:
    """Label `todo` on Ray (a local one started here unless `ray_config.address`), handing each finished image to
    `keep` as it arrives; `flush` runs before Ray is shut down (so kept records are committed first)."""
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        _start(ray, ray_config)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver shows one bar for the whole run
        context.wait_for_min_actors_s = ray_config.wait_for_actors_s
        # not the execution plan of every run, nor a failure's stack trace: `_failure` says what went wrong
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        resources = ray.cluster_resources()
        on_cpu = config.device is not None and torch.device(config.device).type == "cpu"
        gpus = ray_config.num_gpus if ray_config.num_gpus is not None else (
            1.0 if resources.get("GPU", 0) > 0 and not on_cpu else 0.0)
        blocks = math.ceil(len(todo) / ray_config.batch_size)
        actors = min(ray_config.actors or _default_actors(resources, gpus, ray_config.cpus_per_actor), blocks)
        if ray_config.address is None:  # a cluster may scale up to fit; a local Ray never will
            _check_fits(resources, actors, gpus, ray_config.cpus_per_actor)
        device = "cuda" if gpus > 0 else (config.device or "cpu")  # a GPU actor sees only the GPU Ray gave it
        items = [{"id": item.id, "path": item.path} for item in todo]
        stream = (
            ray.data.from_items(items, override_num_blocks=blocks)
            .map_batches(_read_batch, fn_kwargs={"config": config}, batch_size=ray_config.batch_size, num_cpus=1)
            .map_batches(
                _LabelActor, fn_constructor_kwargs={"config": config, "device": device,
                                                    "threads": ray_config.cpus_per_actor},
                batch_size=ray_config.batch_size, compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=gpus,
                num_cpus=ray_config.cpus_per_actor,
            )
            .map_batches(_encode_batch, batch_size=ray_config.batch_size, num_cpus=1)
        )
        rows = iter(stream.iter_rows())
        while True:
            try:
                row = next(rows)
            except StopIteration:
                break
            except Exception as error:  # Ray wraps what failed on a worker; say it in one line
                raise _failure(error) from None
            keep(from_row(EncodedImage, row))
    finally:
        try:
            flush()
        finally:
            if started_here:
                ray.shutdown()


def _check_fits(resources: dict[str, float], actors: int, gpus: float, cpus_per_actor: int) -> None:
    """Refuse settings a local Ray cannot run (Ray would wait for resources forever)."""
    cpus, gpus_there = resources.get("CPU", 0), resources.get("GPU", 0)
    if gpus > 0 and actors * gpus > gpus_there:
        raise BatchRunError(f"{actors} actors x {gpus:g} GPUs need {actors * gpus:g} GPUs; this Ray has {gpus_there:g}")
    if actors * cpus_per_actor + 1 > cpus:
        raise BatchRunError(f"{actors} actors x {cpus_per_actor} CPUs, plus one CPU for reading and encoding, need "
                            f"{actors * cpus_per_actor + 1} CPUs; this Ray has {cpus:g} (--ray-num-cpus, --actors, "
                            "--cpus-per-actor)")


def _start(ray: Any, ray_config: RayConfig) -> None:
    """A local Ray whose workers import this checkout, or a connection to a cluster whose nodes have this package
    installed (README "Labelling a dataset on Ray"). Workers' output stays in Ray's logs, not on this terminal."""
    quiet = dict(logging_level=logging.WARNING, log_to_driver=False)
    if ray_config.address not in (None, "auto"):
        _check_reachable(ray_config.address)
    try:
        if ray_config.address is None:
            path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
            ray.init(address="local", num_cpus=ray_config.num_cpus, include_dashboard=False,
                     runtime_env={"env_vars": {"PYTHONPATH": path}}, **quiet)
        else:
            ray.init(address=ray_config.address, **quiet)
    except Exception as error:  # ConnectionError, ValueError, RuntimeError, ... depending on what is wrong
        where = f"the Ray cluster at {ray_config.address}" if ray_config.address else "a local Ray"
        raise BatchRunError(f"could not start {where}: {_first_line(error)}") from None


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not minutes, when nothing listens at a cluster address ("host:port", "ray://host:port")."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise BatchRunError(f"--ray-address {address!r} is not auto, host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise BatchRunError(f"nothing answers at {address} ({error.strerror or error}); is the Ray head running there?") from None


def _failure(error: BaseException) -> GroundingError:
    """The error to show for a failed Ray run: ours when a worker raised one (a model that cannot load), else Ray's
    first line."""
    chain, stack = [], [error]
    while stack:
        current = stack.pop()
        if current is None or any(current is seen for seen in chain):
            continue
        if isinstance(current, GroundingError):  # a worker's own error comes back wrapped: give the original
            cause = getattr(current, "cause", None)
            return cause if isinstance(cause, GroundingError) else current
        chain.append(current)
        stack += [getattr(current, "cause", None), current.__cause__, current.__context__]
    ours = re.findall(r"grounding\.errors\.\w+: (.+)", "\n".join(str(getattr(e, "error_msg", "") or e) for e in chain))
    if ours:  # an actor's constructor failed: Ray keeps only its text
        return BatchRunError(f"the model actors could not start: {ours[-1]}")
    return BatchRunError(f"the Ray run stopped: {type(error).__name__}: {_first_line(error)}. The finished images "
                         "are kept; run the same command again to continue (Ray's logs: /tmp/ray/session_latest/logs)")


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def _default_actors(resources: dict[str, float], gpus: float, cpus_per_actor: int) -> int:
    """One actor per GPU share; on CPUs, the CPUs less one for reading and encoding, per actor."""
    if gpus > 0:
        return max(1, int(resources.get("GPU", 0) // gpus))
    return max(1, (int(resources.get("CPU", 1)) - 1) // cpus_per_actor)


def _rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    names = list(batch)
    return [dict(zip(names, values)) for values in zip(*(batch[name] for name in names))]


def _columns(rows: list[dict[str, Any]], kind: type) -> dict[str, list[Any]]:
    return {name: [row[name] for row in rows] for name in kind.__dataclass_fields__}


def _read_batch(batch: dict[str, np.ndarray], config: BatchConfig) -> dict[str, list[Any]]:
    rows = [to_row(read_image(ImageItem(str(row["id"]), str(row["path"]), ""), config)) for row in _rows(batch)]
    return _columns(rows, ReadImage)


def _encode_batch(batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
    rows = [to_row(encode_record(from_row(LabelledImage, row))) for row in _rows(batch)]
    return _columns(rows, EncodedImage)


class _LabelActor:
    """One model replica: loads the run's models once, then labels block after block."""

    def __init__(self, config: BatchConfig, device: str, threads: int) -> None:
        torch.set_num_threads(threads)
        self.config = config
        self.pipeline = load_pipeline(config, device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        rows = [to_row(label_image(self.pipeline, from_row(ReadImage, row), self.config)) for row in _rows(batch)]
        return _columns(rows, LabelledImage)
