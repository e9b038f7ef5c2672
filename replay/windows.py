"""Fixed-length experience windows: the one format the learner trains on.

An item is a window of K steps ending at step t of an episode, left-padded with
mask 0 before the episode start (DESIGN.md, "Experience format"). One window per
step, so sampling windows uniformly is ODT's trajectory sampling in proportion to
length. Returns-to-go are the undiscounted sums of the rewards the episode actually
achieved (hindsight relabelling), computed once per episode.

Everything here is numpy; the offline sampler and the actors' Reverb writer both
build windows through `gather_windows`, so there is one code path for them.

Actions in windows are in the normalized box [-1, 1] (see `ActionBox`), or action
indices (int32, one per step) for a discrete action space (`ActionIndex`).
Observations keep their dtype: float32 vectors, or uint8 image frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Column name -> (per-step shape kind, dtype). 'obs' and 'act' take the space shapes,
# and their dtypes are the defaults (float32) unless the spaces say otherwise.
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


SPACE_DTYPES = {"float32": np.float32, "uint8": np.uint8, "int32": np.int32}
"""The dtypes a space's column may have: float32 vectors and Box actions, uint8 frames,
int32 action indices."""


def space_dtype(name: str) -> type:
    """The numpy dtype `name` ('float32', 'uint8' or 'int32'); ValueError otherwise."""
    if name not in SPACE_DTYPES:
        raise ValueError(f"dtype {name!r} must be one of {', '.join(SPACE_DTYPES)}")
    return SPACE_DTYPES[name]


def window_shapes(context_len: int, obs_shape: Sequence[int], act_shape: Sequence[int],
                  obs_dtype: str = "float32", act_dtype: str = "float32"):
    """Column name -> (shape, dtype) of one window, for Reverb signatures and buffers.
    Observation columns take `obs_dtype`, the action column `act_dtype`."""
    kinds = {"obs": tuple(obs_shape), "act": tuple(act_shape), "scalar": ()}
    dtypes = {"obs": space_dtype(obs_dtype), "act": space_dtype(act_dtype)}
    return {
        name: ((context_len, *kinds[kind]), dtypes.get(kind, dtype))
        for name, (kind, dtype) in WINDOW_COLUMNS.items()
    }


class StoredSteps:
    """How a step is stored in Reverb: every float32 column flattened into one vector
    ('floats', in WINDOW_COLUMNS order), and every other column on its own in its own
    dtype: the int32 'timesteps', and uint8 frames ('observations',
    'next_observations') or int32 action indices ('actions') when the spaces have them.

    Few columns because a Reverb append and the item it creates cost per column; with
    the writer's longer flush interval packing made writing 2.6x cheaper per step
    (DESIGN.md, "Performance"). Frames stay uint8 (a quarter of float32's bytes).
    The learner never sees the packing: `unpack` gives back the WINDOW_COLUMNS dict.
    """

    FLOATS = "floats"
    TIMESTEPS = "timesteps"

    def __init__(self, obs_shape: Sequence[int], act_shape: Sequence[int],
                 obs_dtype: str = "float32", act_dtype: str = "float32"):
        columns = window_shapes(1, obs_shape, act_shape, obs_dtype, act_dtype)
        self._shapes = {name: shape[1:] for name, (shape, _) in columns.items()}
        self._own = {name: dtype for name, (_, dtype) in columns.items() if dtype is not np.float32}
        """Columns stored on their own, in their dtype."""
        self._slices: dict[str, slice] = {}
        start = 0
        for name, (_, dtype) in columns.items():
            if dtype is np.float32:
                size = int(np.prod(self._shapes[name], dtype=np.int64))
                self._slices[name] = slice(start, start + size)
                start += size
        self.width = start
        """Length of the packed float vector of one step."""

    @classmethod
    def for_spec(cls, spec) -> StoredSteps:
        """The packing of a `replay.tables.ReplaySpec`'s spaces."""
        return cls(spec.observation_shape, spec.action_shape, spec.observation_dtype,
                   spec.action_dtype)

    def shapes(self, context_len: int) -> dict[str, tuple[tuple[int, ...], type]]:
        """Stored column -> (shape, dtype) of one window: the table's signature."""
        shapes = {self.FLOATS: ((context_len, self.width), np.float32)}
        for name, dtype in self._own.items():
            shapes[name] = ((context_len, *self._shapes[name]), dtype)
        return shapes

    def bytes_per_step(self) -> int:
        """Bytes one stored step takes in the table's columns."""
        return sum(int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
                   for shape, dtype in self.shapes(1).values())

    def pack(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """WINDOW_COLUMNS arrays with a leading length L -> the stored columns: floats
        (L, width) and each other column (L, ...) in its dtype."""
        length = len(columns["timesteps"])
        floats = np.empty((length, self.width), np.float32)
        for name, where in self._slices.items():
            floats[:, where] = np.reshape(columns[name], (length, -1))
        packed = {self.FLOATS: floats}
        for name, dtype in self._own.items():
            packed[name] = np.asarray(columns[name], dtype)
        return packed

    def unpack(self, stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Stored columns with any leading shape (..., K) -> the WINDOW_COLUMNS dict,
        float columns as views into `floats`."""
        floats = stored[self.FLOATS]
        lead = floats.shape[:-1]
        out = {}
        for name in WINDOW_COLUMNS:
            if name in self._own:
                out[name] = stored[name]
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


@dataclass(frozen=True)
class ActionIndex:
    """The action map of a discrete space of `n` actions: indices are the actions,
    inside onramp and in the environment alike (int32)."""

    n: int

    def normalize(self, action: np.ndarray) -> np.ndarray:
        return np.asarray(action, np.int32)

    def to_env(self, action: np.ndarray) -> np.ndarray:
        return np.asarray(action, np.int32)


def action_map(env_info: dict) -> ActionBox | ActionIndex:
    """The action map of an env described as plain values (`launch.runs.env_info`): an
    `ActionIndex` when it has `num_actions`, else the `ActionBox` of its bounds."""
    if env_info.get("num_actions"):
        return ActionIndex(env_info["num_actions"])
    return ActionBox.from_bounds(env_info["action_low"], env_info["action_high"])


@dataclass
class FlatSteps:
    """Many episodes' steps concatenated, with what a window needs per step."""

    observations: np.ndarray  # (N, *obs) float32, or uint8 frames
    next_observations: np.ndarray  # (N, *obs) as observations
    actions: np.ndarray  # (N, *act) float32 in [-1, 1], or (N,) int32 action indices
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
    actions: np.ndarray,  # (T, *act) in [-1, 1], or (T,) integer action indices
    rewards: np.ndarray,  # (T,)
    terminated: bool,
) -> FlatSteps:
    """One episode's steps; uint8 observations and integer actions keep their kind
    (uint8, int32), everything else becomes float32."""
    T = len(actions)
    term = np.zeros(T, np.float32)
    if terminated and T:
        term[-1] = 1.0
    rewards = np.asarray(rewards, np.float32)
    observations = np.asarray(observations)
    obs_dtype = np.uint8 if observations.dtype == np.uint8 else np.float32
    actions = np.asarray(actions)
    act_dtype = np.int32 if np.issubdtype(actions.dtype, np.integer) else np.float32
    return FlatSteps(
        observations=np.asarray(observations[:T], obs_dtype),
        next_observations=np.asarray(observations[1 : T + 1], obs_dtype),
        actions=np.asarray(actions, act_dtype),
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
