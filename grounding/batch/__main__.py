"""Images in, annotations out: `python -m grounding.batch --images DIR --prompt "cat . dog ." --out DIR`.

Writes `OUT/coco.json` (every image, RLE masks, in each stored image's frame), `OUT/annotated/<name>.png`
(masks, boxes, labels; `--no-annotated` skips them) and, with `--save-masks`, `OUT/masks/<name>/NNN_phrase.png`.
Results are committed in shards under `OUT/shards/` as they come, so a stopped run (Ctrl-C, a crash, a lost
machine) finishes when the same command runs again. `--engine ray` runs the models in a Ray Data actor pool
(local, or a cluster with `--ray-address`). Images that cannot be read are recorded in `OUT/failed.json`,
reported, and retried by a rerun. Exit status: 0 every image done, 1 some images failed, 2 the run could not
start or stopped (bad options, weights, an unreachable cluster, ...), 3 an unexpected error, 130 interrupted
(Ctrl-C or SIGTERM; what was finished is kept).
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from grounding.batch import label_dataset
from grounding.batch.config import ENGINES, BatchConfig, RayConfig
from grounding.cli_options import add_model_options
from grounding.errors import GroundingError
from grounding.pipeline import GroundedSAM


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults, ray_defaults = BatchConfig(prompt="x"), RayConfig()
    parser = argparse.ArgumentParser(prog="python -m grounding.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True,
                        help='a folder (not recursive), a quoted glob ("data/**/*.jpg"), or a .txt / .parquet '
                             "(column `path`) list of image paths")
    parser.add_argument("--prompt", required=True, help='phrases separated by ".", e.g. "cat . remote control ."')
    parser.add_argument("--out", type=Path, required=True, help="output folder (created; a rerun resumes it)")
    add_model_options(parser, defaults.box_threshold, defaults.text_threshold)
    parser.add_argument("--multimask", action="store_true", help="best of SAM's three masks per box")
    parser.add_argument("--save-masks", action="store_true", help="also write one PNG per object")
    parser.add_argument("--no-annotated", action="store_true", help="do not write annotated pictures")
    parser.add_argument("--shard-size", type=int, default=defaults.shard_size,
                        help="images per committed shard (a shard is also committed every minute)")
    engine = parser.add_argument_group("engine")
    engine.add_argument("--engine", choices=ENGINES, default="local",
                        help="local: this process; ray: a Ray Data actor pool (pip install -r requirements-ray.txt)")
    engine.add_argument("--ray-address", default=None,
                        help='join a running Ray cluster ("auto", "ray://head:10001"); default: start a local Ray')
    engine.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs of the local Ray started here (default all)")
    engine.add_argument("--actors", type=int, default=None,
                        help="model actors (default: one per GPU, or on CPUs one per --cpus-per-actor CPUs, one CPU "
                             "kept for reading)")
    engine.add_argument("--num-gpus", type=float, default=None,
                        help="GPUs per actor (default: 1 when the cluster has GPUs, else 0; 0.5 puts two on a GPU)")
    engine.add_argument("--cpus-per-actor", type=int, default=ray_defaults.cpus_per_actor,
                        help="CPUs (torch threads) per actor")
    engine.add_argument("--batch-size", type=int, default=ray_defaults.batch_size, help="images per block sent to an actor")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, pipeline: GroundedSAM | None = None) -> int:
    """Label the images; returns the exit status. `pipeline` overrides loading models (local engine)."""
    try:
        config = BatchConfig(
            prompt=args.prompt, detector=args.detector, sam=None if args.sam.lower() == "none" else args.sam,
            sam_checkpoint=str(args.sam_checkpoint) if args.sam_checkpoint else None, device=args.device,
            precision=args.precision, download=not args.no_download, box_threshold=args.box_threshold,
            text_threshold=args.text_threshold, nms_iou=args.nms_iou, multimask=args.multimask,
            annotated=not args.no_annotated, save_masks=args.save_masks, shard_size=args.shard_size,
        )
        ray_config = RayConfig(address=args.ray_address, num_cpus=args.ray_num_cpus, actors=args.actors,
                               num_gpus=args.num_gpus, cpus_per_actor=args.cpus_per_actor, batch_size=args.batch_size)
        summary = label_dataset(args.images, args.out, config, engine=args.engine, ray_config=ray_config,
                                pipeline=pipeline)
    except GroundingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: the finished images are kept in {args.out / 'shards'}; run the same command again to "
              "finish", file=sys.stderr)
        return 130
    except OSError as error:
        print(f"error: {error.filename or args.out}: {error.strerror or error}", file=sys.stderr)
        return 2
    except Exception as error:  # a bug: one line, not a traceback; what was committed stays
        print(f"error: unexpected {type(error).__name__}: {error}. The finished images are kept in "
              f"{args.out / 'shards'}; please report this.", file=sys.stderr)
        return 3
    print(f"{summary.images}/{summary.images + len(summary.failed)} images, {summary.objects} objects -> {args.out}")
    for image_id, error in summary.failed.items():
        print(f"failed: {image_id}: {error}", file=sys.stderr)
    return 0 if not summary.failed else 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if threading.current_thread() is not threading.main_thread():  # signals can only be handled there
        return run(args)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a stopped job (kill, a scheduler) keeps its work too
    try:
        return run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
