"""Tabular Q-learning on the grid tasks: the source algorithm of Algorithm Distillation.

Algorithm Distillation (Laskin et al. 2022, arXiv:2210.14215) distils the learning
histories of a source RL algorithm. Here the source is one-step tabular Q-learning
(Watkins 1989; Sutton and Barto 2018, section 6.5) with an epsilon-greedy policy whose
epsilon falls linearly from `epsilon_start` to `epsilon_end`, so each history goes
from random play to a near-greedy policy. `record_histories` runs one learner per
history, batched over the environments of one `actors.envs.VectorEnv` in lockstep,
updating Q after every transition, and returns the histories
(`replay.histories.LearningHistory`) with each episode's update count.

The source's state is the observed cell `y * 9 + x`; on Dark Key-to-Door it also
holds whether the key is held, which the agent knows from the rewards it saw in the
episode (the first one is the key), so the observation stays (x, y).

Measured with the defaults on Dark Room (`record_histories("DarkRoom-v0",
np.arange(81), 200, seed)`, seeds 0, 1 and 2: 243 histories of 200 episodes): mean
return 0.25 over the first 10 episodes (uniformly random play) and 15.98 over the
last 10, against a mean optimum of 16.54; by 20-episode block 0.31, 0.89, 2.16, 4.01,
6.66, 9.42, 12.21, 14.74, 15.90, 15.98. 98% of the histories end (last 10 episodes)
at 80% of their goal's optimum or more; goals 0-6 steps from the centre end within
0.5 of it, the corners (8 steps) at 10.8 of 13. A history takes 125 episodes (median)
before its 5-episode mean return first reaches 80% of the optimum, where an agent
that walked straight to the goal once found would need a handful. The defaults came
from comparing learning rates 0.1 and 0.3 and decay fractions 0.6 and 0.8 on the same
runs (with 0.1 and 0.6, 10% of the histories ended below 80% of the optimum, mostly
at the corners, against 2%). On Dark Key-to-Door (60 tasks drawn
with seed 0, 300-episode histories, seed 0) the mean return per 30-episode block is
0.41, 0.87, 1.41, 1.71, 1.83, 1.89, 1.94, 1.97, 1.98, 1.99 against an optimum of 2.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from actors import darkroom
from actors.envs import VectorEnv
from replay.datasets import Episode
from replay.histories import LearningHistory

REWARD_MEMORY = {darkroom.DarkRoom.env_id: False, darkroom.DarkKeyToDoor.env_id: True}
"""Whether the source's state adds "a reward was seen this episode" to the cell, per
grid family: on Key-to-Door the first reward means the key is held."""


@dataclass(frozen=True)
class QLearningConfig:
    """The source algorithm's settings (`record_histories`' `source_options`)."""

    learning_rate: float = 0.3
    """Step size of the Q update."""
    discount: float = 0.9
    """Discount of the bootstrapped target (not applied past a termination)."""
    epsilon_start: float = 1.0
    """Exploration rate at a history's first episode (1: uniformly random actions)."""
    epsilon_end: float = 0.02
    """Exploration rate from the end of the decay on."""
    decay_fraction: float = 0.8
    """Share of the history's episodes over which epsilon falls linearly from
    epsilon_start to epsilon_end."""
    initial_value: float = 0.0
    """Q value of every state and action before any update; above the rewards'
    discounted scale it is optimism that draws the greedy policy to untried actions."""

    def __post_init__(self) -> None:
        for name in ("learning_rate", "decay_fraction"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name}={value!r} must lie in (0, 1]")
        if not np.isfinite(self.initial_value):
            raise ValueError(f"initial_value={self.initial_value!r} must be finite")
        for name in ("discount", "epsilon_start", "epsilon_end"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value!r} must lie in [0, 1]")

    def epsilon(self, episode: np.ndarray, episodes: int) -> np.ndarray:
        """Exploration rate at episode index `episode` of a history of `episodes`."""
        decay = max(self.decay_fraction * (episodes - 1), 1.0)
        progress = np.minimum(np.asarray(episode, np.float64) / decay, 1.0)
        return self.epsilon_start + (self.epsilon_end - self.epsilon_start) * progress


class QLearning:
    """One Q table per environment, (num_envs, num_states, num_actions) float64 from
    `config.initial_value`, and the count of updates each has made."""

    def __init__(self, num_envs: int, num_states: int, num_actions: int,
                 config: QLearningConfig, seed: int):
        self.config = config
        self.q = np.full((num_envs, num_states, num_actions), float(config.initial_value))
        self.updates = np.zeros(num_envs, np.int64)
        self._rng = np.random.default_rng(seed)

    def act(self, states: np.ndarray, epsilon: np.ndarray) -> np.ndarray:
        """Epsilon-greedy action per env (ties between greedy actions broken at
        random, so an unvisited state is played uniformly); (num_envs,) int64."""
        values = self.q[np.arange(len(states)), states]  # (N, A)
        noise = self._rng.random(values.shape)
        greedy = np.argmax(np.where(values == values.max(-1, keepdims=True), noise, -1.0), -1)
        uniform = self._rng.integers(0, values.shape[-1], len(states))
        return np.where(self._rng.random(len(states)) < epsilon, uniform, greedy)

    def update(self, envs: np.ndarray, states: np.ndarray, actions: np.ndarray,
               rewards: np.ndarray, next_states: np.ndarray, terminated: np.ndarray) -> None:
        """One Q-learning update per env of `envs` from its transition."""
        cfg = self.config
        bootstrap = self.q[envs, next_states].max(-1) * ~terminated
        target = rewards + cfg.discount * bootstrap
        self.q[envs, states, actions] += cfg.learning_rate * (
            target - self.q[envs, states, actions])
        self.updates[envs] += 1


def grid_states(observations: np.ndarray, rewarded: np.ndarray) -> np.ndarray:
    """Source state of (x, y) observations: the cell `y * 9 + x`, plus 81 where
    `rewarded` (a reward was seen this episode and the family remembers it)."""
    xy = np.asarray(observations).astype(np.int64)
    return xy[:, 1] * darkroom.GRID_SIZE + xy[:, 0] + darkroom.NUM_CELLS * rewarded


def record_histories(env_id: str, tasks: np.ndarray, episodes: int, seed: int,
                     **source_options) -> list[LearningHistory]:
    """Learning histories of the source on grid tasks: history i plays `episodes`
    episodes of task `tasks[i]` (tasks may repeat), learning from scratch.

    All histories step together in one `VectorEnv`; every transition updates the
    history's Q table once, so an episode's `source_updates` is the number of
    transitions its history made before it. `source_options` are `QLearningConfig`
    fields. History i gets history_id i. Deterministic in the arguments. The source's
    learning curves (return against episode index) are
    `replay.histories.history_returns(histories)`.
    """
    if env_id not in REWARD_MEMORY:
        raise ValueError(f"env_id={env_id!r} has no Q-learning source; grid tasks are "
                         f"{', '.join(REWARD_MEMORY)}")
    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) \
            or episodes < 1:
        raise ValueError(f"episodes={episodes!r} must be a positive int")
    known = {field.name for field in fields(QLearningConfig)}
    unknown = sorted(set(source_options) - known)
    if unknown:
        raise ValueError(f"source option {unknown[0]!r} is not a QLearningConfig field "
                         f"({', '.join(sorted(known))})")
    config = QLearningConfig(**source_options)
    tasks = np.asarray(tasks)
    if tasks.ndim != 1 or len(tasks) == 0:
        raise ValueError(f"tasks must be a non-empty 1-D array of task indices, got shape "
                         f"{tasks.shape}")
    env = VectorEnv(env_id, len(tasks), seed, tasks=tasks)
    try:
        return _record(env, env_id, tasks, int(episodes), config, seed)
    finally:
        env.close()


def _record(env: VectorEnv, env_id: str, tasks: np.ndarray, episodes: int,
            config: QLearningConfig, seed: int) -> list[LearningHistory]:
    n = env.num_envs
    remember = REWARD_MEMORY[env_id]
    source = QLearning(n, darkroom.NUM_CELLS * (2 if remember else 1), env.spec.num_actions,
                       config, seed)
    everyone = np.arange(n)
    finished: list[list[Episode]] = [[] for _ in range(n)]
    first_updates: list[list[int]] = [[] for _ in range(n)]
    episode = np.zeros(n, np.int64)  # index of the episode being played
    rewarded = np.zeros(n, bool)
    observations = env.reset()
    buffers = [{"obs": [observations[i]], "act": [], "rew": []} for i in range(n)]
    states = grid_states(observations, rewarded)
    while (episode < episodes).any():
        actions = source.act(states, config.epsilon(episode, episodes))
        starting = np.array([not buffer["act"] for buffer in buffers]) & (episode < episodes)
        for i in everyone[starting].tolist():
            first_updates[i].append(int(source.updates[i]))
        result = env.step(actions)
        learning = result.is_transition & (episode < episodes)
        rewarded = np.where(result.is_reset, False,
                            rewarded | (remember & (result.rewards > 0)))
        next_states = grid_states(result.observations, rewarded)
        envs = everyone[learning]
        source.update(envs, states[envs], actions[envs], result.rewards[envs],
                      next_states[envs], result.terminated[envs])
        for i in envs.tolist():
            buffer = buffers[i]
            buffer["act"].append(actions[i])
            buffer["rew"].append(result.rewards[i])
            buffer["obs"].append(result.observations[i])
            if result.done[i]:
                finished[i].append(Episode(
                    observations=np.stack(buffer["obs"]).astype(np.float32),
                    actions=np.asarray(buffer["act"], np.int64),
                    rewards=np.asarray(buffer["rew"], np.float32),
                    terminated=bool(result.terminated[i]),
                    truncated=bool(result.truncated[i])))
                episode[i] += 1
        for i in everyone[result.is_reset].tolist():
            buffers[i] = {"obs": [result.observations[i]], "act": [], "rew": []}
        states = next_states
    return [LearningHistory(task_id=int(tasks[i]), history_id=i, episodes=finished[i],
                            source_updates=np.array(first_updates[i], np.int64))
            for i in range(n)]
