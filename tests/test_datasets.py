"""Tests for replay.datasets and replay.scores on real HDF5 files written to tmp_path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from replay.datasets import (
    DatasetError,
    Episode,
    check_against_env,
    load_d4rl,
    load_dataset,
    load_minari,
    write_d4rl,
    write_minari,
)
from replay.scores import D4RL_REFERENCE_SCORES, normalized_score, reference_scores

OBS_DIM = 3
ACT_DIM = 2


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_h5(path: Path, arrays: dict[str, np.ndarray], metadata_attrs: dict | None = None) -> Path:
    """Write raw arrays (keys may contain '/') and optional metadata/ group attributes."""
    with h5py.File(path, "w") as file:
        for key, array in arrays.items():
            file.create_dataset(key, data=array)
        if metadata_attrs:
            group = file.require_group("metadata")
            group.attrs.update(metadata_attrs)
    return path


def d4rl_arrays(rows: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """float64 D4RL-style arrays: a timeout at row 3, a terminal at row 6, rows 7-9 unflagged."""
    rng = np.random.default_rng(seed)
    terminals = np.zeros(rows, dtype=bool)
    timeouts = np.zeros(rows, dtype=bool)
    timeouts[3] = True
    terminals[6] = True
    return {
        "observations": rng.normal(size=(rows, OBS_DIM)),
        "next_observations": rng.normal(size=(rows, OBS_DIM)),
        "actions": rng.uniform(-1, 1, size=(rows, ACT_DIM)),
        "rewards": rng.normal(size=(rows, 1)),
        "terminals": terminals,
        "timeouts": timeouts,
    }


def make_episodes(lengths=(4, 5, 6), seed: int = 0) -> list[Episode]:
    rng = np.random.default_rng(seed)
    return [
        Episode(
            observations=rng.normal(size=(steps + 1, OBS_DIM)).astype(np.float32),
            actions=rng.uniform(-1, 1, size=(steps, ACT_DIM)).astype(np.float32),
            rewards=rng.normal(size=steps).astype(np.float32),
            terminated=index == 0,
            truncated=index != 0,
        )
        for index, steps in enumerate(lengths)
    ]


def minari_kwargs(**overrides) -> dict:
    kwargs = {
        "dataset_id": "onramp/hopper/test-v0",
        "observation_low": -np.inf,
        "observation_high": np.inf,
        "action_low": -1.0,
        "action_high": 1.0,
    }
    return {**kwargs, **overrides}


def assert_same_episodes(loaded: list[Episode], expected: list[Episode]) -> None:
    assert len(loaded) == len(expected)
    for got, want in zip(loaded, expected):
        np.testing.assert_array_equal(got.observations, want.observations)
        np.testing.assert_array_equal(got.actions, want.actions)
        np.testing.assert_array_equal(got.rewards, want.rewards)
        assert (got.terminated, got.truncated) == (want.terminated, want.truncated)


# ----------------------------------------------------------------------------
# D4RL reading
# ----------------------------------------------------------------------------


def test_d4rl_float64_splits_on_terminals_and_timeouts_and_keeps_trailing_episode(tmp_path):
    arrays = d4rl_arrays()
    arrays["metadata/algorithm"] = np.bytes_(b"SAC")
    arrays["metadata/policy/fc0/weight"] = np.ones((4, 4))
    path = write_h5(
        tmp_path / "hopper_medium_replay-v2.hdf5", arrays, {"env_id": "Hopper-v2", "seed": 7}
    )

    dataset = load_d4rl(path)

    assert [e.length for e in dataset.episodes] == [4, 3, 3]
    assert [(e.terminated, e.truncated) for e in dataset.episodes] == [
        (False, True),
        (True, False),
        (False, True),
    ]
    for episode in dataset.episodes:
        assert (
            episode.observations.dtype
            == episode.actions.dtype
            == episode.rewards.dtype
            == np.float32
        )
        assert episode.rewards.shape == (episode.length,)
    bounds = [(0, 3), (4, 6), (7, 9)]
    for episode, (start, end) in zip(dataset.episodes, bounds):
        np.testing.assert_allclose(
            episode.observations[:-1], arrays["observations"][start : end + 1], rtol=1e-6
        )
        np.testing.assert_allclose(
            episode.observations[-1], arrays["next_observations"][end], rtol=1e-6
        )
        np.testing.assert_allclose(episode.actions, arrays["actions"][start : end + 1], rtol=1e-6)
        assert episode.ret == pytest.approx(arrays["rewards"][start : end + 1].sum(), rel=1e-6)
    np.testing.assert_allclose(dataset.returns, [e.ret for e in dataset.episodes])
    assert dataset.returns.dtype == np.float64
    assert dataset.num_steps == 10
    assert dataset.observation_shape == (OBS_DIM,) and dataset.action_shape == (ACT_DIM,)
    assert dataset.source == str(path)
    assert dataset.metadata == {
        "env_id": "Hopper-v2",
        "seed": 7,
        "algorithm": "SAC",
        "format": "d4rl",
    }
    assert load_dataset(path).num_steps == 10


def test_d4rl_without_next_observations_or_timeouts_repeats_last_observation(tmp_path):
    arrays = d4rl_arrays()
    del arrays["next_observations"], arrays["timeouts"]
    arrays["observations"] = arrays["observations"].astype(np.float32)
    arrays["rewards"] = arrays["rewards"][:, 0].astype(np.float32)
    arrays["terminals"] = arrays["terminals"].astype(np.float32)
    path = write_h5(tmp_path / "plain.hdf5", arrays)

    dataset = load_d4rl(path)

    assert [e.length for e in dataset.episodes] == [7, 3]
    assert [(e.terminated, e.truncated) for e in dataset.episodes] == [(True, False), (False, True)]
    first, last = dataset.episodes
    np.testing.assert_array_equal(first.observations[:-1], arrays["observations"][:7])
    np.testing.assert_array_equal(first.observations[-1], arrays["observations"][6])
    np.testing.assert_array_equal(last.observations[-1], arrays["observations"][9])
    assert dataset.metadata == {"format": "d4rl"}


def test_write_d4rl_round_trip_and_refuses_overwrite(tmp_path):
    episodes = make_episodes()
    path = write_d4rl(tmp_path / "out.hdf5", episodes, metadata={"env_id": "Hopper-v4", "seed": 3})

    dataset = load_d4rl(path)

    assert_same_episodes(dataset.episodes, episodes)
    assert dataset.metadata == {"env_id": "Hopper-v4", "seed": 3, "format": "d4rl"}
    with h5py.File(path, "r") as file:
        assert set(file.keys()) >= {
            "observations",
            "next_observations",
            "actions",
            "rewards",
            "terminals",
            "timeouts",
        }
        np.testing.assert_array_equal(np.flatnonzero(file["terminals"][:]), [3])
        np.testing.assert_array_equal(np.flatnonzero(file["timeouts"][:]), [8, 14])
    digest = sha256(path)
    with pytest.raises(DatasetError, match="out.hdf5: already exists"):
        write_d4rl(path, episodes)
    assert sha256(path) == digest


# ----------------------------------------------------------------------------
# Minari writing and reading
# ----------------------------------------------------------------------------


def test_minari_round_trip_keeps_provenance_and_opens_with_minari(tmp_path):
    import minari

    episodes = make_episodes()
    provenance = {
        "env_id": "Hopper-v4",
        "envpool_version": "0.8.4",
        "policy": "sac-medium",
        "seed": 3,
        "description": "test data",
    }
    folder = write_minari(
        tmp_path / "hopper" / "data",
        episodes,
        metadata=provenance,
        ref_min_score=-20.272305,
        ref_max_score=3234.3,
        **minari_kwargs(),
    )

    for dataset in (
        load_minari(folder),
        load_minari(tmp_path / "hopper"),
        load_dataset(folder / "main_data.hdf5"),
    ):
        assert_same_episodes(dataset.episodes, episodes)
        assert dataset.source == str(folder)
        assert dataset.metadata["format"] == "minari"
        assert dataset.metadata["dataset_id"] == "onramp/hopper/test-v0"
        assert {k: dataset.metadata[k] for k in provenance} == provenance
        assert (dataset.metadata["ref_min_score"], dataset.metadata["ref_max_score"]) == (
            -20.272305,
            3234.3,
        )

    reference = minari.MinariDataset(folder)
    assert reference.total_episodes == 3 and reference.total_steps == 15
    for episode, want in zip(reference.iterate_episodes(), episodes):
        np.testing.assert_array_equal(episode.observations, want.observations)
        np.testing.assert_array_equal(episode.actions, want.actions)
        np.testing.assert_allclose(episode.rewards, want.rewards)
        assert bool(episode.terminations[-1]) == want.terminated
        assert bool(episode.truncations[-1]) == want.truncated
    assert reference.spec.dataset_id == "onramp/hopper/test-v0"
    assert minari.get_normalized_score(reference, np.array([3234.3]))[0] == pytest.approx(1.0)
    with h5py.File(folder / "main_data.hdf5", "r") as file:
        assert dict(file["episode_1"].attrs) == {"id": 1, "seed": 3, "total_steps": 5}


def test_write_minari_refuses_non_empty_folder_and_accepts_empty_one(tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="occupied: folder exists and is not empty"):
        write_minari(occupied, make_episodes(), **minari_kwargs())
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]

    empty = tmp_path / "empty"
    empty.mkdir()
    write_minari(empty, make_episodes(), **minari_kwargs())
    assert sorted(p.name for p in empty.iterdir()) == ["main_data.hdf5", "metadata.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "occupied"]


def test_write_minari_rejects_action_outside_declared_bounds_and_leaves_nothing(tmp_path):
    episodes = make_episodes()
    episodes[2].actions[1, 1] = 1.5
    with pytest.raises(DatasetError, match=r"action value 1.5 at episode 2, step 1, index 1"):
        write_minari(tmp_path / "ds", episodes, **minari_kwargs())
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------
# Corrupt inputs: one test per case; the input file is never modified.
# ----------------------------------------------------------------------------


def test_random_bytes_file(tmp_path):
    path = tmp_path / "noise.hdf5"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    digest = sha256(path)
    with pytest.raises(DatasetError, match="noise.hdf5: not an HDF5 file"):
        load_dataset(path)
    assert sha256(path) == digest


def test_truncated_hdf5_file(tmp_path):
    whole = write_h5(tmp_path / "whole.hdf5", d4rl_arrays(rows=2000))
    path = tmp_path / "cut.hdf5"
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    digest = sha256(path)
    with pytest.raises(DatasetError, match="cut.hdf5: .*truncated"):
        load_d4rl(path)
    assert sha256(path) == digest


def test_missing_path(tmp_path):
    with pytest.raises(DatasetError, match="nothing.hdf5: no such file or directory"):
        load_dataset(tmp_path / "nothing.hdf5")


def _without(key):
    def mutate(arrays):
        del arrays[key]

    return mutate


def _set(key, row, value):
    def mutate(arrays):
        arrays[key][row] = value

    return mutate


def _shorten_actions(arrays):
    arrays["actions"] = arrays["actions"][:-1]


def _empty(arrays):
    for key in list(arrays):
        arrays[key] = arrays[key][:0]


def _flat_observations(arrays):
    arrays["observations"] = arrays["observations"][:, 0]


def _wider_next_observations(arrays):
    arrays["next_observations"] = np.zeros((10, OBS_DIM + 1))


@pytest.mark.parametrize(
    "mutate, message",
    [
        pytest.param(
            _without("terminals"), r"missing required key\(s\) 'terminals'", id="missing-key"
        ),
        pytest.param(
            _shorten_actions,
            r"key 'actions' has 9 rows but 'observations' has 10",
            id="length-mismatch",
        ),
        pytest.param(
            _set("rewards", 5, np.nan),
            r"'rewards' has a non-finite value \(nan\) at row 5",
            id="nan",
        ),
        pytest.param(
            _set("observations", 8, -np.inf),
            r"'observations' has a non-finite value \(-inf\) at row 8",
            id="inf",
        ),
        pytest.param(_empty, r"empty dataset \(0 steps\)", id="empty"),
        pytest.param(
            _flat_observations, r"'observations' has shape \(10,\)", id="observation-ndim"
        ),
        pytest.param(
            _wider_next_observations,
            r"'next_observations' has shape \(10, 4\) but 'observations' has "
            r"shape \(10, 3\)",
            id="observation-shape",
        ),
    ],
)
def test_corrupt_d4rl_arrays(tmp_path, mutate, message):
    arrays = d4rl_arrays()
    mutate(arrays)
    path = write_h5(tmp_path / "bad.hdf5", arrays)
    digest = sha256(path)
    with pytest.raises(DatasetError, match="bad.hdf5: " + message):
        load_d4rl(path)
    assert sha256(path) == digest


def _env_check(tmp_path, **env):
    path = write_h5(tmp_path / "data.hdf5", d4rl_arrays())
    digest = sha256(path)
    dataset = load_d4rl(path)
    spec = {
        "observation_shape": (OBS_DIM,),
        "action_shape": (ACT_DIM,),
        "action_low": -1.0,
        "action_high": 1.0,
        **env,
    }
    try:
        check_against_env(dataset, **spec)
    finally:
        assert sha256(path) == digest


def test_env_observation_shape_mismatch(tmp_path):
    with pytest.raises(
        DatasetError,
        match=r"data.hdf5: observation shape \(3,\) does not match the environment's "
        r"\(11,\)",
    ):
        _env_check(tmp_path, observation_shape=(11,))


def test_env_action_shape_mismatch(tmp_path):
    with pytest.raises(
        DatasetError,
        match=r"data.hdf5: action shape \(2,\) does not match the environment's \(3,\)",
    ):
        _env_check(tmp_path, action_shape=(3,))


def test_env_action_out_of_range(tmp_path):
    arrays = d4rl_arrays()
    arrays["actions"][5, 1] = 1.25
    arrays["actions"][0, 0] = 1.0 + 5e-7
    path = write_h5(tmp_path / "data.hdf5", arrays)
    digest = sha256(path)
    dataset = load_d4rl(path)
    with pytest.raises(
        DatasetError,
        match=r"data.hdf5: action value 1.25 at episode 1, step 1, index 1 is outside "
        r"\[-1, 1\]",
    ):
        check_against_env(
            dataset,
            observation_shape=(OBS_DIM,),
            action_shape=(ACT_DIM,),
            action_low=-1.0,
            action_high=np.ones(ACT_DIM),
        )
    assert sha256(path) == digest


def test_env_check_passes_within_tolerance(tmp_path):
    arrays = d4rl_arrays()
    arrays["actions"][0, 0] = 1.0 + 5e-7
    dataset = load_d4rl(write_h5(tmp_path / "data.hdf5", arrays))
    check_against_env(
        dataset, observation_shape=(OBS_DIM,), action_shape=(ACT_DIM,), action_low=-1, action_high=1
    )


def test_minari_missing_metadata_json(tmp_path):
    folder = write_minari(tmp_path / "ds", make_episodes(), **minari_kwargs())
    (folder / "metadata.json").unlink()
    digest = sha256(folder / "main_data.hdf5")
    with pytest.raises(DatasetError, match=r"ds: missing metadata.json"):
        load_dataset(folder)
    assert sha256(folder / "main_data.hdf5") == digest


def test_minari_bad_json(tmp_path):
    folder = write_minari(tmp_path / "ds", make_episodes(), **minari_kwargs())
    metadata_file = folder / "metadata.json"
    metadata_file.write_text('{"dataset_id": "onramp/hopper/test-v0", "total_episodes": ')
    digests = {name: sha256(folder / name) for name in ("metadata.json", "main_data.hdf5")}
    with pytest.raises(DatasetError, match=r"metadata.json: not valid JSON"):
        load_minari(folder)
    assert {name: sha256(folder / name) for name in digests} == digests


def test_minari_missing_episode_group_and_bad_observation_rows(tmp_path):
    folder = write_minari(tmp_path / "ds", make_episodes(), **minari_kwargs())
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["total_episodes"] = 4
    (folder / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(DatasetError, match=r"main_data.hdf5: missing episode group\(s\) episode_3"):
        load_minari(folder)

    metadata["total_episodes"] = 3
    (folder / "metadata.json").write_text(json.dumps(metadata))
    with h5py.File(folder / "main_data.hdf5", "a") as file:
        observations = file["episode_1/observations"][:-1]
        del file["episode_1/observations"]
        file["episode_1/observations"] = observations
    digest = sha256(folder / "main_data.hdf5")
    with pytest.raises(
        DatasetError,
        match=r"episode_1/observations has 5 rows but episode_1/actions has 5; "
        r"expected 6 \(T\+1\)",
    ):
        load_minari(folder)
    assert sha256(folder / "main_data.hdf5") == digest


# ----------------------------------------------------------------------------
# Reference scores
# ----------------------------------------------------------------------------


def test_normalized_scores():
    ref_min, ref_max = reference_scores("hopper-medium-v2")
    assert normalized_score("hopper-medium-v2", ref_max) == pytest.approx(100.0)
    assert normalized_score("hopper-medium-v2", ref_min) == pytest.approx(0.0)
    assert normalized_score("halfcheetah-medium-expert-v2", 12135.0) == pytest.approx(100.0)
    assert normalized_score("antmaze-umaze-v2", 0.5) == pytest.approx(50.0)
    assert D4RL_REFERENCE_SCORES["walker2d-full-replay-v1"] == (1.629008, 4592.3)
    assert normalized_score("Hopper-v4", 3000.0) is None
    assert reference_scores("mujoco/hopper/medium-v0") is None


def test_writers_accept_relative_paths(tmp_path, monkeypatch):
    """Paths relative to the working directory work for both writers."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    episode = Episode(
        observations=rng.normal(size=(4, 3)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(3, 2)).astype(np.float32),
        rewards=np.ones(3, np.float32),
        terminated=True,
        truncated=False,
    )
    folder = write_minari(Path("runs") / "x" / "dataset", [episode], dataset_id="tests/relative-v0",
                          observation_low=-np.inf, observation_high=np.inf,
                          action_low=-1.0, action_high=1.0)
    assert len(load_minari(folder).episodes) == 1
    assert (tmp_path / "runs" / "x" / "dataset" / "metadata.json").is_file()
    file = write_d4rl(Path("rel.hdf5"), [episode])
    assert len(load_d4rl(file).episodes) == 1
