"""Learning histories: a source RL algorithm's episodes, in the order it played them.

Algorithm Distillation (Laskin et al. 2022, arXiv:2210.14215) trains a transformer on
the learning histories of a source algorithm, one per run on one task, so that the
model learns the improvement from episode to episode. A `LearningHistory` is one
such run: its task, its id, its episodes in order (`replay.datasets.Episode`) and the
source's update count at each episode's first step.

On disk a set of histories is a Minari HDF5 dataset folder (the layout of
`replay.datasets.write_minari`, opened by `minari.MinariDataset(folder)`), with the
episodes of each history stored one after the other, in order. Each episode group
carries its tags as integer attributes, Minari's episode metadata:

- `task_id`: the task the history was played on;
- `history_id`: the history, distinct per history in the dataset;
- `episode_in_history`: 0, 1, 2, ... along the history;
- `source_updates`: the source's update count at the episode's first step,
  non-decreasing along the history.

minari returns them from `dataset.storage.get_episode_metadata(indices)`.
`load_histories` reads them back with h5py and refuses a folder without them or
whose episodes are out of order.

Attributes rather than per-step `infos` arrays: every HDF5 dataset minari writes is
chunked and costs about 2.8 kB of headers, so four tag arrays made a 20-step Dark Room
episode take 25 kB where its five step arrays take 14 kB. Writing or reading costs
about 1 ms per episode (2000 Dark Room episodes: 2.3 s, 2.1 s, 28 MB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from replay.datasets import (
    MINARI_DATA_FILE,
    MINARI_METADATA_FILE,
    DatasetError,
    Episode,
    PathLike,
    _open_hdf5,
    _read_errors_as_dataset_error,
    _read_minari_episodes,
    _read_minari_metadata,
    _refuse_non_empty_folder,
    _resolve_minari_folder,
    _staging,
    _step_flags,
    check_action_indices,
    check_episodes,
    minari_extra_metadata,
)

HISTORY_TAGS = ("task_id", "history_id", "episode_in_history", "source_updates")


@dataclass
class LearningHistory:
    """One run of a source algorithm on one task: its episodes in the order played.

    Each episode holds observations (T+1, S) float32 (the last one after the last
    action), actions (T,) int64, rewards (T,) float32 and its terminated/truncated
    flags. source_updates (E,) int64 is the source's update count at each episode's
    first step.
    """

    task_id: int
    history_id: int
    episodes: list[Episode]
    source_updates: np.ndarray

    def __post_init__(self) -> None:
        if not self.episodes:
            raise ValueError(f"history {self.history_id} has no episodes")
        updates = np.asarray(self.source_updates)
        if updates.shape != (len(self.episodes),) or updates.dtype.kind not in "iu":
            raise ValueError(
                f"history {self.history_id}: source_updates must be ints of shape "
                f"({len(self.episodes)},), one per episode, got {updates.dtype} of shape "
                f"{updates.shape}")
        if np.any(np.diff(updates) < 0):
            raise ValueError(f"history {self.history_id}: source_updates {updates.tolist()} "
                             "must not decrease along the history")
        self.source_updates = updates.astype(np.int64)

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_steps(self) -> int:
        """Steps (actions) over all episodes."""
        return sum(episode.length for episode in self.episodes)

    @property
    def returns(self) -> np.ndarray:
        """Undiscounted return of each episode, in order, float64 (E,)."""
        return np.array([episode.ret for episode in self.episodes], np.float64)

    def steps(self) -> dict[str, np.ndarray]:
        """The history flattened in time order, N steps over all episodes:
        observations (N, S) float32 (the observation each action was taken in),
        actions (N,) int64, rewards (N,) float32, episode_start (N,) bool (True on each
        episode's first step), episode_index (N,) int32."""
        lengths = np.array([episode.length for episode in self.episodes])
        starts = np.zeros(int(lengths.sum()), bool)
        starts[np.concatenate([[0], np.cumsum(lengths)[:-1]])] = True
        return {
            "observations": np.concatenate(
                [np.asarray(e.observations[:-1], np.float32) for e in self.episodes]),
            "actions": np.concatenate([np.asarray(e.actions, np.int64) for e in self.episodes]),
            "rewards": np.concatenate([np.asarray(e.rewards, np.float32)
                                       for e in self.episodes]),
            "episode_start": starts,
            "episode_index": np.repeat(np.arange(len(lengths), dtype=np.int32), lengths),
        }


def history_returns(histories: Sequence[LearningHistory]) -> np.ndarray:
    """Episode returns of histories of equal length, (H, E) float64: row h is history
    h's return against episode index (the source's learning curve)."""
    lengths = {history.num_episodes for history in histories}
    if len(lengths) != 1:
        raise ValueError(f"histories must have equal episode counts to stack their returns, "
                         f"got {sorted(lengths)}")
    return np.stack([history.returns for history in histories])


def write_histories(path: PathLike, histories: Sequence[LearningHistory], env_id: str, *,
                    num_actions: int, metadata: dict | None = None) -> Path:
    """Write `histories` as a Minari dataset folder at `path`, in order, and return it.

    Observations go under an unbounded float32 Box, actions (int64 indices) under
    Discrete(num_actions); the tags are the episode groups' attributes (module
    docstring). metadata.json holds `env_id` and `metadata`'s provenance keys
    (`write_minari`'s rules). Refuses an existing non-empty folder, histories that
    share a history_id, and anything `write_minari` refuses; the folder is built
    beside `path` and moved there only once complete.
    """
    path = Path(path).absolute()
    _refuse_non_empty_folder(path)
    if isinstance(num_actions, bool) or not isinstance(num_actions, (int, np.integer)) \
            or num_actions < 1:
        raise DatasetError(path, f"num_actions={num_actions!r} must be a positive int")
    histories = list(histories)
    if not histories:
        raise DatasetError(path, "no histories to write")
    bad = [h for h in histories if not isinstance(h, LearningHistory)]
    if bad:
        raise DatasetError(path, f"histories must be LearningHistory objects, got "
                                 f"{type(bad[0]).__name__}")
    ids = [history.history_id for history in histories]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise DatasetError(path, f"history_id {repeated[0]} is used by several histories")
    given_env = (metadata or {}).get("env_id", env_id)
    if given_env != env_id:
        raise DatasetError(path, f"metadata env_id {given_env!r} differs from env_id {env_id!r}")
    extra = minari_extra_metadata(path, {**(metadata or {}), "env_id": env_id}, None, None)
    episodes = [episode for history in histories for episode in history.episodes]
    obs_shape, _ = check_episodes(path, episodes)
    if np.asarray(episodes[0].observations).dtype == np.uint8:
        raise DatasetError(path, "histories hold vector observations; uint8 frames are "
                                 "written with write_minari")
    check_action_indices(path, episodes, num_actions)

    import gymnasium
    import minari
    from minari.data_collector import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    buffers = (
        EpisodeBuffer(
            observations=np.asarray(episode.observations, np.float32),
            actions=np.asarray(episode.actions, np.int64),
            rewards=np.asarray(episode.rewards, np.float64),
            terminations=_step_flags(episode.length, bool(episode.terminated)),
            truncations=_step_flags(episode.length, bool(episode.truncated)),
        )
        for episode in episodes
    )
    tags = (
        dict(zip(HISTORY_TAGS, (np.int64(value) for value in
                                (history.task_id, history.history_id, index, updates))))
        for history in histories
        for index, updates in enumerate(history.source_updates.tolist())
    )

    with _staging(path, is_dir=True) as staging:
        storage = MinariStorage.new(
            staging,
            observation_space=gymnasium.spaces.Box(-np.inf, np.inf, obs_shape, np.float32),
            action_space=gymnasium.spaces.Discrete(num_actions),
            data_format="hdf5",
        )
        storage.update_episodes(buffers)
        storage.update_episode_metadata(tags)
        name = env_id.split("-")[0].lower()
        storage.update_metadata({"dataset_id": f"onramp/{name}/histories-v0",
                                 "minari_version": minari.__version__, **extra})
    return path


def load_histories(path: PathLike) -> list[LearningHistory]:
    """Read the histories `write_histories` wrote at `path`, in their stored order.

    Raises DatasetError naming the file when an episode lacks a tag, a tag is not
    constant along its episode, a history's episodes are not contiguous and numbered
    0, 1, 2, ..., its task_id changes, or its source_updates decrease; and for
    everything `replay.datasets.load_minari` refuses.
    """
    folder = _resolve_minari_folder(Path(path))
    metadata = _read_minari_metadata(folder / MINARI_METADATA_FILE)
    data_file = folder / MINARI_DATA_FILE
    with _read_errors_as_dataset_error(data_file), _open_hdf5(data_file) as file:
        episodes = _read_minari_episodes(file, data_file, metadata.get("total_episodes"))
        tags = [_read_tags(file[f"episode_{i}"], f"episode_{i}", data_file)
                for i in range(len(episodes))]
    return _group_histories(data_file, episodes, tags)


def _read_tags(group: h5py.Group, name: str, path: Path) -> dict[str, int]:
    """The episode's tags, from its group's attributes."""
    missing = [tag for tag in HISTORY_TAGS if tag not in group.attrs]
    if missing:
        raise DatasetError(path, f"{name} has no attribute {missing[0]!r} (a learning-history "
                                 f"dataset tags every episode with {', '.join(HISTORY_TAGS)})")
    tags = {}
    for tag in HISTORY_TAGS:
        value = np.asarray(group.attrs[tag])
        if value.shape != () or value.dtype.kind not in "iu":
            raise DatasetError(path, f"{name} attribute {tag!r} must be one integer, got "
                                     f"{value.dtype} of shape {value.shape}")
        tags[tag] = int(value)
    return tags


def _group_histories(path: Path, episodes: list[Episode], tags: list[dict[str, int]]
                     ) -> list[LearningHistory]:
    """Cut the stored episodes into histories, checking their order."""
    histories: list[LearningHistory] = []
    runs: list[tuple[dict[str, int], list[Episode], list[int]]] = []
    seen: set[int] = set()
    for index, (episode, tag) in enumerate(zip(episodes, tags)):
        name = f"episode_{index}"
        if runs and runs[-1][0]["history_id"] == tag["history_id"]:
            first, run, updates = runs[-1]
            if tag["episode_in_history"] != len(run):
                raise DatasetError(path, f"{name} is episode {tag['episode_in_history']} of "
                                         f"history {tag['history_id']}, expected {len(run)}")
            if tag["task_id"] != first["task_id"]:
                raise DatasetError(path, f"{name} has task_id {tag['task_id']} but history "
                                         f"{tag['history_id']} is on task {first['task_id']}")
            if tag["source_updates"] < updates[-1]:
                raise DatasetError(path, f"{name} has source_updates {tag['source_updates']}, "
                                         f"fewer than the episode before ({updates[-1]})")
            run.append(episode)
            updates.append(tag["source_updates"])
            continue
        if tag["history_id"] in seen:
            raise DatasetError(path, f"{name} goes on history {tag['history_id']} after "
                                     "another history's episodes")
        if tag["episode_in_history"] != 0:
            raise DatasetError(path, f"{name} starts history {tag['history_id']} at episode "
                                     f"{tag['episode_in_history']}, expected 0")
        seen.add(tag["history_id"])
        runs.append((tag, [episode], [tag["source_updates"]]))
    for first, run, updates in runs:
        histories.append(LearningHistory(task_id=first["task_id"],
                                         history_id=first["history_id"], episodes=run,
                                         source_updates=np.array(updates, np.int64)))
    return histories
