"""Tests for replay.windows and replay.offline against slow pure-Python references."""

from __future__ import annotations

import numpy as np
import pytest

from replay.datasets import Episode
from replay.offline import (
    OfflineSampler,
    flatten_episodes,
    state_statistics,
    top_episodes,
)
from replay.windows import (
    WINDOW_COLUMNS,
    ActionBox,
    StoredSteps,
    concatenate,
    flatten_episode,
    gather_windows,
    returns_to_go,
    window_shapes,
)

OBS, ACT, K = 2, 3, 5
LENGTHS = (1, 4, 7, 13)


def make_episode(length: int, episode_id: int, terminated: bool, seed: int) -> Episode:
    """Observation[:, 0] holds the episode id so every window can say where it came from."""
    rng = np.random.default_rng(seed)
    observations = rng.normal(size=(length + 1, OBS)).astype(np.float32)
    observations[:, 0] = episode_id
    return Episode(
        observations=observations,
        actions=rng.uniform(-1, 1, size=(length, ACT)).astype(np.float32),
        rewards=rng.normal(size=length).astype(np.float32),
        terminated=terminated,
        truncated=not terminated,
    )


def make_episodes(lengths=LENGTHS) -> list[Episode]:
    return [make_episode(n, i, terminated=i % 2 == 0, seed=10 + i) for i, n in enumerate(lengths)]


def flat(episodes: list[Episode]):
    return concatenate(
        [flatten_episode(e.observations, e.actions, e.rewards, e.terminated) for e in episodes]
    )


def reference_window(episode: Episode, t: int, context_len: int) -> dict[str, np.ndarray]:
    """The window ending at step t of `episode`, one position at a time."""
    out = {
        "observations": np.zeros((context_len, OBS), np.float32),
        "actions": np.zeros((context_len, ACT), np.float32),
        "rewards": np.zeros(context_len, np.float32),
        "returns_to_go": np.zeros(context_len, np.float32),
        "timesteps": np.zeros(context_len, np.int32),
        "mask": np.zeros(context_len, np.float32),
        "next_observations": np.zeros((context_len, OBS), np.float32),
        "terminated": np.zeros(context_len, np.float32),
    }
    for i in range(context_len):
        step = t - (context_len - 1) + i
        if step < 0:
            continue
        out["observations"][i] = episode.observations[step]
        out["actions"][i] = episode.actions[step]
        out["rewards"][i] = episode.rewards[step]
        out["returns_to_go"][i] = sum(float(r) for r in episode.rewards[step:])
        out["timesteps"][i] = step
        out["mask"][i] = 1.0
        out["next_observations"][i] = episode.observations[step + 1]
        out["terminated"][i] = float(episode.terminated and step == episode.length - 1)
    return out


# ---- stored steps ----------------------------------------------------------------------


@pytest.mark.parametrize("obs_shape, act_shape, obs_dtype, act_dtype", [
    ((OBS,), (ACT,), "float32", "float32"),
    ((3, 2), (), "float32", "float32"),
    ((1,), (4,), "float32", "float32"),
    ((4,), (), "float32", "int32"),       # CartPole: discrete actions
    ((2, 6, 6), (), "uint8", "int32"),    # Atari-like: frames and discrete actions
])
def test_stored_steps_pack_then_unpack_gives_every_column_back(obs_shape, act_shape, obs_dtype,
                                                               act_dtype):
    """Windows packed into the stored columns unpack to the same values, shapes and
    dtypes, with any leading (batch) shape; frames and action indices keep their dtype."""
    stored = StoredSteps(obs_shape, act_shape, obs_dtype, act_dtype)
    shapes = window_shapes(K, obs_shape, act_shape, obs_dtype, act_dtype)
    rng = np.random.default_rng(0)
    windows = {
        name: (rng.normal(size=(6, *shape)).astype(dtype) if dtype is np.float32
               else rng.integers(0, 200, size=(6, *shape)).astype(dtype))
        for name, (shape, dtype) in shapes.items()
    }
    flat = {name: value.reshape(6 * K, *value.shape[2:]) for name, value in windows.items()}
    packed = stored.pack(flat)
    floats = packed[StoredSteps.FLOATS]
    assert floats.shape == (6 * K, stored.width) and floats.dtype == np.float32
    assert packed[StoredSteps.TIMESTEPS].dtype == np.int32
    float_obs = 2 * int(np.prod(obs_shape)) if obs_dtype == "float32" else 0
    float_act = int(np.prod(act_shape)) if act_dtype == "float32" else 0
    assert stored.width == float_obs + float_act + 4
    own = {name for name in ("observations", "next_observations") if obs_dtype != "float32"}
    own |= {"actions"} if act_dtype != "float32" else set()
    assert set(stored.shapes(K)) == {StoredSteps.FLOATS, StoredSteps.TIMESTEPS} | own
    for name in own:
        assert packed[name].dtype == shapes[name][1]
    unpacked = stored.unpack({name: value.reshape(6, K, *value.shape[1:])
                              for name, value in packed.items()})
    assert set(unpacked) == set(WINDOW_COLUMNS)
    for name, (shape, dtype) in shapes.items():
        assert unpacked[name].shape == (6, *shape), name
        assert unpacked[name].dtype == dtype, name
        np.testing.assert_array_equal(unpacked[name], windows[name], err_msg=name)


def test_uint8_frames_take_a_quarter_of_the_float32_bytes():
    frames = StoredSteps((4, 84, 84), (), "uint8", "int32").bytes_per_step()
    floats = StoredSteps((4, 84, 84), (), "float32", "int32").bytes_per_step()
    assert frames == 2 * 4 * 84 * 84 + 4 * 4 + 4 + 4  # two frames, 4 floats, timestep, action
    assert floats == 4 * 2 * 4 * 84 * 84 + 4 * 4 + 4 + 4


# ---- gather_windows --------------------------------------------------------------------


@pytest.mark.parametrize("context_len", [1, K, 20])
def test_gather_windows_matches_reference(context_len):
    """Every column of every window equals the slow reference, for every end index of
    episodes of odd, unequal lengths; dtypes and shapes are those of window_shapes."""
    episodes = make_episodes()
    steps = flat(episodes)
    assert len(steps) == sum(LENGTHS)
    ends = np.arange(len(steps))
    windows = gather_windows(steps, ends, context_len)

    shapes = window_shapes(context_len, (OBS,), (ACT,))
    assert set(windows) == set(WINDOW_COLUMNS) == set(shapes)
    for name, (shape, dtype) in shapes.items():
        assert windows[name].shape == (len(ends), *shape), name
        assert windows[name].dtype == dtype, name

    end = 0
    for episode in episodes:
        for t in range(episode.length):
            ref = reference_window(episode, t, context_len)
            for name in WINDOW_COLUMNS:
                np.testing.assert_allclose(
                    windows[name][end],
                    ref[name],
                    rtol=1e-6,
                    atol=1e-6,
                    err_msg=f"{name} of the window ending at flat index {end}",
                )
            end += 1


def test_gather_windows_padding_and_episode_boundaries():
    """Padded positions are all zeros with mask 0, masks are left-aligned runs of
    min(t + 1, K) ones, and real positions all come from the end step's episode."""
    episodes = make_episodes()
    steps = flat(episodes)
    rng = np.random.default_rng(0)
    ends = rng.integers(0, len(steps), size=200)
    w = gather_windows(steps, ends, K)

    t_end = steps.timesteps[ends]
    expected_mask = np.arange(K)[None, :] >= K - 1 - np.minimum(t_end, K - 1)[:, None]
    np.testing.assert_array_equal(w["mask"], expected_mask.astype(np.float32))
    pad = w["mask"] == 0
    assert pad.any()
    for name, value in w.items():
        assert not value[pad].any(), f"{name} is non-zero at a padded position"

    episode_of_end = steps.observations[ends, 0]
    real = ~pad
    np.testing.assert_array_equal(
        w["observations"][..., 0][real], np.broadcast_to(episode_of_end[:, None], pad.shape)[real]
    )
    # Real timesteps are consecutive and end at the end step's timestep.
    np.testing.assert_array_equal(w["timesteps"][:, -1], t_end)
    diffs = np.diff(w["timesteps"], axis=1)
    assert (diffs[real[:, 1:] & real[:, :-1]] == 1).all()


def test_terminated_marks_only_the_last_step_of_terminated_episodes():
    """terminated is 1 exactly at the last step of terminated episodes, never for truncated."""
    episodes = make_episodes()
    steps = flat(episodes)
    last = np.cumsum(LENGTHS) - 1
    expected = np.zeros(len(steps), np.float32)
    for i, e in enumerate(episodes):
        expected[last[i]] = float(e.terminated)
    np.testing.assert_array_equal(steps.terminated, expected)
    assert 0 < expected.sum() < len(episodes)  # both kinds are present


# ---- returns-to-go ---------------------------------------------------------------------


def test_returns_to_go_matches_python_loop():
    """returns_to_go[t] is the undiscounted sum of rewards[t:], for odd lengths."""
    rng = np.random.default_rng(0)
    for length in (1, 2, 17):
        rewards = rng.normal(size=length).astype(np.float32) * 10
        expected = [sum(float(r) for r in rewards[t:]) for t in range(length)]
        got = returns_to_go(rewards)
        assert got.dtype == np.float32 and got.shape == (length,)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)


def test_returns_to_go_accumulates_in_float64():
    """Large cancelling rewards keep the small remainder a float32 cumsum would lose."""
    rewards = np.array([1e8, 1.0, -1e8], np.float32)
    got = returns_to_go(rewards)
    assert got[0] == 1.0
    assert got[2] == np.float32(-1e8)


# ---- action box ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "low, high", [(-2.0, 2.0), (0.0, 3.0), ([-2.0, 0.0, -1.0], [2.0, 3.0, 5.0])]
)
def test_action_box_round_trip(low, high):
    """normalize maps the box onto [-1, 1] (ends to ends, centre to 0) and to_env inverts
    it; values outside are clipped to the box."""
    box = ActionBox.from_bounds(low, high)
    lo, hi = np.broadcast_to(box.low, (ACT,)), np.broadcast_to(box.high, (ACT,))
    rng = np.random.default_rng(0)
    env_actions = rng.uniform(lo, hi, size=(50, ACT)).astype(np.float32)
    unit = box.normalize(env_actions)
    assert unit.dtype == np.float32 and (np.abs(unit) <= 1).all()
    np.testing.assert_allclose(box.to_env(unit), env_actions, rtol=1e-5, atol=1e-5)
    u = rng.uniform(-1, 1, size=(50, ACT)).astype(np.float32)
    np.testing.assert_allclose(box.normalize(box.to_env(u)), u, rtol=1e-5, atol=1e-5)

    np.testing.assert_allclose(
        box.normalize(np.stack([lo, hi, (lo + hi) / 2])),
        [[-1] * ACT, [1] * ACT, [0] * ACT],
        atol=1e-6,
    )
    np.testing.assert_allclose(box.normalize(hi + 10), np.ones(ACT))
    np.testing.assert_allclose(box.to_env(np.full(ACT, -7.0)), lo)


def test_flatten_episodes_normalizes_actions_and_skips_empty_episodes():
    """flatten_episodes maps env actions into [-1, 1] through the box and drops 0-step
    episodes, so no window is built from them."""
    box = ActionBox.from_bounds(-2.0, 2.0)
    episodes = make_episodes((3, 0, 2))
    for e in episodes:
        e.actions = e.actions * 2.0  # env units in [-2, 2]
    steps = flatten_episodes(episodes, box)
    assert len(steps) == 5
    np.testing.assert_allclose(
        steps.actions, np.concatenate([e.actions for e in episodes]) / 2.0, atol=1e-6
    )
    np.testing.assert_array_equal(steps.episode_start, [0, 0, 0, 3, 3])


# ---- offline sampler and helpers -------------------------------------------------------


def test_offline_sampler_draws_episodes_in_proportion_to_length():
    """With a fixed seed, windows come from each episode in proportion to its length
    (chi-square at p = 0.001 with 3 degrees of freedom, and a 1.5% tolerance)."""
    episodes = make_episodes()
    box = ActionBox.from_bounds(-1.0, 1.0)
    sampler = OfflineSampler(flatten_episodes(episodes, box), K, batch_size=5000, seed=0)
    ids = np.concatenate([sampler.sample()["observations"][:, -1, 0] for _ in range(4)])
    counts = np.bincount(ids.astype(int), minlength=len(LENGTHS))
    expected = len(ids) * np.array(LENGTHS) / sum(LENGTHS)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.27, (counts, expected)
    np.testing.assert_allclose(counts / len(ids), np.array(LENGTHS) / sum(LENGTHS), atol=0.015)


def test_offline_sampler_batches_are_windows_and_seeded():
    """A batch has the window shapes, the same seed repeats it, another seed does not."""
    steps = flatten_episodes(make_episodes(), ActionBox.from_bounds(-1.0, 1.0))
    a = OfflineSampler(steps, K, batch_size=32, seed=7).sample()
    b = OfflineSampler(steps, K, batch_size=32, seed=7).sample()
    c = OfflineSampler(steps, K, batch_size=32, seed=8).sample()
    for name, (shape, dtype) in window_shapes(K, (OBS,), (ACT,)).items():
        assert a[name].shape == (32, *shape) and a[name].dtype == dtype
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["observations"], c["observations"])


def test_top_episodes_returns_best_in_ascending_order():
    """top_episodes(n) gives the n highest-return episodes, worst of them first."""
    rets = [3.0, -1.0, 10.0, 0.5, 7.0]
    episodes = []
    for i, r in enumerate(rets):
        e = make_episode(2, i, terminated=False, seed=i)
        e.rewards = np.array([r, 0.0], np.float32)
        episodes.append(e)
    top = top_episodes(episodes, 3)
    assert [e.ret for e in top] == [3.0, 7.0, 10.0]
    assert [e.ret for e in top_episodes(episodes, 10)] == sorted(rets)
    assert top_episodes(episodes, 0) == []
    assert top_episodes(episodes, 1)[0] is episodes[2]


def test_state_statistics_match_numpy_over_visited_states():
    """Mean and std (+1e-6) equal numpy's over observations[:T] of every episode; the final
    observation of each episode is not a visited state and is left out."""
    episodes = make_episodes()
    for e in episodes:
        e.observations[-1] = 1e6  # would dominate the statistics if it were counted
    mean, std = state_statistics(episodes)
    states = np.concatenate([e.observations[: e.length] for e in episodes]).astype(np.float64)
    assert states.shape == (sum(LENGTHS), OBS)
    assert mean.dtype == np.float32 and std.dtype == np.float32
    np.testing.assert_allclose(mean, states.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, states.std(0) + 1e-6, rtol=1e-6)


def test_state_std_floor_raises_only_the_narrow_dimensions():
    """`std_floor` lifts each dimension's std to at least the floor and leaves the wider
    ones and the mean as they were."""
    episodes = make_episodes()
    mean, std = state_statistics(episodes)
    floor = float(np.median(std))
    floored_mean, floored = state_statistics(episodes, std_floor=floor)
    np.testing.assert_array_equal(floored_mean, mean)
    np.testing.assert_array_equal(floored, np.maximum(std, np.float32(floor)))
    assert (std < floor).any() and (floored >= np.float32(floor)).all()
