"""The actor loop on real envpool environments, with an in-memory episode sink."""

from __future__ import annotations

import numpy as np
import torch

from actors.actor import Actor
from actors.context import BatchedPolicy
from actors.envs import VectorEnv
from models import DecisionTransformer, ModelConfig
from replay.windows import FlatSteps

ENV = "InvertedPendulum-v4"


class RecordingSink:
    def __init__(self):
        self.episodes: list[FlatSteps] = []

    def write(self, steps: FlatSteps) -> int:
        self.episodes.append(steps)
        return len(steps)


class OneShotParams:
    """Hands out one payload at a chosen poll, like a puller that saw new weights."""

    def __init__(self, arrays, step: int, at_poll: int):
        self.arrays, self.step, self.at_poll, self.polls = arrays, step, at_poll, 0

    def poll(self):
        self.polls += 1
        return (self.step, self.arrays) if self.polls == self.at_poll else None


def tiny_model(seed: int = 0, head: str = "gaussian") -> DecisionTransformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(state_dim=4, act_dim=1, context_len=5, embed_dim=16, n_layer=1, n_head=1,
                      ffn_dim=32, dropout=0.0)
    return DecisionTransformer(cfg, head=head).eval()


def make_actor(sink, model=None, params=None, mode="sample", num_envs=4, seed=0):
    model = model or tiny_model()
    env = VectorEnv(ENV, num_envs, seed)
    policy = BatchedPolicy(model, mode=mode, noise_std=0.3, seed=seed)
    load = (lambda arrays: model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()}))
    return Actor(env, policy, sink, target_return=1000.0, context_len=5, params=params,
                 load_weights=load), env


def test_written_episodes_are_real_transitions_only():
    """Every written step is a real transition: the auto-reset step is never written."""
    sink = RecordingSink()
    actor, env = make_actor(sink)
    stats = actor.run(lambda: False, max_env_steps=600)
    env.close()
    assert sink.episodes, "random-ish policy on InvertedPendulum ends episodes quickly"
    for steps in sink.episodes:
        np.testing.assert_array_equal(steps.timesteps, np.arange(len(steps)))
        # A reset step would carry reward 0; InvertedPendulum pays +1 per real step.
        assert np.all(steps.rewards == 1.0)
        assert steps.terminated[-1] == 1.0 and steps.terminated[:-1].sum() == 0
        np.testing.assert_array_equal(steps.next_observations[:-1], steps.observations[1:])
        # hindsight return-to-go: the rewards actually achieved
        np.testing.assert_allclose(steps.returns_to_go, np.arange(len(steps), 0, -1))
        assert np.all(np.abs(steps.actions) <= 1.0)
    written = sum(len(s) for s in sink.episodes)
    assert written <= stats.env_steps
    assert stats.episodes == len(sink.episodes)
    assert stats.episode_returns == [float(len(s)) for s in sink.episodes]


def test_episodes_match_a_separately_stepped_environment():
    """The first episode of env 0 replays exactly on a fresh env with its recorded actions."""
    sink = RecordingSink()
    actor, env = make_actor(sink, num_envs=1, seed=5)
    actor.run(lambda: False, max_env_steps=200)
    env.close()
    first = sink.episodes[0]
    replay = VectorEnv(ENV, 1, 5)
    obs = replay.reset()
    np.testing.assert_allclose(obs[0], first.observations[0], rtol=0, atol=0)
    for t in range(len(first)):
        result = replay.step(first.actions[t : t + 1])
        np.testing.assert_allclose(result.observations[0], first.next_observations[t], atol=1e-6)
    assert result.terminated[0]
    replay.close()


def test_new_weights_are_swapped_in_and_change_actions():
    """Weights from the params source replace the actor's and change what it does."""
    sink = RecordingSink()
    model = tiny_model(seed=0, head="deterministic")
    other = tiny_model(seed=1, head="deterministic")
    arrays = {k: v.numpy().copy() for k, v in other.state_dict().items()}
    params = OneShotParams(arrays, step=7, at_poll=3)
    actor, env = make_actor(sink, model=model, params=params, mode="mean")
    actor.run(lambda: False, max_env_steps=40)
    env.close()
    assert actor.stats.weights_step == 7
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), arrays[name])
    after = actor.policy.act(actor.ctx)
    expected = BatchedPolicy(other, mode="mean").act(actor.ctx)
    np.testing.assert_allclose(after, expected, atol=1e-6)
    original = BatchedPolicy(tiny_model(seed=0, head="deterministic"), mode="mean")
    assert not np.allclose(after, original.act(actor.ctx), atol=1e-4)


def test_context_rows_hold_the_training_window_of_each_env():
    """Envs advanced in interleaved subsets (as send/recv batches come back) each hold
    the window `gather_windows` cuts from their episode, with the return-to-go counted
    down from the target, and the newest action zero until it is recorded."""
    from actors.context import ContextBuffer
    from replay.windows import flatten_episode, gather_windows

    rng = np.random.default_rng(0)
    n, K, T, target = 3, 4, 7, 50.0
    obs = rng.normal(size=(n, T + 1, 4)).astype(np.float32)
    acts = rng.uniform(-1, 1, (n, T, 2)).astype(np.float32)
    rews = rng.normal(size=(n, T)).astype(np.float32)
    ctx = ContextBuffer(n, K, (4,), 2)
    ctx.start(np.ones(n, bool), obs[:, 0], target)
    t = np.zeros(n, int)
    for turn in range(3 * T):
        rows = [np.array([0, 2]), np.array([1]), np.array([2, 0, 1])][turn % 3]
        rows = rows[t[rows] < T]
        if rows.size == 0:
            continue
        for i in rows:  # the window the policy sees before acting at step t[i]
            steps = flatten_episode(obs[i], acts[i], rews[i], terminated=False)
            want = gather_windows(steps, np.array([t[i]]), K)
            np.testing.assert_array_equal(ctx.states[i], want["observations"][0])
            np.testing.assert_array_equal(ctx.timesteps[i], want["timesteps"][0])
            np.testing.assert_array_equal(ctx.mask[i], want["mask"][0])
            np.testing.assert_array_equal(ctx.actions[i, :-1], want["actions"][0, :-1])
            assert not ctx.actions[i, -1].any()
            first = max(t[i] - K + 1, 0)
            rtg = target - np.concatenate(([0.0], np.cumsum(rews[i], dtype=np.float32)))
            np.testing.assert_allclose(ctx.returns_to_go[i, K - 1 - (t[i] - first):],
                                       rtg[first:t[i] + 1], rtol=1e-6)
        ctx.record_actions(acts[rows, t[rows]], rows)
        rewards = np.zeros(n, np.float32)
        rewards[rows] = rews[rows, t[rows]]
        t[rows] += 1
        observations = np.zeros((n, 4), np.float32)
        observations[rows] = obs[rows, t[rows]]
        ctx.advance(rows, observations, rewards)


def test_a_held_background_write_gives_up_at_the_stop():
    """A sink held forever (a learner that stopped sampling) holds `write` only until
    `should_stop`; the held episode is dropped and `close` returns after its timeout."""
    import threading

    from actors.actor import BackgroundSink
    from replay.windows import flatten_episode

    release, stop = threading.Event(), threading.Event()

    class HeldSink:
        def write(self, steps):
            release.wait()
            return len(steps)

    steps = flatten_episode(np.zeros((4, 4)), np.zeros((3, 1)), np.zeros(3), False)
    sink = BackgroundSink(HeldSink(), max_queued=1, should_stop=stop.is_set)
    assert sink.write(steps) == 3  # taken by the thread, which is now held
    assert sink.write(steps) == 3  # queued
    result = []
    writer = threading.Thread(target=lambda: result.append(sink.write(steps)), daemon=True)
    writer.start()
    writer.join(0.5)
    assert writer.is_alive() and not result  # held while the queue is full
    stop.set()
    writer.join(60.0)  # it polls the flag every 0.1 s
    assert result == [0]
    assert sink.close(timeout_s=0.2, discard_queued=True) is False
    release.set()
