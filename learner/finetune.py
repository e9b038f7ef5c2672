"""Online fine-tuning: the learner consuming windows from replay and publishing weights.

The loop takes its collaborators explicitly: an iterator of numpy window batches
(the Reverb dataset in a real run), a `publish(step, arrays)` function, a
`counters()` function giving replay counts and environment steps, a TensorBoard
writer and a stop predicate. It never waits on actors except through the batch
iterator, which the replay rate limiter holds back.

Logs loss/*, policy/*, replay/* (size, inserts, samples, env_steps),
throughput/updates_per_s and throughput/sample_wait_fraction (the share of wall
time spent waiting for the next batch).

`data_parallel_finetune_loop` runs the same loop on every rank of a data-parallel
learner (learner/distributed.py); in a single process it is `finetune_loop`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from learner import distributed
from learner.checkpoint import (
    CheckpointError,
    convert_policy_head,
    learner_payload,
    model_config_from,
    save_checkpoint,
)
from learner.config import DEFAULT_COMPUTE, ComputeConfig
from learner.device import to_device
from learner.learner import Learner, NonFiniteGuard
from learner.tensorboard import NullWriter


def learner_from_checkpoint(payload: dict, objective, optim, device,
                            compute: ComputeConfig = DEFAULT_COMPUTE) -> Learner:
    """A Learner starting from a pretrained (or earlier fine-tuned) checkpoint.

    Same objective: the whole learner state (optimizers, warm-up schedule, temperature)
    continues. Another objective: the model weights carry over (a Gaussian head's mu
    becomes the deterministic head), optimizers start fresh and the warm-up schedule
    continues from the checkpoint's update count.
    """
    model_cfg = model_config_from(payload)
    learner = Learner(model_cfg, objective, optim, device, compute)
    state = payload["learner"]
    if payload["objective"]["kind"] == objective.kind:
        learner.load_state_dict(state)
        return learner
    model_state = convert_policy_head(state["model"],
                                      learner.rule.head_for(learner.model_cfg.action_kind))
    try:
        learner.model.load_state_dict(model_state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit the model ({exc})") from exc
    learner.set_state_normalization(learner.model.state_mean, learner.model.state_std)
    learner.step = int(state["step"])
    learner.scheduler.last_epoch = learner.step
    for group, base in zip(learner.optimizer.param_groups, learner.scheduler.base_lrs):
        group["lr"] = base * min((learner.step + 1) / max(optim.warmup_steps, 1), 1.0)
    return learner


def weights_as_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The model's state as float32 numpy arrays (a device-to-host copy)."""
    return {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}


@dataclass
class FinetuneStats:
    updates: int
    seconds: float
    wait_seconds: float

    @property
    def updates_per_s(self) -> float:
        return self.updates / self.seconds if self.seconds > 0 else 0.0

    @property
    def sample_wait_fraction(self) -> float:
        return self.wait_seconds / self.seconds if self.seconds > 0 else 0.0


def finetune_loop(
    learner: Learner,
    batches: Iterator[dict[str, np.ndarray]],
    *,
    publish: Callable[[int, dict[str, np.ndarray]], None],
    counters: Callable[[], dict[str, float]],
    writer,
    should_stop: Callable[[], bool],
    publish_every: int,
    log_every: int,
    checkpoint_every: int,
    checkpoint: Callable[[], None],
    max_nonfinite_updates: int = 10,
) -> FinetuneStats:
    """Update until `should_stop()` or the batches run out; returns throughput figures.

    An update with a NaN or inf loss is skipped (`Learner.update`) and logged as
    `loss/nonfinite_skipped` (the run's total); `max_nonfinite_updates` of them in a
    row raise NonFiniteLoss, before any further checkpoint, so the last checkpoint
    written is the last good one.
    """
    device = learner.device
    guard = NonFiniteGuard(learner, max_nonfinite_updates)
    publish(learner.step, weights_as_arrays(learner.model))
    start = window_start = time.perf_counter()
    wait = window_wait = 0.0
    updates = window_updates = 0
    while not should_stop():
        t0 = time.perf_counter()
        batch = next(batches, None)
        waited = time.perf_counter() - t0
        wait += waited
        window_wait += waited
        if batch is None:
            break
        metrics = learner.update(to_device(batch, device))
        if "loss/nonfinite" in metrics:
            writer.scalar("loss/nonfinite_skipped", learner.skipped, learner.step)
        if guard.skipped():
            continue
        updates += 1
        window_updates += 1
        if learner.step % publish_every == 0:
            publish(learner.step, weights_as_arrays(learner.model))
        if learner.step % log_every == 0:
            now = time.perf_counter()
            values = {k: float(v) for k, v in metrics.items()}  # one host sync per interval
            values["throughput/updates_per_s"] = window_updates / (now - window_start)
            values["throughput/sample_wait_fraction"] = window_wait / (now - window_start)
            values.update({f"replay/{k}": v for k, v in counters().items()})
            writer.scalars(values, learner.step)
            window_start, window_wait, window_updates = now, 0.0, 0
        if learner.step % checkpoint_every == 0:
            checkpoint()
    publish(learner.step, weights_as_arrays(learner.model))
    return FinetuneStats(updates, time.perf_counter() - start, wait)


def data_parallel_finetune_loop(
    learner: Learner,
    batches: Iterator[dict[str, np.ndarray]],
    *,
    publish: Callable[[int, dict[str, np.ndarray]], None],
    counters: Callable[[], dict[str, float]],
    writer,
    should_stop: Callable[[], bool],
    publish_every: int,
    log_every: int,
    checkpoint_every: int,
    checkpoint: Callable[[], None],
    max_nonfinite_updates: int = 10,
) -> FinetuneStats:
    """`finetune_loop` on this rank of a data-parallel learner; the plain loop in one process.

    Every rank passes its own `batches` and the same collaborators. Rank 0's weights go
    to every rank first; each update averages gradients across ranks (`Learner.update`),
    so one update of the group trains on every rank's batch at once. The loop ends on
    every rank after the same update: when any rank's batches end or any rank's
    `should_stop()` is true. Only rank 0 publishes, checkpoints, reads the counters and
    writes to `writer`; the other ranks' collaborators are never called. Logged losses
    are rank 0's batch's.
    """
    if distributed.is_distributed():
        learner.broadcast_parameters()
        # lockstep decides when to stop, the same on every rank.
        batches, should_stop = distributed.lockstep(batches, should_stop), _never
        if not distributed.is_main():
            publish, counters, writer, checkpoint = _ignore, dict, NullWriter(), _ignore
    return finetune_loop(
        learner,
        batches,
        publish=publish,
        counters=counters,
        writer=writer,
        should_stop=should_stop,
        publish_every=publish_every,
        log_every=log_every,
        checkpoint_every=checkpoint_every,
        checkpoint=checkpoint,
        max_nonfinite_updates=max_nonfinite_updates,
    )


def _never() -> bool:
    return False


def _ignore(*args) -> None:
    pass


def save_learner(path: Path, learner: Learner, **extra) -> Path:
    return save_checkpoint(path, learner_payload(learner, updates=learner.step, **extra))

