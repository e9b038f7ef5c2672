"""Fixed-length experience windows: the one format the learner trains on.

An item is a window of K steps ending at step t of an episode, left-padded with
mask 0 before the episode start (DESIGN.md, "Experience format"). One window per
step, so sampling windows uniformly is ODT's trajectory sampling in proportion to
length. Returns-to-go are the undiscounted sums of the rewards the episode actually
achieved (hindsight relabelling), computed once per episode.

Everything here is numpy; the offline sampler and the actors' Reverb writer both
build windows through `gather_windows`, so there is one code path for them.

Actions in windows are in the normalized box [-1, 1] (see `ActionBox`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Column name -> (per-step shape kind, dtype). 'obs' and 'act' take the space shapes.
WINDOW_COLUMNS: dict[str, tuple[str, type]] = {
    "observations": ("obs", np.float32),
    "actions": ("act", np.float32),
    "rewards": ("scalar", np.float32),
    "returns_to_go": ("scalar", np.float32),
    "timesteps": ("scalar", np.int32),
    "mask": ("scalar", np.float32),
    "next_observations": ("obs", np.float32),
    "terminated": ("scalar", np.float32),
}


def window_shapes(context_len: int, obs_shape: Sequence[int], act_shape: Sequence[int]):
    """Column name -> (shape, dtype) of one window, for Reverb signatures and buffers."""
    kinds = {"obs": tuple(obs_shape), "act": tuple(act_shape), "scalar": ()}
    return {
        name: ((context_len, *kinds[kind]), dtype) for name, (kind, dtype) in WINDOW_COLUMNS.items()
    }


class StoredSteps:
    """How a step is stored in Reverb: every float32 column flattened into one vector
    ('floats', in WINDOW_COLUMNS order) and the int32 'timesteps' on their own.

    Two columns instead of eight because a Reverb append and the item it creates cost
    per column; with the writer's longer flush interval this made writing 2.6x cheaper
    per step (DESIGN.md, "Performance").
    The learner never sees the packing: `unpack` gives back the WINDOW_COLUMNS dict.
    """

    FLOATS = "floats"
    TIMESTEPS = "timesteps"

    def __init__(self, obs_shape: Sequence[int], act_shape: Sequence[int]):
        self._shapes = {
            name: shape[1:] for name, (shape, _) in window_shapes(1, obs_shape, act_shape).items()
        }
        self._slices: dict[str, slice] = {}
        start = 0
        for name, (_, dtype) in WINDOW_COLUMNS.items():
            if dtype is np.float32:
                size = int(np.prod(self._shapes[name], dtype=np.int64))
                self._slices[name] = slice(start, start + size)
                start += size
        self.width = start
        """Length of the packed float vector of one step."""

    def shapes(self, context_len: int) -> dict[str, tuple[tuple[int, ...], type]]:
        """Stored column -> (shape, dtype) of one window: the table's signature."""
        return {
            self.FLOATS: ((context_len, self.width), np.float32),
            self.TIMESTEPS: ((context_len,), np.int32),
        }

    def pack(self, columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """WINDOW_COLUMNS arrays with a leading length L -> floats (L, width), timesteps (L,)."""
        length = len(columns["timesteps"])
        floats = np.empty((length, self.width), np.float32)
        for name, where in self._slices.items():
            floats[:, where] = np.reshape(columns[name], (length, -1))
        return floats, np.asarray(columns["timesteps"], np.int32)

    def unpack(self, stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Stored columns with any leading shape (..., K) -> the WINDOW_COLUMNS dict,
        float columns as views into `floats`."""
        floats = stored[self.FLOATS]
        lead = floats.shape[:-1]
        out = {}
        for name in WINDOW_COLUMNS:
            if name == "timesteps":
                out[name] = stored[self.TIMESTEPS]
            else:
                out[name] = floats[..., self._slices[name]].reshape(*lead, *self._shapes[name])
        return out


@dataclass(frozen=True)
class ActionBox:
    """Affine map between an environment's action box [low, high] and [-1, 1]."""

    low: np.ndarray
    high: np.ndarray

    @classmethod
    def from_bounds(cls, low, high) -> "ActionBox":
        return cls(np.asarray(low, np.float32), np.asarray(high, np.float32))

    def normalize(self, action: np.ndarray) -> np.ndarray:
        scaled = 2.0 * (action - self.low) / (self.high - self.low) - 1.0
        return np.clip(scaled, -1.0, 1.0).astype(np.float32)

    def to_env(self, action: np.ndarray) -> np.ndarray:
        action = np.clip(action, -1.0, 1.0)
        return (self.low + 0.5 * (action + 1.0) * (self.high - self.low)).astype(np.float32)


@dataclass
class FlatSteps:
    """Many episodes' steps concatenated, with what a window needs per step."""

    observations: np.ndarray  # (N, *obs) float32
    next_observations: np.ndarray  # (N, *obs) float32
    actions: np.ndarray  # (N, *act) float32 in [-1, 1]
    rewards: np.ndarray  # (N,) float32
    returns_to_go: np.ndarray  # (N,) float32, hindsight and undiscounted
    timesteps: np.ndarray  # (N,) int32, step index within its episode
    terminated: np.ndarray  # (N,) float32, 1 on the last step of a terminated episode
    episode_start: np.ndarray  # (N,) int64, flat index of the step's episode's first step

    def __len__(self) -> int:
        return len(self.rewards)


def returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """Undiscounted reverse cumulative sum, accumulated in float64."""
    return np.cumsum(rewards[::-1].astype(np.float64))[::-1].astype(np.float32)


def flatten_episode(
    observations: np.ndarray,  # (T+1, *obs): every observation, including the final one
    actions: np.ndarray,  # (T, *act) in [-1, 1]
    rewards: np.ndarray,  # (T,)
    terminated: bool,
) -> FlatSteps:
    T = len(actions)
    term = np.zeros(T, np.float32)
    if terminated and T:
        term[-1] = 1.0
    rewards = np.asarray(rewards, np.float32)
    return FlatSteps(
        observations=np.asarray(observations[:T], np.float32),
        next_observations=np.asarray(observations[1 : T + 1], np.float32),
        actions=np.asarray(actions, np.float32),
        rewards=rewards,
        returns_to_go=returns_to_go(rewards),
        timesteps=np.arange(T, dtype=np.int32),
        terminated=term,
        episode_start=np.zeros(T, np.int64),
    )


def concatenate(parts: Sequence[FlatSteps]) -> FlatSteps:
    """Join episodes; each part's episode_start is shifted to its flat offset."""
    offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
    return FlatSteps(
        observations=np.concatenate([p.observations for p in parts]),
        next_observations=np.concatenate([p.next_observations for p in parts]),
        actions=np.concatenate([p.actions for p in parts]),
        rewards=np.concatenate([p.rewards for p in parts]),
        returns_to_go=np.concatenate([p.returns_to_go for p in parts]),
        timesteps=np.concatenate([p.timesteps for p in parts]),
        terminated=np.concatenate([p.terminated for p in parts]),
        episode_start=np.concatenate([p.episode_start + o for p, o in zip(parts, offsets)]),
    )


def gather_windows(steps: FlatSteps, ends: np.ndarray, context_len: int) -> dict[str, np.ndarray]:
    """Windows of `context_len` steps ending at flat indices `ends`, left-padded.

    Returns a dict of WINDOW_COLUMNS arrays with leading shape (len(ends), K).
    Padded positions are all zeros with mask 0.
    """
    ends = np.asarray(ends, np.int64)
    idx = ends[:, None] + np.arange(1 - context_len, 1)  # (B, K)
    valid = idx >= steps.episode_start[ends][:, None]  # (B, K)
    idx = np.where(valid, idx, ends[:, None])  # any in-range index; zeroed below
    out = {
        "observations": steps.observations[idx],
        "actions": steps.actions[idx],
        "rewards": steps.rewards[idx],
        "returns_to_go": steps.returns_to_go[idx],
        "timesteps": steps.timesteps[idx],
        "next_observations": steps.next_observations[idx],
        "terminated": steps.terminated[idx],
    }
    for name, value in out.items():
        pad = ~valid.reshape(valid.shape + (1,) * (value.ndim - 2))
        out[name] = np.where(pad, np.zeros((), value.dtype), value)
    out["mask"] = valid.astype(np.float32)
    return out
