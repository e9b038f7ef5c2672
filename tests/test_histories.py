"""Learning histories on disk (replay.histories): a Minari folder whose episodes keep
their history's order and tags, read back exactly, opened by minari, and refused
when the tags are missing or out of order."""

from __future__ import annotations

import h5py
import minari
import numpy as np
import pytest

from replay.datasets import MINARI_DATA_FILE, DatasetError, Episode, write_minari
from replay.histories import (
    HISTORY_TAGS,
    LearningHistory,
    history_returns,
    load_histories,
    write_histories,
)


def episode(rng: np.random.Generator, steps: int, terminated: bool) -> Episode:
    return Episode(observations=rng.integers(0, 9, (steps + 1, 2)).astype(np.float32),
                   actions=rng.integers(0, 5, steps).astype(np.int64),
                   rewards=rng.integers(0, 2, steps).astype(np.float32),
                   terminated=terminated, truncated=not terminated)


def histories(seed: int = 0) -> list[LearningHistory]:
    """Three histories of unequal episodes (lengths 3..7, some terminated), on tasks
    7, 7 and 2, with ids 4, 0 and 9 (written in that order)."""
    rng = np.random.default_rng(seed)
    made = []
    for task, history_id, count in ((7, 4, 3), (7, 0, 2), (2, 9, 4)):
        lengths = rng.integers(3, 8, count)
        made.append(LearningHistory(
            task_id=task, history_id=history_id,
            episodes=[episode(rng, int(n), bool(n < 5)) for n in lengths],
            source_updates=np.concatenate([[0], np.cumsum(lengths)[:-1]])))
    return made


def assert_same(read: list[LearningHistory], written: list[LearningHistory]) -> None:
    assert [(h.task_id, h.history_id) for h in read] == \
        [(h.task_id, h.history_id) for h in written]
    for a, b in zip(read, written):
        np.testing.assert_array_equal(a.source_updates, b.source_updates)
        assert a.source_updates.dtype == np.int64 and a.num_episodes == b.num_episodes
        for x, y in zip(a.episodes, b.episodes):
            for key in ("observations", "actions", "rewards"):
                got, want = getattr(x, key), getattr(y, key)
                np.testing.assert_array_equal(got, want)
                assert got.dtype == want.dtype
            assert (x.terminated, x.truncated) == (y.terminated, y.truncated)


def test_histories_round_trip_in_order_with_their_tags(tmp_path):
    written = histories()
    path = write_histories(tmp_path / "h", written, "DarkRoom-v0", num_actions=5,
                           metadata={"source": "q_learning", "seed": 0})
    assert path == (tmp_path / "h").absolute()
    read = load_histories(path)
    assert_same(read, written)
    np.testing.assert_array_equal(read[2].returns, written[2].returns)


def test_minari_opens_the_folder_and_sees_the_tags(tmp_path):
    written = histories()
    path = write_histories(tmp_path / "h", written, "DarkKeyToDoor-v0", num_actions=5)
    dataset = minari.MinariDataset(path)
    assert dataset.total_episodes == 9
    assert dataset.total_steps == sum(h.num_steps for h in written)
    assert dataset.spec.action_space.n == 5
    assert dataset.storage.metadata["env_id"] == "DarkKeyToDoor-v0"
    stored = list(dataset.iterate_episodes())
    metadata = list(dataset.storage.get_episode_metadata(range(9)))
    flat = [(h, i, e) for h in written for i, e in enumerate(h.episodes)]
    for (history, index, want), got, attrs in zip(flat, stored, metadata, strict=True):
        np.testing.assert_array_equal(got.actions, want.actions)
        np.testing.assert_array_equal(got.observations, want.observations)
        tags = (history.task_id, history.history_id, index, history.source_updates[index])
        assert {tag: attrs[tag] for tag in HISTORY_TAGS} == dict(zip(HISTORY_TAGS, tags))


def test_steps_flatten_a_history_in_time_order():
    history = histories()[2]
    steps = history.steps()
    lengths = [e.length for e in history.episodes]
    assert steps["observations"].shape == (sum(lengths), 2)
    assert steps["observations"].dtype == np.float32 and steps["actions"].dtype == np.int64
    assert steps["rewards"].dtype == np.float32 and steps["episode_index"].dtype == np.int32
    np.testing.assert_array_equal(
        steps["observations"], np.concatenate([e.observations[:-1] for e in history.episodes]))
    np.testing.assert_array_equal(np.flatnonzero(steps["episode_start"]),
                                  np.concatenate([[0], np.cumsum(lengths)[:-1]]))
    np.testing.assert_array_equal(steps["episode_index"], np.repeat(np.arange(4), lengths))
    with pytest.raises(ValueError, match=r"equal episode counts .* \[2, 3, 4\]"):
        history_returns(histories())


def test_a_minari_folder_without_the_tags_is_refused(tmp_path):
    plain = write_minari(tmp_path / "plain", histories()[0].episodes, dataset_id="onramp/plain-v0",
                         observation_low=-np.inf, observation_high=np.inf, num_actions=5)
    with pytest.raises(DatasetError, match=r"plain/main_data.hdf5: episode_0 has no "
                                           r"attribute 'task_id'"):
        load_histories(plain)


@pytest.mark.parametrize("episode_index, tag, value, problem", [
    (1, "episode_in_history", 2, "episode_1 is episode 2 of history 4, expected 1"),
    (3, "episode_in_history", 1, "episode_3 starts history 0 at episode 1, expected 0"),
    (5, "history_id", 4, "episode_5 goes on history 4 after another history's episodes"),
    (2, "source_updates", 1, "episode_2 has source_updates 1, fewer than the episode before"),
    (1, "task_id", 3, "episode_1 has task_id 3 but history 4 is on task 7"),
    (0, "task_id", 1.5, "episode_0 attribute 'task_id' must be one integer"),
])
def test_episodes_out_of_order_are_refused(tmp_path, episode_index, tag, value, problem):
    path = write_histories(tmp_path / "h", histories(), "DarkRoom-v0", num_actions=5)
    with h5py.File(path / MINARI_DATA_FILE, "a") as file:
        file[f"episode_{episode_index}"].attrs[tag] = value
    with pytest.raises(DatasetError, match=problem):
        load_histories(path)


def test_a_non_empty_folder_is_refused_and_left_as_it_was(tmp_path):
    target = tmp_path / "h"
    target.mkdir()
    (target / "notes.txt").write_text("keep")
    with pytest.raises(DatasetError, match="folder exists and is not empty"):
        write_histories(target, histories(), "DarkRoom-v0", num_actions=5)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("change, problem", [
    (lambda hs: hs[1].episodes[0].actions.__setitem__(0, 5),
     r"action 5 at episode 3, step 0 is not an index of Discrete\(5\)"),
    (lambda hs: setattr(hs[2], "history_id", 4), "history_id 4 is used by several histories"),
    (lambda hs: hs[0].episodes.__setitem__(1, episode(np.random.default_rng(1), 0, False)),
     "episode 1 has 0 steps"),
])
def test_bad_histories_are_refused_and_nothing_is_left_behind(tmp_path, change, problem):
    written = histories()
    change(written)
    with pytest.raises(DatasetError, match=problem):
        write_histories(tmp_path / "h", written, "DarkRoom-v0", num_actions=5)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_while_writing_leaves_nothing_behind(tmp_path, monkeypatch):
    """An error after the episodes are written (the metadata write fails)."""
    from minari.dataset.minari_storage import MinariStorage

    def fail(self, metadata):
        raise OSError("disk full")

    monkeypatch.setattr(MinariStorage, "update_metadata", fail)
    with pytest.raises(DatasetError, match=r"h: cannot write dataset \(OSError: disk full\)"):
        write_histories(tmp_path / "h", histories(), "DarkRoom-v0", num_actions=5)
    assert list(tmp_path.iterdir()) == []


def test_a_history_needs_one_update_count_per_episode():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"history 3: source_updates must be ints of shape "
                                         r"\(2,\)"):
        LearningHistory(task_id=1, history_id=3, episodes=[episode(rng, 3, False)] * 2,
                        source_updates=np.array([0]))
    with pytest.raises(ValueError, match="must not decrease"):
        LearningHistory(task_id=1, history_id=3, episodes=[episode(rng, 3, False)] * 2,
                        source_updates=np.array([5, 2]))
