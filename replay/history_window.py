"""The history-window item format: windows of consecutive steps of one learning history,
crossing episode boundaries, for Algorithm Distillation.

Reference: Laskin et al. 2022, "In-context Reinforcement Learning with Algorithm
Distillation" (ICLR 2023). A learning history is every step a source RL algorithm took
on one task, episode after episode, in time order; the model learns to predict each
action from the steps before it in the same history, so it must read the improvement
across episodes from its context.

An item is a window of `context_len` (T) consecutive steps of one history, ending at
any of its steps; episode boundaries inside the window are not marked (the history's
previous action and reward carry over into the next episode's first step, as at test
time). A window never spans two histories: one that would start before its history's
first step is left-padded with mask 0, so the early steps of a history are trained too.

Per position the window holds the observation the action was taken in, the previous
step's action and reward within the history (`num_actions`, meaning "none", and 0 at
the history's first step), the action itself (the target) and the mask.

Training is offline only (AD has no online phase), so there is no Reverb writer or
stream; `stored_shapes` describes the item for completeness. Numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from replay.formats import ItemFormat
from replay.offline import OfflineSampler

HISTORY_FIELDS = ("observations", "actions", "rewards", "episode_start", "episode_index")
"""The arrays of one history's step dict, each with one row per step in time order."""

OFFLINE_ONLY = ("history_window trains offline only (Algorithm Distillation has no online "
                "phase); use the in-memory sampler")


@dataclass
class HistorySteps:
    """Many learning histories' steps concatenated in time order, with the previous
    action and reward of every step within its history computed once."""

    observations: np.ndarray  # (N, S) float32, the observation each action was taken in
    actions: np.ndarray  # (N,) int64 in [0, num_actions)
    rewards: np.ndarray  # (N,) float32
    episode_start: np.ndarray  # (N,) bool, True on each episode's first step
    episode_index: np.ndarray  # (N,) int32, the step's episode within its history
    history_start: np.ndarray  # (N,) int64, flat index of the step's history's first step
    prev_actions: np.ndarray  # (N,) int64, the history's previous action; num_actions first
    prev_rewards: np.ndarray  # (N,) float32, the history's previous reward; 0 first
    num_actions: int

    def __len__(self) -> int:
        return len(self.actions)

    def state_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std (+ 1e-6) of every observation, float32 (as
        `replay.offline.state_statistics` for episodes)."""
        obs = self.observations.astype(np.float64)
        return obs.mean(0).astype(np.float32), (obs.std(0) + 1e-6).astype(np.float32)


def concat_histories(histories: Sequence[Mapping[str, np.ndarray]],
                     num_actions: int) -> HistorySteps:
    """Join learning histories (step dicts of HISTORY_FIELDS) into one `HistorySteps`.

    `num_actions` is the action count; it is also the "none" index of the previous action
    at each history's first step. Empty histories are skipped. ValueError names the
    history and the field when a history is malformed: a missing field, unequal lengths,
    an action outside [0, num_actions), or a first step that does not start an episode.
    """
    if num_actions < 1:
        raise ValueError(f"num_actions={num_actions} must be >= 1")
    parts: dict[str, list[np.ndarray]] = {name: [] for name in HISTORY_FIELDS}
    starts, prev_actions, prev_rewards = [], [], []
    offset = 0
    for h, history in enumerate(histories):
        missing = [name for name in HISTORY_FIELDS if name not in history]
        if missing:
            raise ValueError(f"history {h} lacks {', '.join(missing)}")
        actions = np.asarray(history["actions"])
        n = len(actions)
        lengths = {name: len(history[name]) for name in HISTORY_FIELDS}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"history {h}: fields have unequal lengths {lengths}")
        if n == 0:
            continue
        if not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(f"history {h}: actions must be integer indices, got {actions.dtype}")
        if actions.min() < 0 or actions.max() >= num_actions:
            raise ValueError(f"history {h}: actions span [{actions.min()}, {actions.max()}], "
                             f"outside [0, num_actions={num_actions})")
        episode_start = np.asarray(history["episode_start"], bool)
        if not episode_start[0]:
            raise ValueError(f"history {h}: episode_start[0] is False; a history begins "
                             "with an episode's first step")
        observations = np.asarray(history["observations"], np.float32)
        parts["observations"].append(observations.reshape(n, -1))  # (n, S)
        parts["actions"].append(actions.astype(np.int64))
        rewards = np.asarray(history["rewards"], np.float32)
        parts["rewards"].append(rewards)
        parts["episode_start"].append(episode_start)
        parts["episode_index"].append(np.asarray(history["episode_index"], np.int32))
        starts.append(np.full(n, offset, np.int64))
        prev_actions.append(np.concatenate([[num_actions], actions[:-1]]).astype(np.int64))
        prev_rewards.append(np.concatenate([[0.0], rewards[:-1]]).astype(np.float32))
        offset += n
    if offset == 0:
        raise ValueError("concat_histories needs at least one history with a step")
    dims = {part.shape[1] for part in parts["observations"]}
    if len(dims) != 1:
        raise ValueError(f"histories' observations differ in size: {sorted(dims)}")
    joined = {name: np.concatenate(values) for name, values in parts.items()}
    return HistorySteps(**joined, history_start=np.concatenate(starts),
                        prev_actions=np.concatenate(prev_actions),
                        prev_rewards=np.concatenate(prev_rewards), num_actions=num_actions)


def gather_history_windows(steps: HistorySteps, ends: np.ndarray,
                           context_len: int) -> dict[str, np.ndarray]:
    """Windows of `context_len` steps ending at flat indices `ends`, each inside the
    history of its end step, left-padded before that history's first step.

    Returns observations (B, T, S) float32, prev_actions (B, T) int64, prev_rewards
    (B, T) float32, actions (B, T) int64 and mask (B, T) float32 (1 real, 0 padding);
    padded positions are zeros.
    """
    ends = np.asarray(ends, np.int64)
    idx = ends[:, None] + np.arange(1 - context_len, 1)  # (B, T)
    valid = idx >= steps.history_start[ends][:, None]  # (B, T)
    idx = np.where(valid, idx, ends[:, None])  # any in-range index; zeroed below
    out = {
        "observations": steps.observations[idx],  # (B, T, S)
        "prev_actions": steps.prev_actions[idx],
        "prev_rewards": steps.prev_rewards[idx],
        "actions": steps.actions[idx],
    }
    for name, value in out.items():
        pad = ~valid.reshape(valid.shape + (1,) * (value.ndim - 2))
        out[name] = np.where(pad, np.zeros((), value.dtype), value)
    out["mask"] = valid.astype(np.float32)
    return out


class HistorySampler(OfflineSampler):
    """Uniform windows over all steps of `steps`: each step ends a window equally often,
    so every history is drawn in proportion to its length and its early steps are
    trained (left-padded) as often as the later ones."""

    gather = staticmethod(gather_history_windows)

    def __init__(self, steps: HistorySteps, context_len: int, batch_size: int, seed: int = 0):
        if not isinstance(steps, HistorySteps):
            raise TypeError(f"history_window samples learning histories "
                            f"(replay.history_window.concat_histories), not "
                            f"{type(steps).__name__}")
        if context_len < 1 or batch_size < 1:
            raise ValueError(f"{context_len=} and {batch_size=} must be >= 1")
        super().__init__(steps, context_len, batch_size, seed)


class HistoryWindows(ItemFormat):
    """One item per step of a learning history: the T steps of its history ending there,
    across episode boundaries, left-padded before the history's start."""

    key = "history_window"

    def stored_shapes(self, spec):
        T, obs = spec.context_len, tuple(spec.observation_shape)
        return {
            "observations": ((T, *obs), np.float32),
            "prev_actions": ((T,), np.int64),
            "prev_rewards": ((T,), np.float32),
            "actions": ((T,), np.int64),
            "mask": ((T,), np.float32),
        }

    def writer(self, client_or_address, spec):
        raise NotImplementedError(OFFLINE_ONLY)

    def batches(self, address, spec, batch_size, **options):
        raise NotImplementedError(OFFLINE_ONLY)

    def offline_sampler(self, steps, context_len, batch_size, seed=0):
        return HistorySampler(steps, context_len, batch_size, seed=seed)
