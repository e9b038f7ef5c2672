"""The actor loop: an envpool batch, one batched policy forward per step, episodes out.

Each actor steps M environments through envpool's send/recv API, acts for each batch
of environments that comes back with one forward pass over their contexts, buffers
each environment's episode, and hands a finished episode (hindsight returns-to-go
computed from the rewards achieved) to its writer. With an env batch smaller than M
(`VectorEnv(batch_size=...)`) the other environments step while the policy runs;
with `BackgroundSink` the Reverb writes (and the episode log's, through `TeeSink`)
run in a thread of their own, off the inference path.
Exploration is conditioned on the online target return, decremented by rewards:
sampled actions under ODT, deterministic actions plus Gaussian noise under ODT+TD3.
Newer weights are swapped in between steps when the params source has them.

`Actor` takes its collaborators (environments, policy, writer, params source,
logger) explicitly; `run_actor_process` wires the real ones in a spawned process.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from actors.context import BatchedPolicy, ContextBuffer
from actors.envs import VectorEnv
from replay.windows import FlatSteps, flatten_episode


class EpisodeSink(Protocol):
    def write(self, steps: FlatSteps) -> int: ...


class TeeSink:
    """Writes each episode to every one of `sinks`, in order; returns the first's count.

    The actor tees to the Reverb writer first and the episode log second
    (`launch.roles.actor_role`), so the log holds the episodes the replay server took.
    `close` closes every sink that can be closed, then raises the first error, if any.
    """

    def __init__(self, *sinks: EpisodeSink):
        if not sinks:
            raise ValueError("TeeSink needs at least one sink")
        self.sinks = sinks

    def write(self, steps: FlatSteps) -> int:
        counts = [sink.write(steps) for sink in self.sinks]
        return counts[0]

    def close(self) -> None:
        errors = []
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is None:
                continue
            try:
                close()
            except Exception as error:  # noqa: BLE001 (raised below, after the others close)
                errors.append(error)
        if errors:
            raise errors[0]


class BackgroundSink:
    """Hands episodes to `sink.write` in a thread of its own.

    `write` returns as soon as the episode is queued; it blocks only while
    `max_queued` episodes already wait, so a sink held back by the replay rate
    limiter still holds the actor back, `max_queued` episodes later. Once
    `should_stop()` is true a blocked `write` gives up and drops its episode: the run
    is ending, and a learner that has stopped sampling would hold it forever. An error
    in the thread is raised by the next `write` or by `close`. The inner sink is
    created lazily by its own first write, so its Reverb writer belongs to the thread.
    """

    def __init__(self, sink: EpisodeSink, max_queued: int = 4,
                 should_stop: Callable[[], bool] = lambda: False):
        if max_queued < 1:
            raise ValueError(f"{max_queued=} must be >= 1")
        self.sink = sink
        self.should_stop = should_stop
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="episode-writer", daemon=True)
        self._thread.start()

    def write(self, steps: FlatSteps) -> int:
        """Queue `steps`; return its length, or 0 when it was dropped at a stop."""
        self._raise_error()
        while True:
            try:
                self._queue.put(steps, timeout=0.1)
                return len(steps)
            except queue.Full:
                if self.should_stop():
                    return 0

    def close(self, timeout_s: float = 10.0, discard_queued: bool = False) -> bool:
        """Stop the thread after the queued episodes (or, with `discard_queued`, after
        the one being written), then close the inner sink if it can be closed.

        Returns False when the thread is still writing after timeout_s (a write held
        by the rate limiter once the learner is gone); the daemon thread is then left
        to end with the process and the inner sink is not closed. Raises the thread's
        error, if it had one.
        """
        if discard_queued:
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
        if self._thread.is_alive():
            try:
                self._queue.put(None, timeout=timeout_s)
            except queue.Full:
                return False
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                return False
        close = getattr(self.sink, "close", None)
        if close is not None:
            close()
        self._raise_error()
        return True

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError("the episode writer thread failed") from error

    def _run(self) -> None:
        while True:
            steps = self._queue.get()
            if steps is None:
                return
            try:
                self.sink.write(steps)
            except Exception as error:  # noqa: BLE001 (raised again in the actor loop)
                self._error = error
                return


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
        self.ctx = ContextBuffer.for_env(env.num_envs, context_len, spec)
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
        """Act until `should_stop()` or `max_env_steps` real transitions.

        Each turn: receive the next batch of environments, book their transitions,
        act for exactly those environments, send the actions.
        """
        env, ctx, stats = self.env, self.ctx, self.stats
        n = env.num_envs
        spec = env.spec
        buffers: list[_EpisodeBuffer | None] = [None] * n
        # each env's action in flight
        taken = (np.zeros(n, np.int32) if spec.discrete
                 else np.zeros((n, spec.act_dim), np.float32))
        observations = np.zeros((n, *spec.observation_shape), np.dtype(spec.observation_dtype))
        rewards = np.zeros(n, np.float32)
        env.start()
        while not should_stop() and (max_env_steps is None or stats.env_steps < max_env_steps):
            self.maybe_update_weights()
            t0 = time.perf_counter()
            ids, result = env.recv()
            t1 = time.perf_counter()
            moved, done = result.is_transition, result.done
            # Python lists: the per-env loop reads plain ints, floats and bools.
            id_list, reward_list, done_list = ids.tolist(), result.rewards.tolist(), done.tolist()
            for j, was_reset in enumerate(result.is_reset.tolist()):
                i = id_list[j]
                if was_reset:
                    buffers[i] = _EpisodeBuffer(result.observations[j], stats.weights_step)
                    continue
                buffers[i].add(taken[i].copy(), reward_list[j], result.observations[j])
                stats.env_steps += 1
                if done_list[j]:
                    self._finish(buffers[i], bool(result.terminated[j]))
            observations[ids] = result.observations
            rewards[ids] = result.rewards
            ctx.advance(ids[moved & ~done], observations, rewards)
            ctx.start(ids[result.is_reset], observations, self.target_return)
            t2 = time.perf_counter()
            actions = self.policy.act(ctx, ids)
            t3 = time.perf_counter()
            ctx.record_actions(actions, ids)
            taken[ids] = actions
            env.send(actions, ids)
            t4 = time.perf_counter()
            stats.inference_s += t3 - t2
            stats.env_s += (t1 - t0) + (t4 - t3)
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
