"""In-memory offline windows: what pretraining samples from, and the replay preload.

Numpy and the dataset types only; no Reverb here, so the learner's pretraining runs
on machines without it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from replay.datasets import Episode
from replay.windows import (
    ActionBox,
    FlatSteps,
    concatenate,
    flatten_episode,
    gather_windows,
)


def flatten_episodes(episodes: Sequence[Episode], action_box: ActionBox) -> FlatSteps:
    """Concatenate episodes for window gathering; actions mapped into [-1, 1]."""
    return concatenate(
        [
            flatten_episode(ep.observations, action_box.normalize(ep.actions), ep.rewards,
                            ep.terminated)
            for ep in episodes
            if ep.length > 0
        ]
    )


def state_statistics(episodes: Sequence[Episode],
                     std_floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of every state the episodes visit, float32: the std is ODT's
    std + 1e-6, raised to `std_floor` in each dimension where it is lower."""
    states = np.concatenate([ep.observations[: ep.length] for ep in episodes]).astype(np.float64)
    states = states.reshape(len(states), -1)
    std = np.maximum(states.std(0) + 1e-6, std_floor)
    return states.mean(0).astype(np.float32), std.astype(np.float32)


def top_episodes(episodes: Sequence[Episode], n: int) -> list[Episode]:
    """The n highest-return episodes, in ascending order of return.

    Inserted in this order into a FIFO replay, the worst of them leave first, as
    ODT's trajectory buffer does.
    """
    order = sorted(range(len(episodes)), key=lambda i: episodes[i].ret)
    return [episodes[i] for i in order[-n:]] if n > 0 else []


class OfflineSampler:
    """Uniform windows over all steps: trajectories drawn in proportion to length. A
    window ending at each drawn step is cut by `gather(steps, ends, context_len)`."""

    gather = staticmethod(gather_windows)

    def __init__(self, steps: FlatSteps, context_len: int, batch_size: int, seed: int = 0):
        if len(steps) == 0:
            raise ValueError("OfflineSampler needs at least one step")
        self.steps = steps
        self.context_len = context_len
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)

    def sample(self) -> dict[str, np.ndarray]:
        ends = self.rng.integers(0, len(self.steps), size=self.batch_size)
        return self.gather(self.steps, ends, self.context_len)
