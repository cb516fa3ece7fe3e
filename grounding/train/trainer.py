"""The training loop: AdamW, linear warm-up + cosine decay, gradient clipping, periodic checkpoints, resume.

Checkpoints use the official layout (`{"model": state_dict}` with the official keys) plus "config" (the
model's `GroundingDINOConfig.to_dict()`), so they load wherever an official checkpoint does; training state
("optimizer", "scheduler", "epoch", "step", "train_config") rides along for `--resume`.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from grounding.checkpoint import KNOWN_WEIGHTS, load_model, save_checkpoint, state_dict_on_cpu
from grounding.config import PRESETS
from grounding.model import GroundingDINO
from grounding.train.data import CocoGroundingDataset, GroundingBatch, collate, single_thread_worker
from grounding.train.losses import GroundingCriterion

LAST_CHECKPOINT = "checkpoint_last.pth"
FINAL_WEIGHTS = "model.pth"


@dataclass
class TrainConfig:
    epochs: int = 12
    batch_size: int = 4
    lr: float = 1e-4
    lr_backbone: float | None = None  # Swin + BERT; None = lr (from scratch). Fine-tuning: about lr / 10
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    clip_max_norm: float = 0.1
    checkpoint_every: int = 200  # steps between checkpoint_last.pth writes (also written after every epoch)
    log_every: int = 10  # steps between log.jsonl lines
    num_workers: int = 0  # DataLoader worker processes
    seed: int = 0
    # With a time limit: the cosine follows whichever is further along, steps or the time limit, so a time-boxed
    # run still anneals (steps then depend on the hardware's speed).
    anneal_to_time_limit: bool = False


SCRATCH_PREFIX = "scratch:"


def build_model(init: str | Path) -> GroundingDINO:
    """The model training starts from.

    "scratch:<preset>" (e.g. "scratch:swint_ogc") or a preset that names no released weights ("tiny") gives
    random weights of that config; anything else is loaded by `grounding.checkpoint.load_model`: a local .pth
    (official, or ours with "config") / .safetensors / HF folder, or a known name ("swint_ogc",
    "IDEA-Research/grounding-dino-tiny", ...) fetched from the hub.
    """
    name = str(init)
    preset = name.removeprefix(SCRATCH_PREFIX)
    if name.startswith(SCRATCH_PREFIX) or (name in PRESETS and name not in KNOWN_WEIGHTS and not Path(name).exists()):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        return GroundingDINO(PRESETS[preset]())
    model, _ = load_model(init)
    return model


class WarmupCosine:
    """Learning-rate factor per step: linear warm-up, then cosine from 1 to `floor`.

    Progress along the cosine is the fraction of steps done or, after `anneal_until(deadline)`, the fraction
    of that time window when further along (a time-boxed run still anneals). A resumed run continues from the
    progress it had reached (`state_dict`), so its learning rate does not jump back up."""

    def __init__(self, warmup_steps: int, total_steps: int, floor: float) -> None:
        self.warmup_steps, self.total_steps, self.floor = warmup_steps, total_steps, floor
        self.progress = 0.0  # furthest progress reached, in [0, 1]
        self._window: tuple[float, float, float] | None = None  # (start, deadline, progress at start)

    def anneal_until(self, deadline: float) -> None:
        """Finish the cosine at `deadline` (time.monotonic()), starting from the progress reached so far."""
        self._window = (time.monotonic(), deadline, self.progress)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        if self._window is not None:
            start, end, reached = self._window
            elapsed = min(1.0, (time.monotonic() - start) / max(end - start, 1e-9))
            progress = max(progress, reached + (1 - reached) * elapsed)
        self.progress = max(self.progress, progress)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * self.progress))

    def state_dict(self) -> dict[str, float]:
        return {"progress": self.progress}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.progress = float(state.get("progress", 0.0))


def _is_backbone(name: str) -> bool:
    return name.startswith(("backbone.", "bert."))


class TrainingLoop:
    """What every trainer here shares: AdamW with `WarmupCosine` (optionally annealed to a time limit), epochs in
    a seeded order that a resumed run continues mid-epoch, log lines, periodic resumable checkpoints written
    atomically, final weights. A subclass gives `train_step` (ending in `optimizer_step`) and
    `write_final_weights`, and may add to `checkpoint_extras` and `start_epoch`.

    `config` is a dataclass with epochs, batch_size, lr, weight_decay, warmup_steps, min_lr_ratio,
    checkpoint_every, log_every, num_workers, seed and anneal_to_time_limit."""

    log_name = "log.jsonl"
    last_checkpoint = LAST_CHECKPOINT
    progress_label = "train"

    def __init__(self, model: nn.Module, dataset: Dataset, out_dir: str | Path, config: Any,
                 device: str | torch.device, param_groups: Iterable[Any], collate_fn: Callable) -> None:  # fmt: skip
        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.optimizer = torch.optim.AdamW(param_groups, lr=config.lr, weight_decay=config.weight_decay)
        self.steps_per_epoch = math.ceil(len(dataset) / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.schedule = WarmupCosine(config.warmup_steps, self.total_steps, config.min_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step = 0  # optimizer steps done

    def _lr_factor(self, step: int) -> float:
        return self.schedule(step)

    def start_epoch(self, epoch: int) -> None:
        """Called before an epoch's batches are drawn (e.g. to reseed per-epoch sampling in the dataset)."""

    def _batches(self, epoch: int, skip: int) -> Iterable[Any]:
        """The epoch's batches in a seeded order, skipping the first `skip` (resume mid-epoch)."""
        self.start_epoch(epoch)
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.config.seed * 100_003 + epoch))
        size = self.config.batch_size
        batches = [order[start : start + size].tolist() for start in range(skip * size, len(order), size)]
        return DataLoader(self.dataset, batch_sampler=batches, collate_fn=self.collate_fn,
                          num_workers=self.config.num_workers, worker_init_fn=single_thread_worker)

    def train_step(self, batch: Any) -> dict[str, float]:
        """One optimizer step on `batch`; returns the step's losses as floats."""
        raise NotImplementedError

    def optimizer_step(self, loss: Tensor, clip_max_norm: float = 0.0) -> None:
        """Backward of `loss`, optional gradient clipping, optimizer and schedule step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_max_norm > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), clip_max_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1

    def write_final_weights(self) -> None:
        raise NotImplementedError

    def checkpoint_extras(self) -> dict[str, Any]:
        """More entries for the resumable checkpoint."""
        return {}

    def fit(self, progress: bool = True, time_limit_s: float | None = None) -> dict[str, float]:
        """Train until `config.epochs` are done (continuing from `self.step` after `resume`), or until
        the step during which `time_limit_s` seconds pass (then `resume` can finish the run). Returns the last
        step's losses; writes the last checkpoint and the final weights."""
        deadline = math.inf if time_limit_s is None else time.monotonic() + time_limit_s
        if self.config.anneal_to_time_limit and time_limit_s is not None:
            self.schedule.anneal_until(deadline)
        torch.manual_seed(self.config.seed + self.step)
        random.seed(self.config.seed + self.step)
        np.random.seed(self.config.seed + self.step)
        last: dict[str, float] = {}
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not progress, desc=self.progress_label, unit="step")
        with (self.out_dir / self.log_name).open("a") as log:
            out_of_time = False
            while self.step < self.total_steps and not out_of_time:
                epoch, done_in_epoch = divmod(self.step, self.steps_per_epoch)
                for batch in self._batches(epoch, done_in_epoch):
                    last = self.train_step(batch)
                    lr = self.scheduler.get_last_lr()[0]
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{last['loss']:.3f}", lr=f"{lr:.2e}")
                    if self.step % self.config.log_every == 0:
                        log.write(json.dumps({"step": self.step, "epoch": epoch, "lr": lr, **last}) + "\n")
                        log.flush()
                    if self.config.checkpoint_every and self.step % self.config.checkpoint_every == 0:
                        self.save(self.out_dir / self.last_checkpoint)
                    out_of_time = time.monotonic() >= deadline
                    if out_of_time:
                        break
                self.save(self.out_dir / self.last_checkpoint)
        bar.close()
        self.write_final_weights()
        return last

    def save(self, path: str | Path) -> None:
        """Write {"model", "optimizer", "scheduler", "schedule", "step", "epoch", "train_config", extras}
        atomically."""
        checkpoint: dict[str, Any] = {
            "model": state_dict_on_cpu(self.model),
            **self.checkpoint_extras(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "schedule": self.schedule.state_dict(),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "train_config": asdict(self.config),
        }
        path = Path(path)
        temporary = path.with_suffix(path.suffix + ".tmp")
        torch.save(checkpoint, temporary)
        temporary.replace(path)

    def resume(self, path: str | Path) -> None:
        """Restore weights, optimizer, schedule and step from a checkpoint written by `save`."""
        checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.schedule.load_state_dict(checkpoint.get("schedule", {}))
        self.step = int(checkpoint["step"])


class Trainer(TrainingLoop):
    """Trains `model` on `dataset` with `GroundingCriterion`, writing checkpoints and log.jsonl to `out_dir`."""

    def __init__(
        self,
        model: GroundingDINO,
        dataset: CocoGroundingDataset,
        out_dir: str | Path,
        config: TrainConfig | None = None,
        device: str | torch.device = "cpu",
        criterion: nn.Module | None = None,
    ) -> None:
        config = config or TrainConfig()
        lr_backbone = config.lr if config.lr_backbone is None else config.lr_backbone
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # shared modules listed once
        param_groups = [
            {"params": [p for n, p in named if not _is_backbone(n)], "lr": config.lr},
            {"params": [p for n, p in named if _is_backbone(n)], "lr": lr_backbone},
        ]
        super().__init__(model, dataset, out_dir, config, device, param_groups, collate)
        self.criterion = criterion or GroundingCriterion()

    def start_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def train_step(self, batch: GroundingBatch) -> dict[str, float]:
        """One optimizer step; returns the step's losses as floats."""
        self.model.train()
        batch = batch.to(self.device)
        outputs = self.model(
            batch.input_ids, batch.attention_mask, pixel_values=batch.pixel_values, pixel_mask=batch.pixel_mask
        )
        losses = self.criterion(outputs, batch.targets)
        self.optimizer_step(losses["loss"], self.config.clip_max_norm)
        return {name: float(value.detach()) for name, value in losses.items()}

    def write_final_weights(self) -> None:
        """`model.pth`: weights + config only (`grounding.checkpoint.save_checkpoint`)."""
        save_checkpoint(self.model, self.out_dir / FINAL_WEIGHTS)

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"config": self.model.config.to_dict()}
