"""Offline-RL datasets: read, validate and write D4RL HDF5 files and Minari folders.

Everything is converted to one in-memory form, a list of `Episode`s (observations
T+1, actions T, rewards T, terminated/truncated flags), wrapped in an
`OfflineDataset` that remembers the file it came from and its provenance.

Formats (references):

* D4RL HDF5 layout (Farama-Foundation/D4RL `scripts/generation/mujoco/collect_data.py`,
  `d4rl/__init__.py::sequence_dataset`): one file of flat, step-aligned arrays
  `observations (N, *obs)`, `actions (N, *act)`, `rewards (N,)` or `(N, 1)`,
  `terminals (N,)`, optional `timeouts (N,)` and `next_observations (N, *obs)`,
  and an optional `metadata/` group. Float arrays are float32, or float64 in the
  replay splits. Episodes end where `terminals | timeouts` is set; files can end in
  an unflagged partial episode (hopper-random-v2 does), which is kept here as a
  truncated episode. Without `next_observations` the observation after an
  episode's last action is not in the file, so the last observation is repeated.
* Minari HDF5 layout (Farama-Foundation/Minari 0.5.x,
  `minari/dataset/minari_storage.py`, `minari/dataset/_storages/hdf5_storage.py`):
  a folder holding `metadata.json` and `main_data.hdf5`; the HDF5 file has one
  group `episode_{i}` per episode with datasets `observations (T+1, *obs)`,
  `actions (T, *act)`, `rewards (T,)`, `terminations (T,)`, `truncations (T,)`
  and attributes `id`, `total_steps` and optionally `seed`. `metadata.json` holds
  `dataset_id`, `minari_version`, `total_episodes`, `total_steps`, `data_format`,
  the serialized spaces, optional `ref_min_score`/`ref_max_score`, and any other
  keys (provenance such as `env_id`, `envpool_version`, `policy`, `seed`).

Reading uses only h5py and json, so Minari folders load without the minari
package, nothing is downloaded, and every problem becomes a `DatasetError` that
names the file. Inputs are opened read-only. Writing Minari goes through minari's
own `MinariStorage` (imported lazily) so the files are exactly what the library
writes and `minari.MinariDataset(folder)` opens them.

Spaces: observations are Box arrays, either numeric vectors (kept as float32) or
uint8 frames such as Atari's (C, H, W) stacks (kept as uint8); actions are Box
arrays (float32) or Discrete indices (int64, one per step, as in CartPole or
Atari). Dict/Tuple spaces and Minari's "arrow" format are rejected with a
DatasetError. uint8 observations are written with HDF5 gzip (level 1) chunking.

Writers build the output next to its destination and move it into place only
once complete, so a failed write never leaves a half-written dataset behind, and
they refuse to overwrite existing data.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

PathLike = str | os.PathLike

D4RL_REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
D4RL_OPTIONAL_KEYS = ("timeouts", "next_observations")
MINARI_EPISODE_KEYS = ("observations", "actions", "rewards", "terminations", "truncations")
MINARI_METADATA_FILE = "metadata.json"
MINARI_DATA_FILE = "main_data.hdf5"
ACTION_TOLERANCE = 1e-6
# Target HDF5 chunk size for uint8 frames: whole frames, about 1 MiB per chunk.
_CHUNK_BYTES = 1 << 20

# Serialized spaces and env specs are large JSON strings; they are not provenance.
_MINARI_SPACE_KEYS = frozenset({"observation_space", "action_space", "env_spec", "eval_env_spec"})
# Keys write_minari fills in itself; callers may not set them through `metadata`.
_MINARI_RESERVED_KEYS = _MINARI_SPACE_KEYS | {
    "dataset_id",
    "data_format",
    "minari_version",
    "total_episodes",
    "total_steps",
    "dataset_size",
}
# Minari's update_metadata asserts these types.
_MINARI_STRING_KEYS = frozenset({"code_permalink", "algorithm_name"})
_MINARI_SET_KEYS = frozenset({"author", "author_email"})
# Dataset id grammar of minari.dataset.minari_dataset.parse_dataset_id, version required.
_DATASET_ID_RE = re.compile(r"^(?:[-_\w][-_\w/]*[-_\w]+/)?[-_\w]+?-v\d+$")
_EPISODE_GROUP_RE = re.compile(r"^episode_(\d+)$")
# Low-level errors that reading a broken file can raise (h5py raises OSError,
# KeyError, ValueError, TypeError or RuntimeError depending on the damage).
_READ_ERRORS = (OSError, KeyError, ValueError, TypeError, IndexError, RuntimeError, AttributeError)


class DatasetError(ValueError):
    """Bad dataset input or output.

    Built as `DatasetError(path, problem)`; str() is "path: problem", e.g.
    "data/x.hdf5: key 'actions' has 999 rows but 'observations' has 1000".
    `DatasetError(message)` with a single argument is accepted too (path is None).
    """

    def __init__(self, path: PathLike, problem: str | None = None) -> None:
        if problem is None:
            self.path: str | None = None
            self.problem = str(path)
            super().__init__(self.problem)
        else:
            self.path = os.fspath(path)
            self.problem = problem
            super().__init__(f"{self.path}: {problem}")


@dataclass
class Episode:
    """One episode of T steps.

    observations: (T+1, *obs_shape), every observation including the one after the
        last action: uint8 for image frames (e.g. (T+1, C, H, W)), otherwise float32.
    actions: (T, *act_shape) float32 for a Box action space, in the environment's own
        units; (T,) int64 action indices for a Discrete one.
    rewards: (T,) float32.
    terminated: the episode ended in a true terminal state.
    truncated: the episode was cut by a time limit or by the end of the data.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool
    truncated: bool

    @property
    def length(self) -> int:
        """Number of steps T (actions taken)."""
        return len(self.actions)

    @property
    def ret(self) -> float:
        """Undiscounted return, summed in float64."""
        return float(np.sum(self.rewards, dtype=np.float64))


@dataclass
class OfflineDataset:
    """Episodes read from one source, with the provenance found there.

    metadata holds the provenance keys present in the source (env_id, policy, seed,
    envpool_version, dataset_id, ref_min_score, ref_max_score, ...) and always
    `format`: "d4rl" or "minari".
    """

    episodes: list[Episode]
    source: str
    metadata: dict = field(default_factory=dict)

    def _first_episode(self) -> Episode:
        if not self.episodes:
            raise DatasetError(self.source, "empty dataset (0 episodes)")
        return self.episodes[0]

    @property
    def observation_shape(self) -> tuple[int, ...]:
        """Shape of one observation."""
        return tuple(self._first_episode().observations.shape[1:])

    @property
    def action_shape(self) -> tuple[int, ...]:
        """Shape of one action; () for discrete actions."""
        return tuple(self._first_episode().actions.shape[1:])

    @property
    def discrete_actions(self) -> bool:
        """Whether the actions are integer action indices (a Discrete action space)."""
        return bool(np.issubdtype(self._first_episode().actions.dtype, np.integer))

    @property
    def observation_dtype(self) -> np.dtype:
        """dtype of the observations: uint8 for image frames, otherwise float32."""
        return self._first_episode().observations.dtype

    @property
    def num_steps(self) -> int:
        """Total number of steps (actions) over all episodes."""
        return sum(episode.length for episode in self.episodes)

    @property
    def returns(self) -> np.ndarray:
        """Undiscounted return of each episode, float64."""
        return np.array([episode.ret for episode in self.episodes], dtype=np.float64)


# ----------------------------------------------------------------------------
# Public readers
# ----------------------------------------------------------------------------


def load_dataset(path: PathLike) -> OfflineDataset:
    """Load a D4RL HDF5 file or a Minari dataset folder.

    A directory is read as Minari; a file named main_data.hdf5 or metadata.json is
    read as the Minari folder holding it; any other file is read as D4RL HDF5.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(path, "no such file or directory")
    if path.is_dir():
        return load_minari(path)
    if path.name in (MINARI_DATA_FILE, MINARI_METADATA_FILE):
        return load_minari(path.parent)
    return load_d4rl(path)


def load_d4rl(path: PathLike) -> OfflineDataset:
    """Read a D4RL-style HDF5 file and split it into episodes.

    Episodes end at `terminals | timeouts`; a trailing unflagged remainder is kept
    as a truncated episode. Float arrays (float32 or float64) become float32, flags
    become bool, rewards (N, 1) are squeezed. The observation after an episode's
    last action is next_observations[last] when that key exists, otherwise the
    last observation repeated. Scalar attributes and scalar datasets of the
    `metadata/` group become metadata; anything else there (policy weights) is
    ignored.
    """
    path = Path(path)
    with _read_errors_as_dataset_error(path), _open_hdf5(path) as file:
        arrays = _read_d4rl_arrays(file, path)
        metadata = _read_hdf5_metadata(file)
    episodes = _split_d4rl_episodes(arrays)
    return OfflineDataset(
        episodes=episodes, source=str(path), metadata={**metadata, "format": "d4rl"}
    )


def load_minari(path: PathLike) -> OfflineDataset:
    """Read a Minari HDF5 dataset folder without the minari package.

    path is the folder holding metadata.json and main_data.hdf5, or its parent
    holding data/. Episodes are read in order episode_0 .. episode_{n-1}, n being
    metadata.json's total_episodes (or the number of groups when absent). An
    episode whose last step is neither terminated nor truncated (recording stopped
    mid-episode) is marked truncated.
    """
    folder = _resolve_minari_folder(Path(path))
    metadata_file = folder / MINARI_METADATA_FILE
    data_file = folder / MINARI_DATA_FILE
    raw_metadata = _read_minari_metadata(metadata_file)
    if not data_file.is_file():
        raise DatasetError(
            folder,
            f"missing {MINARI_DATA_FILE} (a Minari dataset folder holds "
            f"{MINARI_METADATA_FILE} and {MINARI_DATA_FILE})",
        )
    with _read_errors_as_dataset_error(data_file), _open_hdf5(data_file) as file:
        episodes = _read_minari_episodes(file, data_file, raw_metadata.get("total_episodes"))
    metadata = {k: v for k, v in raw_metadata.items() if k not in _MINARI_SPACE_KEYS}
    return OfflineDataset(
        episodes=episodes, source=str(folder), metadata={**metadata, "format": "minari"}
    )


def check_against_env(
    dataset: OfflineDataset,
    *,
    observation_shape: Sequence[int],
    action_shape: Sequence[int],
    action_low: float | np.ndarray | None = None,
    action_high: float | np.ndarray | None = None,
    num_actions: int | None = None,
) -> None:
    """Check that a dataset fits an environment's spaces.

    A Box action space is given by action_low and action_high, a Discrete one by
    num_actions (its action_shape is ()); giving both, or neither, is a ValueError
    (a num_actions that is not an int, a TypeError).
    Raises DatasetError naming the dataset's source when the observation or action
    shape differs from the environment's; when the dataset's actions are
    continuous and the environment's discrete, or the other way round; when a Box
    action lies outside [action_low, action_high] by more than ACTION_TOLERANCE
    (the message gives the value, the episode, the step and the action index); or
    when a discrete action is not in [0, num_actions) (value, episode and step).
    """
    source = dataset.source
    discrete_env = _action_space_kind(action_low, action_high, num_actions)
    found = dataset.observation_shape
    if found != tuple(observation_shape):
        raise DatasetError(
            source,
            f"observation shape {found} does not match the environment's "
            f"{tuple(observation_shape)}",
        )
    if dataset.discrete_actions != discrete_env:
        env_space = (
            f"Discrete({num_actions})" if discrete_env else f"a Box of shape {tuple(action_shape)}"
        )
        data_actions = (
            "discrete (integer action indices)"
            if dataset.discrete_actions
            else f"continuous ({dataset.episodes[0].actions.dtype}, shape {dataset.action_shape})"
        )
        raise DatasetError(
            source,
            f"the dataset's actions are {data_actions} but the environment's action space "
            f"is {env_space}",
        )
    found = dataset.action_shape
    if found != tuple(action_shape):
        raise DatasetError(
            source, f"action shape {found} does not match the environment's {tuple(action_shape)}"
        )
    if discrete_env:
        check_action_indices(source, dataset.episodes, num_actions)
    else:
        low, high = _bounds(source, "action", action_low, action_high, tuple(action_shape))
        _check_actions_in_range(source, dataset.episodes, low, high)


# ----------------------------------------------------------------------------
# Public writers
# ----------------------------------------------------------------------------


def write_minari(
    path: PathLike,
    episodes: Iterable[Episode],
    *,
    dataset_id: str,
    observation_low: float | np.ndarray,
    observation_high: float | np.ndarray,
    action_low: float | np.ndarray | None = None,
    action_high: float | np.ndarray | None = None,
    metadata: dict | None = None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    num_actions: int | None = None,
) -> Path:
    """Write episodes as a Minari HDF5 dataset folder at `path` and return it.

    The folder gets metadata.json and main_data.hdf5 (written by minari's
    MinariStorage; rewards float64, flags bool). Observations are float32 under a
    float32 Box(observation_low, observation_high), or, when the episodes' are
    uint8 frames, uint8 under a uint8 Box (bounds integers in [0, 255], usually 0
    and 255) and gzip-compressed. Actions are float32 under Box(action_low,
    action_high), or, when num_actions is given, int64 indices under
    Discrete(num_actions) (action_low/action_high must then be None).
    dataset_id must follow Minari's grammar `(namespace/)name-v<k>`. `metadata`
    holds provenance (env_id, envpool_version, policy, seed, description, ...),
    stored in metadata.json; `seed` is also written as each episode group's `seed`
    attribute (the collection run's seed, not a per-episode reset seed).
    ref_min_score/ref_max_score (or the same keys in `metadata`) are stored so that
    minari.get_normalized_score works; give both or neither. Actions must lie in
    the declared action space. Refuses an existing non-empty folder.

    minari 0.5.3 stores uint8 arrays of some shapes as lossy JPEG and never
    compresses, so uint8 observations are written here, into each episode group
    in minari's own layout (chunked, resizable along steps) with gzip. uint8
    observations that minari treats as an image space ((H, W) or (H, W, C) with
    H, W >= 32 and bounds 0..255) are refused, because minari's loader would read
    them as JPEG; channel-first frames (C, H, W) with C < 32 are fine.
    """
    path = Path(path).absolute()  # minari resolves relative paths against its own root
    _refuse_non_empty_folder(path)
    episodes = list(episodes)
    obs_shape, act_shape = check_episodes(path, episodes)
    if not isinstance(dataset_id, str) or not _DATASET_ID_RE.match(dataset_id):
        raise DatasetError(
            path, f"dataset_id {dataset_id!r} is not of the form (namespace/)name-v<version>"
        )
    extra = minari_extra_metadata(path, metadata or {}, ref_min_score, ref_max_score)
    seed = extra.get("seed")
    if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool)):
        raise DatasetError(path, f"metadata seed must be an int, got {seed!r}")
    try:
        discrete = _action_space_kind(action_low, action_high, num_actions)
    except (TypeError, ValueError) as error:
        raise DatasetError(path, str(error)) from error
    image_observations = _observation_dtype(episodes[0].observations) == np.uint8
    if image_observations:
        obs_low, obs_high = _uint8_bounds(path, observation_low, observation_high, obs_shape)
    else:
        obs_low, obs_high = _bounds(
            path, "observation", observation_low, observation_high, obs_shape
        )
    episodes_discrete = _action_dtype(episodes[0].actions) == np.int64
    if episodes_discrete and not discrete:
        raise DatasetError(
            path,
            "the episodes' actions are discrete (integer action indices); give num_actions "
            "instead of action_low/action_high",
        )
    if discrete and not episodes_discrete:
        raise DatasetError(
            path,
            f"num_actions={num_actions} declares a Discrete action space but the episodes' "
            f"actions are continuous (shape {act_shape}); give action_low/action_high",
        )

    import gymnasium
    import minari
    from minari.data_collector import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage, is_image_space

    if discrete:
        check_action_indices(path, episodes, num_actions)
        action_space = gymnasium.spaces.Discrete(num_actions)
        action_dtype = np.int64
    else:
        act_low, act_high = _bounds(path, "action", action_low, action_high, act_shape)
        _check_actions_in_range(path, episodes, act_low, act_high)
        action_space = gymnasium.spaces.Box(low=np.asarray(act_low, np.float32),
                                            high=np.asarray(act_high, np.float32),
                                            dtype=np.float32)
        action_dtype = np.float32
    if image_observations:
        observation_space = gymnasium.spaces.Box(low=obs_low, high=obs_high, dtype=np.uint8)
        if is_image_space(observation_space):
            raise DatasetError(
                path,
                f"uint8 observations of shape {obs_shape} with bounds 0..255 are an image "
                f"space to minari {minari.__version__}, which reads them as JPEG; write "
                "channel-first frames (C, H, W) with C < 32, or use write_d4rl",
            )
    else:
        observation_space = gymnasium.spaces.Box(low=np.asarray(obs_low, np.float32),
                                                 high=np.asarray(obs_high, np.float32),
                                                 dtype=np.float32)
    buffers = (
        EpisodeBuffer(
            seed=seed,
            # None: minari skips the key; the uint8 frames are added below, compressed.
            observations=None
            if image_observations
            else np.asarray(episode.observations, dtype=np.float32),
            actions=np.asarray(episode.actions, dtype=action_dtype),
            rewards=np.asarray(episode.rewards, dtype=np.float64),
            terminations=_step_flags(episode.length, bool(episode.terminated)),
            truncations=_step_flags(episode.length, bool(episode.truncated)),
        )
        for episode in episodes
    )
    with _staging(path, is_dir=True) as staging:
        storage = MinariStorage.new(
            staging,
            observation_space=observation_space,
            action_space=action_space,
            data_format="hdf5",
        )
        storage.update_episodes(buffers)
        update: dict[str, Any] = {"dataset_id": dataset_id, "minari_version": minari.__version__}
        if image_observations:
            with h5py.File(staging / MINARI_DATA_FILE, "a") as file:
                for index, episode in enumerate(episodes):
                    frames = np.asarray(episode.observations, dtype=np.uint8)
                    create_uint8_dataset(
                        file[f"episode_{index}"], "observations", frames, resizable=True
                    )
            update["dataset_size"] = storage.get_size()
        storage.update_metadata({**update, **extra})
    return path


def write_d4rl(path: PathLike, episodes: Iterable[Episode], metadata: dict | None = None) -> Path:
    """Write episodes as one D4RL-style flat HDF5 file at `path` and return it.

    Keys: observations and next_observations (N, *obs) (float32, or uint8 for
    image frames, then gzip-compressed in chunks of whole frames), actions (float32
    (N, *act), or int64 (N,) for discrete actions), rewards (float32), terminals,
    timeouts (bool). The last step of every episode is flagged, so episodes split
    back exactly: terminals=1 if it terminated, otherwise timeouts=1 (D4RL labels
    the two exclusively). `metadata` values (str, int, float or bool) become scalar
    datasets under metadata/. Refuses to overwrite an existing file.
    """
    path = Path(path).absolute()
    if path.exists():
        raise DatasetError(path, "already exists; refusing to overwrite it")
    episodes = list(episodes)
    check_episodes(path, episodes)
    arrays = _flatten_episodes(episodes)
    metadata_items = _hdf5_metadata_items(path, metadata or {})
    with _staging(path, is_dir=False) as staging, h5py.File(staging, "w") as file:
        for key, array in arrays.items():
            if array.dtype == np.uint8:
                create_uint8_dataset(file, key, array)
            else:
                file.create_dataset(key, data=array)
        group = file.create_group("metadata")
        for key, value in metadata_items.items():
            group.create_dataset(key, data=value)
    return path


# ----------------------------------------------------------------------------
# Reading helpers
# ----------------------------------------------------------------------------


@contextlib.contextmanager
def _read_errors_as_dataset_error(path: Path) -> Iterator[None]:
    """Turn any low-level error raised while reading `path` into a DatasetError."""
    try:
        yield
    except DatasetError:
        raise
    except _READ_ERRORS as error:
        raise DatasetError(path, f"unreadable data ({type(error).__name__}: {error})") from error


def _open_hdf5(path: Path) -> h5py.File:
    """Open an HDF5 file read-only, with a DatasetError for each way that fails."""
    if not path.exists():
        raise DatasetError(path, "no such file or directory")
    if not path.is_file():
        raise DatasetError(path, "not a file")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as error:
        raise DatasetError(path, f"cannot read file ({error})") from error
    if not is_hdf5:
        raise DatasetError(path, "not an HDF5 file")
    try:
        return h5py.File(path, "r")
    except _READ_ERRORS as error:
        raise DatasetError(path, f"unreadable HDF5 file, truncated or corrupt ({error})") from error


def _read_array(
    container: h5py.Group, key: str, path: Path, label: str | None = None
) -> np.ndarray:
    """Read the dataset `key` of `container` as an array of at least one dimension."""
    label = label or key
    node = container[key]
    if not isinstance(node, h5py.Dataset):
        raise DatasetError(
            path,
            f"{label!r} is a group, expected an array "
            "(only Box and Discrete spaces are supported)",
        )
    array = node[()]
    if not isinstance(array, np.ndarray) or array.ndim == 0:
        raise DatasetError(path, f"{label!r} is a scalar, expected an array")
    if array.dtype.kind not in "biuf":
        raise DatasetError(path, f"{label!r} has dtype {array.dtype}, expected a numeric dtype")
    return array


def _read_d4rl_arrays(file: h5py.File, path: Path) -> dict[str, np.ndarray]:
    """Read, check and convert the D4RL arrays; optional keys that are absent are omitted."""
    missing = [key for key in D4RL_REQUIRED_KEYS if key not in file]
    if missing:
        names = ", ".join(repr(key) for key in missing)
        raise DatasetError(path, f"missing required key(s) {names}")
    keys = [*D4RL_REQUIRED_KEYS, *(key for key in D4RL_OPTIONAL_KEYS if key in file)]
    raw = {key: _read_array(file, key, path) for key in keys}

    rows = len(raw["observations"])
    for key in keys:
        if len(raw[key]) != rows:
            raise DatasetError(
                path, f"key {key!r} has {len(raw[key])} rows but 'observations' has {rows}"
            )
    if rows == 0:
        raise DatasetError(path, "empty dataset (0 steps)")
    _require_per_step_shape(path, "observations", raw["observations"])
    if not _is_discrete_on_disk(raw["actions"]):
        _require_per_step_shape(path, "actions", raw["actions"])
    if "next_observations" in raw and raw["next_observations"].shape != raw["observations"].shape:
        raise DatasetError(
            path,
            f"'next_observations' has shape {raw['next_observations'].shape} "
            f"but 'observations' has shape {raw['observations'].shape}",
        )

    arrays = {}
    for key in ("observations", "next_observations"):
        if key in raw:
            arrays[key] = _read_observations(path, key, raw[key])
    if "next_observations" in arrays and (
        arrays["next_observations"].dtype != arrays["observations"].dtype
    ):
        raise DatasetError(
            path,
            f"'next_observations' has dtype {raw['next_observations'].dtype} but "
            f"'observations' has dtype {raw['observations'].dtype} (uint8 frames need both uint8)",
        )
    arrays["actions"] = _read_actions(path, "actions", raw["actions"])
    arrays["rewards"] = _to_float32(
        path, "rewards", _squeeze_column(path, "rewards", raw["rewards"])
    )
    for key in ("terminals", "timeouts"):
        if key in raw:
            arrays[key] = _to_bool(path, key, _squeeze_column(path, key, raw[key]))
    return arrays


def _split_d4rl_episodes(arrays: dict[str, np.ndarray]) -> list[Episode]:
    """Cut the flat D4RL arrays into episodes at terminals | timeouts."""
    observations = arrays["observations"]
    next_observations = arrays.get("next_observations")
    terminals = arrays["terminals"]
    timeouts = arrays.get("timeouts", np.zeros_like(terminals))
    rows = len(terminals)

    ends = np.flatnonzero(terminals | timeouts)
    if ends.size == 0 or ends[-1] != rows - 1:
        ends = np.append(ends, rows - 1)
    starts = np.concatenate([[0], ends[:-1] + 1])

    episodes = []
    for start, end in zip(starts.tolist(), ends.tolist()):
        final = next_observations[end] if next_observations is not None else observations[end]
        terminated = bool(terminals[end])
        episodes.append(
            Episode(
                observations=np.concatenate([observations[start : end + 1], final[None]]),
                actions=arrays["actions"][start : end + 1],
                rewards=arrays["rewards"][start : end + 1],
                terminated=terminated,
                truncated=not terminated,
            )
        )
    return episodes


def _read_hdf5_metadata(file: h5py.File) -> dict[str, Any]:
    """Scalar attributes and scalar datasets of the file's `metadata/` group."""
    group = file.get("metadata")
    if not isinstance(group, h5py.Group):
        return {}
    found: dict[str, Any] = {}
    for key, value in group.attrs.items():
        _put_scalar(found, key, value)
    for key, node in group.items():
        if isinstance(node, h5py.Dataset) and node.shape == ():
            _put_scalar(found, key, node[()])
    return found


def _put_scalar(target: dict[str, Any], key: str, value: Any) -> None:
    """Store value under key as a plain Python scalar; skip arrays and other objects."""
    if isinstance(value, bytes):
        target[key] = value.decode("utf-8", errors="replace")
    elif isinstance(value, np.ndarray) and value.ndim == 0:
        _put_scalar(target, key, value[()])
    elif isinstance(value, np.generic):
        target[key] = value.item()
    elif isinstance(value, (str, int, float, bool)):
        target[key] = value


def _resolve_minari_folder(path: Path) -> Path:
    """The folder holding metadata.json/main_data.hdf5: path itself or path/data."""
    if not path.exists():
        raise DatasetError(path, "no such file or directory")
    if not path.is_dir():
        raise DatasetError(path, "not a directory (expected a Minari dataset folder)")
    holds_files = (path / MINARI_METADATA_FILE).exists() or (path / MINARI_DATA_FILE).exists()
    if not holds_files and (path / "data").is_dir():
        return path / "data"
    return path


def _read_minari_metadata(metadata_file: Path) -> dict[str, Any]:
    """Parse metadata.json and check that it describes HDF5 data."""
    if not metadata_file.is_file():
        raise DatasetError(
            metadata_file.parent,
            f"missing {MINARI_METADATA_FILE} (a Minari dataset "
            f"folder holds {MINARI_METADATA_FILE} and {MINARI_DATA_FILE})",
        )
    try:
        with open(metadata_file, encoding="utf-8") as handle:
            metadata = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(metadata_file, f"not valid JSON ({error})") from error
    except OSError as error:
        raise DatasetError(metadata_file, f"cannot read file ({error})") from error
    if not isinstance(metadata, dict):
        raise DatasetError(metadata_file, f"expected a JSON object, got {type(metadata).__name__}")
    data_format = metadata.get("data_format", "hdf5")
    if data_format != "hdf5":
        raise DatasetError(
            metadata_file, f"data_format {data_format!r} is not supported (only 'hdf5')"
        )
    total_episodes = metadata.get("total_episodes")
    if total_episodes is not None and (not isinstance(total_episodes, int) or total_episodes < 0):
        raise DatasetError(
            metadata_file, f"total_episodes must be a non-negative int, got {total_episodes!r}"
        )
    return metadata


def _read_minari_episodes(file: h5py.File, path: Path, total_episodes: int | None) -> list[Episode]:
    """Read episode_0 .. episode_{n-1} and check they share observation/action shapes."""
    if total_episodes is None:
        total_episodes = sum(1 for name in file if _EPISODE_GROUP_RE.match(name))
    if total_episodes == 0:
        raise DatasetError(path, "empty dataset (0 episodes)")
    missing = [f"episode_{i}" for i in range(total_episodes) if f"episode_{i}" not in file]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DatasetError(
            path,
            f"missing episode group(s) {shown} (metadata.json total_episodes={total_episodes})",
        )

    episodes = []
    for index in range(total_episodes):
        name = f"episode_{index}"
        group = file[name]
        if not isinstance(group, h5py.Group):
            raise DatasetError(path, f"{name!r} is not a group")
        episode = _read_minari_episode(group, name, path)
        if episodes:
            _require_same_shapes(path, name, episode, episodes[0])
        episodes.append(episode)
    return episodes


def _read_minari_episode(group: h5py.Group, name: str, path: Path) -> Episode:
    """Read and check one Minari episode group."""
    missing = [key for key in MINARI_EPISODE_KEYS if key not in group]
    if missing:
        raise DatasetError(path, f"{name} is missing key(s) {', '.join(repr(k) for k in missing)}")
    raw = {key: _read_array(group, key, path, f"{name}/{key}") for key in MINARI_EPISODE_KEYS}

    steps = len(raw["actions"])
    if steps == 0:
        raise DatasetError(path, f"{name} has 0 steps")
    if len(raw["observations"]) != steps + 1:
        raise DatasetError(
            path,
            f"{name}/observations has {len(raw['observations'])} rows but {name}/actions "
            f"has {steps}; expected {steps + 1} (T+1)",
        )
    for key in ("rewards", "terminations", "truncations"):
        if len(raw[key]) != steps:
            raise DatasetError(
                path, f"{name}/{key} has {len(raw[key])} rows but {name}/actions has {steps}"
            )
    _require_per_step_shape(path, f"{name}/observations", raw["observations"])
    if not _is_discrete_on_disk(raw["actions"]):
        _require_per_step_shape(path, f"{name}/actions", raw["actions"])

    terminations, truncations = (
        _to_bool(path, f"{name}/{key}", _squeeze_column(path, f"{name}/{key}", raw[key]))
        for key in ("terminations", "truncations")
    )
    early = np.flatnonzero((terminations | truncations)[:-1])
    if early.size:
        raise DatasetError(
            path,
            f"{name} is flagged terminated/truncated at step {int(early[0])} "
            f"before its last step {steps - 1}",
        )
    terminated = bool(terminations[-1])
    return Episode(
        observations=_read_observations(path, f"{name}/observations", raw["observations"]),
        actions=_read_actions(path, f"{name}/actions", raw["actions"]),
        rewards=_to_float32(
            path, f"{name}/rewards", _squeeze_column(path, f"{name}/rewards", raw["rewards"])
        ),
        terminated=terminated,
        truncated=bool(truncations[-1]) or not terminated,
    )


# ----------------------------------------------------------------------------
# Array checks shared by readers and writers
# ----------------------------------------------------------------------------


def _require_per_step_shape(path: PathLike, key: str, array: np.ndarray) -> None:
    """Per-step arrays of vectors must be (rows, *shape) with at least one axis per step."""
    if array.ndim < 2:
        raise DatasetError(
            path, f"{key!r} has shape {array.shape}; expected (rows, *shape) with ndim >= 2"
        )


def _squeeze_column(path: PathLike, key: str, array: np.ndarray) -> np.ndarray:
    """Accept (N,) or (N, 1); return (N,)."""
    if array.ndim == 2 and array.shape[1] == 1:
        return array[:, 0]
    if array.ndim != 1:
        raise DatasetError(path, f"{key!r} has shape {array.shape}; expected (N,) or (N, 1)")
    return array


def _first_bad_row(bad: np.ndarray) -> int:
    """Index of the first row holding a True in the per-element mask `bad`."""
    return int(np.argmax(bad.reshape(len(bad), -1).any(axis=1)))


def _check_finite(path: PathLike, key: str, array: np.ndarray) -> None:
    """Raise naming the key, first bad row and value when array holds NaN or inf."""
    bad = ~np.isfinite(array)
    if bad.any():
        row = _first_bad_row(bad)
        value = np.asarray(array[row])[np.asarray(bad[row])].flat[0]
        raise DatasetError(path, f"{key!r} has a non-finite value ({value}) at row {row}")


def _to_float32(path: PathLike, key: str, array: np.ndarray) -> np.ndarray:
    """Check a numeric array is finite and convert it to float32 without overflow."""
    if array.dtype.kind == "f":
        _check_finite(path, key, array)
    with np.errstate(over="ignore"):
        converted = array.astype(np.float32, copy=False)
    overflow = ~np.isfinite(converted)
    if overflow.any():
        row = _first_bad_row(overflow)
        value = np.asarray(array[row])[np.asarray(overflow[row])].flat[0]
        raise DatasetError(
            path, f"{key!r} has value {value} at row {row}, outside the float32 range"
        )
    return converted


def _to_bool(path: PathLike, key: str, array: np.ndarray) -> np.ndarray:
    """Numeric or bool flags -> bool (non-zero is True)."""
    if array.dtype.kind == "f":
        _check_finite(path, key, array)
    return array != 0


def _is_discrete_on_disk(array: np.ndarray) -> bool:
    """A stored action array holds discrete indices: integer, shape (N,) or (N, 1)."""
    return array.dtype.kind in "iu" and (
        array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1)
    )


def _observation_dtype(observations: np.ndarray) -> np.dtype:
    """The dtype observations are kept in: uint8 frames stay uint8, the rest is float32."""
    dtype = np.asarray(observations).dtype
    return np.dtype(np.uint8) if dtype == np.uint8 else np.dtype(np.float32)


def _action_dtype(actions: np.ndarray) -> np.dtype:
    """The dtype in-memory actions are written in: int64 indices for an integer (T,)
    array, otherwise float32 (an integer (T, k) array is a Box action, as before)."""
    array = np.asarray(actions)
    discrete = array.dtype.kind in "iu" and array.ndim == 1
    return np.dtype(np.int64) if discrete else np.dtype(np.float32)


def _read_observations(path: PathLike, key: str, array: np.ndarray) -> np.ndarray:
    """Stored observations in memory: uint8 frames as they are, anything else float32."""
    if array.dtype == np.uint8:
        return array
    return _to_float32(path, key, array)


def _read_actions(path: PathLike, key: str, array: np.ndarray) -> np.ndarray:
    """Stored actions in memory: integer (N,) or (N, 1) as int64 (N,), anything else float32."""
    if not _is_discrete_on_disk(array):
        return _to_float32(path, key, array)
    indices = array.reshape(len(array))
    if indices.dtype == np.uint64:
        too_large = indices > np.iinfo(np.int64).max
        if too_large.any():
            row = int(np.argmax(too_large))
            raise DatasetError(
                path, f"{key!r} has action index {indices[row]} at row {row}, outside int64"
            )
    return indices.astype(np.int64, copy=False)


def _require_same_shapes(path: PathLike, name: str, episode: Episode, first: Episode) -> None:
    """Every episode must have the first episode's per-step observation and action
    shapes, and keep observations (uint8 or float) and actions (indices or Box) alike."""
    for kind, found, expected in (
        ("observations", np.shape(episode.observations)[1:], np.shape(first.observations)[1:]),
        ("actions", np.shape(episode.actions)[1:], np.shape(first.actions)[1:]),
    ):
        if found != expected:
            raise DatasetError(
                path,
                f"{name} {kind} have per-step shape {found} but the first episode's are {expected}",
            )
    for kind, found, expected in (
        (
            "observations",
            _observation_dtype(episode.observations),
            _observation_dtype(first.observations),
        ),
        ("actions", _action_dtype(episode.actions), _action_dtype(first.actions)),
    ):
        if found != expected:
            raise DatasetError(
                path,
                f"{name} {kind} are kept as {found} but the first episode's are {expected} "
                f"(dtypes {np.asarray(getattr(episode, kind)).dtype} and "
                f"{np.asarray(getattr(first, kind)).dtype})",
            )


def _bounds(
    path: PathLike,
    name: str,
    low: float | np.ndarray,
    high: float | np.ndarray,
    shape: tuple[int, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """Broadcast low/high to `shape` as float32 arrays and check low <= high."""
    try:
        low_array = np.broadcast_to(np.asarray(low, dtype=np.float32), shape).copy()
        high_array = np.broadcast_to(np.asarray(high, dtype=np.float32), shape).copy()
    except (ValueError, TypeError) as error:
        raise DatasetError(path, f"{name} bounds do not fit shape {shape} ({error})") from error
    _refuse_inverted(path, name, low_array, high_array)
    return low_array, high_array


def _refuse_inverted(path: PathLike, name: str, low: np.ndarray, high: np.ndarray,
                     spec: str = "") -> None:
    """DatasetError naming the first index where `{name}_low` exceeds `{name}_high`
    (values formatted with `spec`)."""
    inverted = np.argwhere(low > high)
    if inverted.size:
        index = tuple(int(i) for i in inverted[0])
        raise DatasetError(
            path,
            f"{name}_low {low[index]:{spec}} exceeds {name}_high {high[index]:{spec}} "
            f"at index {index}",
        )


def _uint8_bounds(
    path: PathLike,
    low: float | np.ndarray,
    high: float | np.ndarray,
    shape: tuple[int, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """Broadcast the bounds of a uint8 observation space to `shape` as uint8 arrays;
    they must be integers in [0, 255] with low <= high."""
    try:
        low_array = np.broadcast_to(np.asarray(low, dtype=np.float64), shape)
        high_array = np.broadcast_to(np.asarray(high, dtype=np.float64), shape)
    except (ValueError, TypeError) as error:
        raise DatasetError(
            path, f"observation bounds do not fit shape {shape} ({error})"
        ) from error
    for name, array in (("observation_low", low_array), ("observation_high", high_array)):
        bad = ~((array >= 0) & (array <= 255) & (np.floor(array) == array))
        if bad.any():
            value = array[tuple(np.argwhere(bad)[0])]
            raise DatasetError(
                path,
                f"{name} {value} is not an integer in [0, 255], as uint8 observations need",
            )
    _refuse_inverted(path, "observation", low_array, high_array, "g")
    return low_array.astype(np.uint8), high_array.astype(np.uint8)


def _action_space_kind(
    action_low: float | np.ndarray | None,
    action_high: float | np.ndarray | None,
    num_actions: int | None,
) -> bool:
    """True for a Discrete action space (num_actions), False for a Box (both bounds).

    Raises ValueError when both or neither are given or num_actions < 1, TypeError when
    num_actions is not an int.
    """
    bounds = (action_low is not None, action_high is not None)
    if num_actions is None:
        if not all(bounds):
            raise ValueError(
                "give action_low and action_high for a Box action space, "
                "or num_actions for a Discrete one"
            )
        return False
    if any(bounds):
        raise ValueError(
            f"num_actions={num_actions} declares a Discrete action space; "
            f"action_low and action_high must be None, got {action_low!r} and {action_high!r}"
        )
    if isinstance(num_actions, bool) or not isinstance(num_actions, (int, np.integer)):
        raise TypeError(f"num_actions must be an int, got {num_actions!r}")
    if num_actions < 1:
        raise ValueError(f"num_actions must be >= 1, got {num_actions}")
    return True


def check_action_indices(path: PathLike, episodes: Sequence[Episode], num_actions: int) -> None:
    """Raise on the first action that is not an integer index in [0, num_actions).

    The message gives the value, episode and step.
    """
    for episode_index, episode in enumerate(episodes):
        actions = np.asarray(episode.actions)
        if not np.issubdtype(actions.dtype, np.integer):
            raise DatasetError(
                path,
                f"episode {episode_index} actions have dtype {actions.dtype}; a Discrete("
                f"{num_actions}) action space needs integer action indices",
            )
        per_step = actions.reshape(len(actions), -1)  # (T, 1) for well-formed actions
        outside = (per_step < 0) | (per_step >= num_actions)
        if outside.any():
            step = _first_bad_row(outside)
            value = per_step[step][outside[step]]
            raise DatasetError(
                path,
                f"action {int(value[0])} at episode {episode_index}, step {step} is not an "
                f"index of Discrete({num_actions}), [0, {num_actions})",
            )


def _check_actions_in_range(
    path: PathLike, episodes: Sequence[Episode], low: np.ndarray, high: np.ndarray
) -> None:
    """Raise on the first action outside [low, high] widened by ACTION_TOLERANCE.

    NaN counts as outside. The message gives the value, episode, step and index.
    """
    low64 = low.astype(np.float64) - ACTION_TOLERANCE
    high64 = high.astype(np.float64) + ACTION_TOLERANCE
    for episode_index, episode in enumerate(episodes):
        actions = np.asarray(episode.actions, dtype=np.float64)
        outside = ~((actions >= low64) & (actions <= high64))
        if outside.any():
            step, *component = (int(i) for i in np.argwhere(outside)[0])
            index = component[0] if len(component) == 1 else tuple(component)
            value = actions[(step, *component)]
            bound_index = tuple(component)
            raise DatasetError(
                path,
                f"action value {value:.9g} at episode {episode_index}, step {step}, "
                f"index {index} is outside [{low[bound_index]:.9g}, {high[bound_index]:.9g}]",
            )


# ----------------------------------------------------------------------------
# Writing helpers
# ----------------------------------------------------------------------------


def check_episodes(path: Path, episodes: list[Episode]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Check episodes before writing; return the per-step observation and action shapes
    (the action shape is () for discrete actions)."""
    if not episodes:
        raise DatasetError(path, "no episodes to write")
    for index, episode in enumerate(episodes):
        name = f"episode {index}"
        observations = np.asarray(episode.observations)
        actions = np.asarray(episode.actions)
        rewards = np.asarray(episode.rewards)
        _require_per_step_shape(path, f"{name} observations", observations)
        discrete = _action_dtype(actions) == np.int64
        if not discrete:
            _require_per_step_shape(path, f"{name} actions", actions)
        steps = len(actions)
        if steps == 0:
            raise DatasetError(path, f"{name} has 0 steps")
        if len(observations) != steps + 1:
            raise DatasetError(
                path,
                f"{name} has {len(observations)} observations and {steps} actions; "
                f"expected {steps + 1} (T+1) observations",
            )
        if rewards.shape != (steps,):
            raise DatasetError(
                path, f"{name} rewards have shape {rewards.shape}; expected ({steps},)"
            )
        checked = [("rewards", rewards)]  # uint8 frames and int indices need no float check
        if observations.dtype != np.uint8:
            checked.append(("observations", observations))
        if discrete:
            _read_actions(path, f"{name} actions", actions)  # fits int64
        else:
            checked.append(("actions", actions))
        for key, array in checked:
            _to_float32(path, f"{name} {key}", array)
        if index:
            _require_same_shapes(path, name, episode, episodes[0])
    first = episodes[0]
    return tuple(np.shape(first.observations)[1:]), tuple(np.shape(first.actions)[1:])


def _step_flags(steps: int, last: bool) -> np.ndarray:
    """Per-step bool flags: False everywhere except the last step, which is `last`."""
    flags = np.zeros(steps, dtype=bool)
    flags[-1] = last
    return flags


def _flatten_episodes(episodes: list[Episode]) -> dict[str, np.ndarray]:
    """Concatenate episodes into D4RL's flat, step-aligned arrays (observations float32
    or uint8, actions float32 or int64, as `_observation_dtype`/`_action_dtype` say)."""

    def stack(pieces: Iterable[np.ndarray], dtype: np.dtype) -> np.ndarray:
        return np.concatenate([np.asarray(p, dtype=dtype) for p in pieces])

    obs_dtype = _observation_dtype(episodes[0].observations)
    return {
        "observations": stack((e.observations[:-1] for e in episodes), obs_dtype),
        "next_observations": stack((e.observations[1:] for e in episodes), obs_dtype),
        "actions": stack((e.actions for e in episodes), _action_dtype(episodes[0].actions)),
        "rewards": stack((episode.rewards for episode in episodes), np.dtype(np.float32)),
        "terminals": np.concatenate([_step_flags(e.length, bool(e.terminated)) for e in episodes]),
        "timeouts": np.concatenate([_step_flags(e.length, not e.terminated) for e in episodes]),
    }


def create_uint8_dataset(
    group: h5py.Group, key: str, array: np.ndarray, *, resizable: bool = False
) -> None:
    """Write uint8 frames (N, *frame) under `key`, gzip level 1, in chunks of whole
    frames of about 1 MiB; resizable along N (minari's episode layout) if asked."""
    frame_bytes = max(1, int(np.prod(array.shape[1:])))
    rows = max(1, min(len(array), _CHUNK_BYTES // frame_bytes))
    group.create_dataset(
        key,
        data=array,
        chunks=(rows, *array.shape[1:]),
        maxshape=(None, *array.shape[1:]) if resizable else None,
        compression="gzip",
        compression_opts=1,
    )


def _hdf5_metadata_items(path: Path, metadata: dict) -> dict[str, Any]:
    """Check metadata for write_d4rl: scalar str/int/float/bool values under plain names."""
    items = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or "/" in key:
            raise DatasetError(path, f"metadata key {key!r} must be a non-empty string without '/'")
        if isinstance(value, np.generic):
            value = value.item()
        if value is None:
            continue
        if not isinstance(value, (str, int, float, bool)):
            raise DatasetError(
                path,
                f"metadata {key!r} must be a str, int, float or bool, got {type(value).__name__}",
            )
        items[key] = value
    return items


def minari_extra_metadata(
    path: Path, metadata: dict, ref_min_score: float | None, ref_max_score: float | None
) -> dict[str, Any]:
    """Check the caller's provenance keys and reference scores for metadata.json."""
    reserved = sorted(_MINARI_RESERVED_KEYS.intersection(metadata))
    if reserved:
        raise DatasetError(
            path, f"metadata key(s) {', '.join(map(repr, reserved))} are set by write_minari itself"
        )
    extra: dict[str, Any] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise DatasetError(path, f"metadata key {key!r} must be a string")
        if isinstance(value, np.generic):
            value = value.item()
        if key in _MINARI_STRING_KEYS and not isinstance(value, str):
            raise DatasetError(path, f"metadata {key!r} must be a string, got {value!r}")
        if key in _MINARI_SET_KEYS:
            value = _string_set(path, key, value)
        else:
            try:
                json.dumps(value)
            except (TypeError, ValueError) as error:
                raise DatasetError(
                    path, f"metadata {key!r} is not JSON-serializable ({error})"
                ) from error
        extra[key] = value

    scores = {
        "ref_min_score": ref_min_score if ref_min_score is not None else extra.get("ref_min_score"),
        "ref_max_score": ref_max_score if ref_max_score is not None else extra.get("ref_max_score"),
    }
    given = [value is not None for value in scores.values()]
    if any(given) and not all(given):
        raise DatasetError(path, "give both ref_min_score and ref_max_score, or neither")
    if all(given):
        try:
            low, high = float(scores["ref_min_score"]), float(scores["ref_max_score"])
        except (TypeError, ValueError) as error:
            raise DatasetError(path, f"reference scores must be numbers ({error})") from error
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise DatasetError(
                path,
                f"reference scores must be finite with ref_min_score < ref_max_score, "
                f"got {low} and {high}",
            )
        extra.update(ref_min_score=low, ref_max_score=high)
    return extra


def _string_set(path: Path, key: str, value: Any) -> set[str]:
    """Minari stores author/author_email as sets of strings; accept one string or several."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple, set)) or not all(isinstance(v, str) for v in values):
        raise DatasetError(path, f"metadata {key!r} must be a string or strings, got {value!r}")
    return set(values)


def _refuse_non_empty_folder(path: Path) -> None:
    """A Minari destination must not exist, or be an empty folder."""
    if path.is_dir():
        if any(path.iterdir()):
            raise DatasetError(path, "folder exists and is not empty; refusing to overwrite it")
    elif path.exists():
        raise DatasetError(path, "exists and is not a folder; refusing to overwrite it")


@contextlib.contextmanager
def _staging(path: Path, *, is_dir: bool) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write into, then move it to `path`.

    On any error the temporary output is deleted and the error re-raised as a
    DatasetError naming `path`, so nothing half-written is left at `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:12]}")
    if is_dir:
        staging.mkdir()
    try:
        yield staging
        if is_dir and path.is_dir():
            path.rmdir()  # empty, checked by _refuse_non_empty_folder
        elif path.exists():
            raise DatasetError(
                path, "was created by someone else while writing; refusing to overwrite it"
            )
        os.rename(staging, path)
    except BaseException as error:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        elif staging.exists():
            staging.unlink()
        if isinstance(error, DatasetError) or not isinstance(error, Exception):
            raise
        raise DatasetError(
            path, f"cannot write dataset ({type(error).__name__}: {error})"
        ) from error
