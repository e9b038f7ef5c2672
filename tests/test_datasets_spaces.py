"""Tests for replay.datasets with Discrete actions and uint8 image observations.

CartPole-shaped data (float32 observations (4,), Discrete(2)) and Atari-shaped data
(uint8 frame stacks (4, 84, 84), Discrete(6)) round-trip through both writers and
`load_dataset`, open with minari's own loader, and are checked against matching
and mismatching environment spaces.
"""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest
from test_datasets import make_episodes, minari_kwargs, sha256, write_h5

from replay.datasets import (
    DatasetError,
    Episode,
    OfflineDataset,
    check_against_env,
    load_d4rl,
    load_dataset,
    load_minari,
    write_d4rl,
    write_minari,
)

CARTPOLE_OBS = (4,)
CARTPOLE_ACTIONS = 2
FRAMES = (4, 84, 84)
PONG_ACTIONS = 6


def cartpole_episodes(lengths=(5, 7), seed: int = 0) -> list[Episode]:
    """Float observations (T+1, 4), int64 actions (T,) in {0, 1}; the first terminates."""
    rng = np.random.default_rng(seed)
    return [
        Episode(
            observations=rng.normal(size=(steps + 1, *CARTPOLE_OBS)).astype(np.float32),
            actions=rng.integers(0, CARTPOLE_ACTIONS, size=steps, dtype=np.int64),
            rewards=np.ones(steps, dtype=np.float32),
            terminated=index == 0,
            truncated=index != 0,
        )
        for index, steps in enumerate(lengths)
    ]


def pong_episodes(lengths=(5, 6), seed: int = 1) -> list[Episode]:
    """uint8 frame stacks (T+1, 4, 84, 84), int64 actions (T,) in [0, 6)."""
    rng = np.random.default_rng(seed)
    return [
        Episode(
            observations=rng.integers(0, 256, size=(steps + 1, *FRAMES), dtype=np.uint8),
            actions=rng.integers(0, PONG_ACTIONS, size=steps, dtype=np.int64),
            rewards=rng.choice([-1.0, 0.0, 1.0], size=steps).astype(np.float32),
            terminated=index == 1,
            truncated=index != 1,
        )
        for index, steps in enumerate(lengths)
    ]


KINDS = {
    "cartpole": (cartpole_episodes, CARTPOLE_OBS, CARTPOLE_ACTIONS, np.float32),
    "pong": (pong_episodes, FRAMES, PONG_ACTIONS, np.uint8),
}


def write(writer: str, kind: str, path, episodes: list[Episode]):
    """Write `episodes` of `kind` with write_d4rl or write_minari; return the path."""
    if writer == "d4rl":
        return write_d4rl(path.with_suffix(".hdf5"), episodes)
    low, high = (0, 255) if kind == "pong" else (-np.inf, np.inf)
    return write_minari(
        path,
        episodes,
        dataset_id=f"onramp/{kind}/test-v0",
        observation_low=low,
        observation_high=high,
        num_actions=KINDS[kind][2],
    )


def assert_identical(loaded: list[Episode], expected: list[Episode]) -> None:
    """Same dtypes and values, episode by episode."""
    assert len(loaded) == len(expected)
    for got, want in zip(loaded, expected):
        assert got.observations.dtype == want.observations.dtype
        assert got.actions.dtype == np.int64 and got.actions.shape == want.actions.shape
        np.testing.assert_array_equal(got.observations, want.observations)
        np.testing.assert_array_equal(got.actions, want.actions)
        np.testing.assert_array_equal(got.rewards, want.rewards)
        assert (got.terminated, got.truncated) == (want.terminated, want.truncated)


def written(tmp_path, writer: str, kind: str, episodes: list[Episode] | None = None):
    """(path, dataset loaded back) for `kind`'s episodes written by `writer`."""
    episodes = KINDS[kind][0]() if episodes is None else episodes
    path = write(writer, kind, tmp_path / f"{kind}-{writer}", episodes)
    return path, load_dataset(path)


# ----------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["d4rl", "minari"])
@pytest.mark.parametrize("kind", ["cartpole", "pong"])
def test_discrete_and_image_datasets_round_trip(tmp_path, writer, kind):
    make, obs_shape, num_actions, obs_dtype = KINDS[kind]
    episodes = make()

    _, dataset = written(tmp_path, writer, kind, episodes)

    assert_identical(dataset.episodes, episodes)
    assert dataset.metadata["format"] == writer
    assert dataset.discrete_actions is True
    assert dataset.observation_dtype == obs_dtype
    assert dataset.observation_shape == obs_shape
    assert dataset.action_shape == ()
    assert dataset.num_steps == sum(e.length for e in episodes)
    check_against_env(
        dataset, observation_shape=obs_shape, action_shape=(), num_actions=num_actions
    )


def test_d4rl_image_layout_on_disk(tmp_path):
    episodes = pong_episodes()
    path = write_d4rl(tmp_path / "pong.hdf5", episodes)

    with h5py.File(path, "r") as file:
        for key in ("observations", "next_observations"):
            frames = file[key]
            assert frames.dtype == np.uint8 and frames.shape == (11, *FRAMES)
            assert frames.compression == "gzip" and frames.compression_opts == 1
            assert frames.chunks[1:] == FRAMES
        assert file["actions"].dtype == np.int64 and file["actions"].shape == (11,)
        assert file["rewards"].dtype == np.float32
        np.testing.assert_array_equal(file["next_observations"][4], episodes[0].observations[5])
        np.testing.assert_array_equal(file["observations"][5], episodes[1].observations[0])


def test_d4rl_cartpole_layout_on_disk(tmp_path):
    path = write_d4rl(tmp_path / "cartpole.hdf5", cartpole_episodes())

    with h5py.File(path, "r") as file:
        assert file["observations"].dtype == np.float32
        assert file["observations"].shape == (12, *CARTPOLE_OBS)
        assert file["observations"].compression is None
        assert file["actions"].dtype == np.int64 and file["actions"].shape == (12,)


def test_minari_image_layout_on_disk(tmp_path):
    folder = write("minari", "pong", tmp_path / "pong", pong_episodes())

    metadata = json.loads((folder / "metadata.json").read_text())
    assert json.loads(metadata["action_space"]) == {
        "type": "Discrete",
        "dtype": "int64",
        "start": 0,
        "n": PONG_ACTIONS,
    }
    observation_space = json.loads(metadata["observation_space"])
    assert observation_space["dtype"] == "uint8" and observation_space["shape"] == list(FRAMES)
    assert metadata["dataset_size"] > 0
    with h5py.File(folder / "main_data.hdf5", "r") as file:
        frames = file["episode_1/observations"]
        assert frames.dtype == np.uint8 and frames.shape == (7, *FRAMES)
        assert frames.compression == "gzip" and frames.maxshape == (None, *FRAMES)
        actions = file["episode_1/actions"]
        assert actions.dtype == np.int64 and actions.shape == (6,)


@pytest.mark.parametrize("kind", ["cartpole", "pong"])
def test_written_discrete_minari_dataset_opens_with_minari(tmp_path, kind):
    import gymnasium
    import minari

    make, obs_shape, num_actions, obs_dtype = KINDS[kind]
    episodes = make()
    folder = write("minari", kind, tmp_path / kind, episodes)

    reference = minari.MinariDataset(folder)

    assert reference.action_space == gymnasium.spaces.Discrete(num_actions)
    assert isinstance(reference.observation_space, gymnasium.spaces.Box)
    assert reference.observation_space.shape == obs_shape
    assert reference.observation_space.dtype == obs_dtype
    if kind == "pong":
        assert reference.observation_space == gymnasium.spaces.Box(
            0, 255, FRAMES, dtype=np.uint8
        )
    assert reference.total_episodes == 2
    assert reference.total_steps == sum(e.length for e in episodes)
    for episode, want in zip(reference.iterate_episodes(), episodes):
        assert episode.observations.dtype == obs_dtype
        np.testing.assert_array_equal(episode.observations, want.observations)
        assert episode.actions.dtype == np.int64
        np.testing.assert_array_equal(episode.actions, want.actions)
        assert all(reference.action_space.contains(a) for a in episode.actions)
        np.testing.assert_allclose(episode.rewards, want.rewards)
        assert bool(episode.terminations[-1]) == want.terminated


def test_integer_action_columns_in_files_read_as_int64_indices(tmp_path):
    rows = 6
    terminals = np.zeros(rows, dtype=bool)
    terminals[2] = True
    base = {
        "observations": np.zeros((rows, *CARTPOLE_OBS), dtype=np.float64),
        "rewards": np.ones(rows),
        "terminals": terminals,
    }
    column = np.array([[0], [1], [1], [0], [1], [0]], dtype=np.int32)
    for name, actions in (("column", column), ("flat", column[:, 0].astype(np.uint8))):
        dataset = load_d4rl(write_h5(tmp_path / f"{name}.hdf5", {**base, "actions": actions}))
        assert dataset.discrete_actions and dataset.action_shape == ()
        assert [e.actions.dtype for e in dataset.episodes] == [np.int64, np.int64]
        np.testing.assert_array_equal(
            np.concatenate([e.actions for e in dataset.episodes]), column[:, 0]
        )
    floats = load_d4rl(write_h5(tmp_path / "floats.hdf5", {**base, "actions": column * 1.0}))
    assert floats.episodes[0].actions.dtype == np.float32 and floats.action_shape == (1,)
    assert not floats.discrete_actions


def test_minari_integer_action_column_reads_as_int64_indices(tmp_path):
    folder = write("minari", "cartpole", tmp_path / "cp", cartpole_episodes())
    data_file = folder / "main_data.hdf5"
    with h5py.File(data_file, "a") as file:
        actions = file["episode_0/actions"][()]
        del file["episode_0/actions"]
        file["episode_0/actions"] = actions.astype(np.int32)[:, None]

    dataset = load_minari(folder)

    assert dataset.episodes[0].actions.dtype == np.int64
    np.testing.assert_array_equal(dataset.episodes[0].actions, actions)


def test_float_datasets_report_continuous_actions_and_float_observations(tmp_path):
    dataset = load_dataset(write_d4rl(tmp_path / "box.hdf5", make_episodes()))
    assert dataset.discrete_actions is False
    assert dataset.observation_dtype == np.float32


def test_mixed_observation_dtypes_are_refused_when_reading(tmp_path):
    folder = write("minari", "cartpole", tmp_path / "cp", cartpole_episodes())
    with h5py.File(folder / "main_data.hdf5", "a") as file:
        observations = file["episode_1/observations"][()]
        del file["episode_1/observations"]
        file["episode_1/observations"] = np.zeros(observations.shape, dtype=np.uint8)

    with pytest.raises(
        DatasetError, match=r"episode_1 observations are kept as uint8 but the first episode's "
        r"are float32"
    ):
        load_minari(folder)


# ----------------------------------------------------------------------------
# check_against_env
# ----------------------------------------------------------------------------


def test_env_check_refuses_an_action_index_out_of_range(tmp_path):
    episodes = pong_episodes()
    episodes[1].actions[3] = PONG_ACTIONS
    path, dataset = written(tmp_path, "d4rl", "pong", episodes)
    digest = sha256(path)

    with pytest.raises(
        DatasetError,
        match=r"pong-d4rl.hdf5: action 6 at episode 1, step 3 is not an index of "
        r"Discrete\(6\), \[0, 6\)",
    ):
        check_against_env(dataset, observation_shape=FRAMES, action_shape=(), num_actions=6)
    assert sha256(path) == digest

    episodes = cartpole_episodes()
    episodes[0].actions[2] = -1
    _, dataset = written(tmp_path, "d4rl", "cartpole", episodes)
    with pytest.raises(DatasetError, match=r"action -1 at episode 0, step 2 is not an index"):
        check_against_env(dataset, observation_shape=(4,), action_shape=(), num_actions=2)


def test_env_check_refuses_float_actions_against_a_discrete_env(tmp_path):
    dataset = load_dataset(write_d4rl(tmp_path / "box.hdf5", make_episodes()))

    with pytest.raises(
        DatasetError,
        match=r"box.hdf5: the dataset's actions are continuous \(float32, shape \(2,\)\) but "
        r"the environment's action space is Discrete\(2\)",
    ):
        check_against_env(dataset, observation_shape=(3,), action_shape=(), num_actions=2)


def test_env_check_refuses_integer_actions_against_a_box_env(tmp_path):
    _, dataset = written(tmp_path, "minari", "cartpole")

    with pytest.raises(
        DatasetError,
        match=r"cartpole-minari: the dataset's actions are discrete \(integer action "
        r"indices\) but the environment's action space is a Box of shape \(1,\)",
    ):
        check_against_env(
            dataset, observation_shape=(4,), action_shape=(1,), action_low=-1, action_high=1
        )


def test_env_check_refuses_a_wrong_observation_shape(tmp_path):
    _, dataset = written(tmp_path, "minari", "pong")

    with pytest.raises(
        DatasetError,
        match=r"pong-minari: observation shape \(4, 84, 84\) does not match the "
        r"environment's \(84, 84, 4\)",
    ):
        check_against_env(
            dataset, observation_shape=(84, 84, 4), action_shape=(), num_actions=PONG_ACTIONS
        )


def test_env_check_refuses_a_wrong_discrete_action_shape(tmp_path):
    _, dataset = written(tmp_path, "d4rl", "cartpole")
    with pytest.raises(
        DatasetError, match=r"action shape \(\) does not match the environment's \(1,\)"
    ):
        check_against_env(dataset, observation_shape=(4,), action_shape=(1,), num_actions=2)


def test_env_check_needs_exactly_one_action_space():
    dataset = OfflineDataset(episodes=cartpole_episodes(), source="memory")
    with pytest.raises(ValueError, match=r"action_low and action_high must be None"):
        check_against_env(
            dataset, observation_shape=(4,), action_shape=(), action_low=0, action_high=1,
            num_actions=2,
        )
    with pytest.raises(ValueError, match=r"give action_low and action_high .* or num_actions"):
        check_against_env(dataset, observation_shape=(4,), action_shape=())
    with pytest.raises(ValueError, match=r"num_actions must be >= 1, got 0"):
        check_against_env(dataset, observation_shape=(4,), action_shape=(), num_actions=0)


# ----------------------------------------------------------------------------
# write_minari refusals: each leaves nothing behind
# ----------------------------------------------------------------------------


def _refusal(tmp_path, episodes, **overrides) -> tuple[str, list]:
    """write_minari's DatasetError message for a CartPole-like call with `overrides`,
    and what it left in tmp_path (the tests expect nothing)."""
    kwargs = {
        "dataset_id": "onramp/cartpole/test-v0",
        "observation_low": -np.inf,
        "observation_high": np.inf,
        "num_actions": CARTPOLE_ACTIONS,
        **overrides,
    }
    with pytest.raises(DatasetError) as refused:
        write_minari(tmp_path / "ds", episodes, **kwargs)
    return str(refused.value), list(tmp_path.iterdir())


def test_write_minari_refuses_bounds_together_with_num_actions(tmp_path):
    message, left = _refusal(tmp_path, cartpole_episodes(), action_low=0, action_high=1)
    assert re.search(r"ds: num_actions=2 declares a Discrete action space; "
                     r"action_low and action_high must be None", message), message
    assert not left


def test_write_minari_refuses_integer_actions_under_a_box(tmp_path):
    message, left = _refusal(tmp_path, cartpole_episodes(), num_actions=None,
                             action_low=0.0, action_high=1.0)
    assert re.search(r"actions are discrete .*give num_actions", message), message
    assert not left


def test_write_minari_refuses_float_actions_under_discrete(tmp_path):
    message, left = _refusal(tmp_path, make_episodes())
    assert re.search(r"num_actions=2 declares a Discrete action space but the "
                     r"episodes' actions are continuous \(shape \(2,\)\)", message), message
    assert not left


def test_write_minari_refuses_an_action_index_out_of_range(tmp_path):
    episodes = cartpole_episodes()
    episodes[1].actions[4] = 2
    message, left = _refusal(tmp_path, episodes)
    assert re.search(r"action 2 at episode 1, step 4 is not an index of Discrete\(2\)",
                     message), message
    assert not left


def test_write_minari_refuses_float_bounds_for_uint8_observations(tmp_path):
    message, left = _refusal(tmp_path, pong_episodes(), num_actions=PONG_ACTIONS)
    assert re.search(r"observation_low -inf is not an integer in \[0, 255\]", message), message
    assert not left


def test_write_minari_refuses_frames_minari_reads_as_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    episodes = [
        Episode(
            observations=rng.integers(0, 256, size=(4, 84, 84, 3), dtype=np.uint8),
            actions=np.zeros(3, dtype=np.int64),
            rewards=np.zeros(3, dtype=np.float32),
            terminated=True,
            truncated=False,
        )
    ]
    message, left = _refusal(tmp_path, episodes, observation_low=0, observation_high=255,
                             num_actions=PONG_ACTIONS)
    assert re.search(r"uint8 observations of shape \(84, 84, 3\) .* image space", message), message
    assert not left


def test_writers_refuse_mixed_observation_dtypes(tmp_path):
    episodes = pong_episodes()
    episodes[1].observations = episodes[1].observations.astype(np.float32)
    with pytest.raises(
        DatasetError, match=r"episode 1 observations are kept as float32 but the first "
        r"episode's are uint8"
    ):
        write_d4rl(tmp_path / "mixed.hdf5", episodes)
    assert not any(tmp_path.iterdir())


def test_box_minari_datasets_are_unchanged(tmp_path):
    folder = write_minari(tmp_path / "box", make_episodes(), **minari_kwargs())
    metadata = json.loads((folder / "metadata.json").read_text())
    action_space = json.loads(metadata["action_space"])
    assert action_space["type"] == "Box" and action_space["dtype"] == "float32"
    with h5py.File(folder / "main_data.hdf5", "r") as file:
        assert file["episode_0/observations"].dtype == np.float32
        assert file["episode_0/observations"].compression is None
