"""The actor loop: an envpool batch, one batched policy forward per step, episodes out.

Each actor steps M environments in lockstep, acts for all of them with one forward
pass over their contexts, buffers each environment's episode, and hands a finished
episode (hindsight returns-to-go computed from the rewards achieved) to its writer.
Exploration is conditioned on the online target return, decremented by rewards:
sampled actions under ODT, deterministic actions plus Gaussian noise under ODT+TD3.
Newer weights are swapped in between steps when the params source has them.

`Actor` takes its collaborators (environments, policy, writer, params source,
logger) explicitly; `run_actor_process` wires the real ones in a spawned process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from actors.context import BatchedPolicy, ContextBuffer
from actors.envs import VectorEnv
from replay.windows import FlatSteps, flatten_episode


class EpisodeSink(Protocol):
    def write(self, steps: FlatSteps) -> int: ...


class ParamsSource(Protocol):
    def poll(self) -> tuple[int, dict[str, np.ndarray]] | None: ...


@dataclass
class ActorStats:
    env_steps: int = 0
    episodes: int = 0
    episode_returns: list[float] = field(default_factory=list)
    policy_lags: list[int] = field(default_factory=list)
    weights_step: int = -1
    inference_s: float = 0.0
    env_s: float = 0.0
    write_s: float = 0.0


class _EpisodeBuffer:
    """One environment's episode so far, in [-1, 1] action units."""

    def __init__(self, first_observation: np.ndarray, weights_step: int):
        self.observations = [first_observation]
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.weights_step = weights_step

    def add(self, action: np.ndarray, reward: float, next_observation: np.ndarray) -> None:
        self.actions.append(action)
        self.rewards.append(reward)
        self.observations.append(next_observation)

    def finish(self, terminated: bool) -> FlatSteps:
        return flatten_episode(np.stack(self.observations), np.stack(self.actions),
                               np.asarray(self.rewards, np.float32), terminated)


class Actor:
    def __init__(
        self,
        env: VectorEnv,
        policy: BatchedPolicy,
        sink: EpisodeSink,
        *,
        target_return: float,
        context_len: int,
        params: ParamsSource | None = None,
        load_weights: Callable[[dict[str, np.ndarray]], None] | None = None,
        on_episode: Callable[[float, int, int], None] | None = None,
    ):
        self.env = env
        self.policy = policy
        self.sink = sink
        self.params = params
        self.load_weights = load_weights
        self.on_episode = on_episode
        self.target_return = target_return
        spec = env.spec
        self.ctx = ContextBuffer(env.num_envs, context_len, spec.observation_shape, spec.act_dim)
        self.stats = ActorStats()

    def maybe_update_weights(self) -> bool:
        if self.params is None:
            return False
        newest = self.params.poll()
        if newest is None:
            return False
        step, arrays = newest
        self.load_weights(arrays)
        self.stats.weights_step = step
        return True

    def run(self, should_stop: Callable[[], bool], max_env_steps: int | None = None) -> ActorStats:
        """Act until `should_stop()` or `max_env_steps` real transitions."""
        n = self.env.num_envs
        obs = self.env.reset()
        self.ctx.start(np.ones(n, bool), obs, self.target_return)
        buffers = [_EpisodeBuffer(obs[i], self.stats.weights_step) for i in range(n)]
        stats = self.stats
        while not should_stop() and (max_env_steps is None or stats.env_steps < max_env_steps):
            self.maybe_update_weights()
            t0 = time.perf_counter()
            actions = self.policy.act(self.ctx)
            t1 = time.perf_counter()
            self.ctx.record_actions(actions)
            result = self.env.step(actions)
            t2 = time.perf_counter()
            stats.inference_s += t1 - t0
            stats.env_s += t2 - t1
            for i in np.flatnonzero(result.is_transition):
                buffers[i].add(actions[i], float(result.rewards[i]), result.observations[i])
                if result.done[i]:
                    self._finish(buffers[i], bool(result.terminated[i]))
            stats.env_steps += int(result.is_transition.sum())
            for i in np.flatnonzero(result.is_reset):
                buffers[i] = _EpisodeBuffer(result.observations[i], stats.weights_step)
            self.ctx.advance(result.is_transition & ~result.done, result.observations,
                             result.rewards)
            self.ctx.start(result.is_reset, result.observations, self.target_return)
        return stats

    def _finish(self, buffer: _EpisodeBuffer, terminated: bool) -> None:
        steps = buffer.finish(terminated)
        t0 = time.perf_counter()
        self.sink.write(steps)  # blocks while the rate limiter holds the actors back
        self.stats.write_s += time.perf_counter() - t0
        ret = float(steps.rewards.sum(dtype=np.float64))
        lag = max(self.stats.weights_step - buffer.weights_step, 0)
        self.stats.episodes += 1
        self.stats.episode_returns.append(ret)
        self.stats.policy_lags.append(lag)
        if self.on_episode is not None:
            self.on_episode(ret, len(steps), lag)
