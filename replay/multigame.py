"""Multi-game Atari datasets: episodes of several games, each tagged with its game and
the policy that recorded it.

The Multi-Game Decision Transformer (Lee et al. 2022, "Multi-Game Decision
Transformers") trains one model on episodes of many Atari games and of mixed quality.
A multi-game dataset holds such episodes, each with two tags:

- `game`: the envpool task id it was played on ("Pong-v5");
- `policy`: a short string naming the behaviour that recorded it ("random",
  "noisy:0.3", "online-best"; `POLICY_TAG`).

On disk it is one Minari HDF5 dataset folder (the layout of
`replay.datasets.write_minari`, opened by `minari.MinariDataset(folder)`), the episodes
of each game stored one after the other, games in the order given. The tags are string
attributes of each episode group, Minari's episode metadata (as `replay.histories`
stores its tags), which minari returns from `dataset.storage.get_episode_metadata`.
metadata.json names the games (`games`, in order) and the action count (`num_actions`).

Per episode of T steps: observations (T+1, 1, H, W) uint8, one grayscale frame per step
and the one after the last action, stored once (envpool `stack_num=1`,
`actors.envs.MGDT_OPTIONS`; a frame stack would store every frame four times); actions
(T,) int64 indices of the full action set (18 for Atari); rewards (T,) raw, unclipped
(windows clip them, `replay.frame_window`), stored as float64 by minari and read back
as float32; terminations/truncations flags.

Frames are gzip-compressed (level 1, chunks of whole frames of about 1 MiB,
`replay.datasets`' uint8 writer). Measured on one sticky-random episode each of Pong,
Breakout and SpaceInvaders (1,545 frames): 138 bytes per frame with gzip 1, 100 with
gzip 4, 192 with lzf and 7,445 uncompressed (84 x 84 = 7,056 and the chunk index);
gzip 1 read fastest of the three (8 us per frame, against 17 for gzip 4 and 14 for
lzf) and wrote as fast as gzip 4, so it is kept. A whole dataset of 24 complete
episodes of those three games ("random" and "noisy:0.3", 13,476 steps, 560 per
episode on average) took 209 bytes per step on disk: 160 of frames, 18 of the
per-step arrays minari writes uncompressed (int64 action, float64 reward, two bool
flags) and about 17.6 kB of HDF5 headers per episode (31 per step at that length).
Short episodes pay more for the headers: 387 bytes per step at 80 steps per episode,
515 at 60 (tests/test_multigame_data.py's recording, which checks the bound). In memory a step costs its 7,056-byte
frame plus 12 bytes of action and reward as loaded, and 7,092 bytes once joined for
sampling (`replay.frame_window.GameSteps`): 50 MB hold about 7,000 steps, 34 times
what they take on disk.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

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
    create_uint8_dataset,
    minari_extra_metadata,
)

EPISODE_TAGS = ("game", "policy")
"""The string attributes of every episode group."""
NUM_ATARI_ACTIONS = 18
"""Atari's full action set (envpool `full_action_space=True`), every game's actions."""
POLICY_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,63}")
"""A policy tag: up to 64 letters, digits and `_ . : + -`, starting with a letter or
digit ("random", "noisy:0.3", "online-best")."""
GAME_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/+-]{0,127}")
"""A game: an envpool task id such as "Pong-v5" (letters, digits, `_ . : / + -`)."""
DATASET_ID = "onramp/atari/multigame-v0"


class TaggedEpisode(NamedTuple):
    """One episode of a multi-game dataset and the policy that recorded it; its game is
    the key it is listed under. A plain `(episode, policy)` pair unpacks the same way."""

    episode: Episode
    policy: str


def check_policy_tag(tag: str) -> str:
    """`tag` itself; ValueError unless it is a string matching `POLICY_TAG`."""
    if not isinstance(tag, str) or not POLICY_TAG.fullmatch(tag):
        raise ValueError(f"policy tag {tag!r} must be a short string of letters, digits and "
                         "'_.:+-' (at most 64), such as 'random', 'noisy:0.3' or 'online-best'")
    return tag


def write_multigame(path: PathLike, episodes_by_game: Mapping[str, Sequence[tuple[Episode, str]]],
                    *, num_actions: int = NUM_ATARI_ACTIONS, metadata: dict | None = None
                    ) -> Path:
    """Write episodes of several games as a Minari dataset folder at `path`; return it.

    `episodes_by_game` maps each game (an envpool id) to its `(Episode, policy_tag)`
    pairs (or `TaggedEpisode`s), written in that order, game after game. Every episode
    has uint8 frames of one shape (1, H, W) (one frame per step, no stack) and int64
    actions in [0, num_actions). `metadata` holds provenance (envpool_version,
    envpool options, seed, ...), stored in metadata.json next to `games` and
    `num_actions`, which are set here (`replay.datasets.write_minari`'s rules for the
    rest).

    DatasetError names the path and the problem: an existing non-empty folder, no games,
    a game id or policy tag of the wrong form, a game without episodes, an item that is
    not an (Episode, tag) pair, frames that are not uint8 (1, H, W), and everything
    `write_minari` refuses (step counts, shapes, non-finite rewards, action indices).
    The folder is built beside `path` and moved there only once complete.
    """
    path = Path(path).absolute()
    _refuse_non_empty_folder(path)
    if isinstance(num_actions, bool) or not isinstance(num_actions, (int, np.integer)) \
            or num_actions < 1:
        raise DatasetError(path, f"num_actions={num_actions!r} must be a positive int")
    if not isinstance(episodes_by_game, Mapping) or not episodes_by_game:
        raise DatasetError(path, "episodes_by_game must map at least one game to its "
                                 f"(Episode, policy tag) pairs, got {episodes_by_game!r:.80}")
    metadata = dict(metadata or {})
    taken = sorted({"games", "num_actions"} & set(metadata))
    if taken:
        raise DatasetError(path, f"metadata key {taken[0]!r} is set by write_multigame itself")
    games = list(episodes_by_game)
    episodes: list[Episode] = []
    tags: list[dict[str, str]] = []
    for game in games:
        if not isinstance(game, str) or not GAME_ID.fullmatch(game):
            raise DatasetError(path, f"game {game!r} must be an envpool task id such as "
                                     "'Pong-v5'")
        items = episodes_by_game[game]
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
            raise DatasetError(path, f"game {game} has no episodes (expected a non-empty "
                                     "list of (Episode, policy tag) pairs)")
        for index, item in enumerate(items):
            name = f"game {game} item {index}"
            if not (isinstance(item, tuple) and len(item) == 2
                    and isinstance(item[0], Episode)):
                raise DatasetError(path, f"{name} must be an (Episode, policy tag) pair, got "
                                         f"{type(item).__name__}")
            episode, policy = item
            try:
                check_policy_tag(policy)
            except ValueError as error:
                raise DatasetError(path, f"{name}: {error}") from error
            _check_frames(path, name, episode.observations)
            episodes.append(episode)
            tags.append({"game": game, "policy": policy})
    check_episodes(path, episodes)
    check_action_indices(path, episodes, int(num_actions))
    extra = minari_extra_metadata(
        path, {**metadata, "games": games, "num_actions": int(num_actions)}, None, None)
    frame_shape = tuple(np.shape(episodes[0].observations)[1:])

    import gymnasium
    import minari
    from minari.data_collector import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    buffers = (
        EpisodeBuffer(
            observations=None,  # minari skips the key; the frames are added compressed
            actions=np.asarray(episode.actions, np.int64),
            rewards=np.asarray(episode.rewards, np.float64),
            terminations=_step_flags(episode.length, bool(episode.terminated)),
            truncations=_step_flags(episode.length, bool(episode.truncated)),
        )
        for episode in episodes
    )
    with _staging(path, is_dir=True) as staging:
        storage = MinariStorage.new(
            staging,
            observation_space=gymnasium.spaces.Box(0, 255, frame_shape, np.uint8),
            action_space=gymnasium.spaces.Discrete(int(num_actions)),
            data_format="hdf5",
        )
        storage.update_episodes(buffers)
        with h5py.File(staging / MINARI_DATA_FILE, "a") as file:
            for index, episode in enumerate(episodes):
                create_uint8_dataset(file[f"episode_{index}"], "observations",
                                      np.asarray(episode.observations, np.uint8),
                                      resizable=True)
        storage.update_episode_metadata(tags)  # also records the dataset's size
        storage.update_metadata({"dataset_id": DATASET_ID,
                                 "minari_version": minari.__version__, **extra})
    return path


def load_multigame(path: PathLike) -> dict[str, list[TaggedEpisode]]:
    """Read the dataset `write_multigame` wrote at `path`: game -> its episodes with
    their policy tags, games and episodes in their stored order.

    DatasetError names the file and the problem: metadata.json without `games` or
    `num_actions`, an episode group without a string `game` or `policy` attribute, a
    game not listed in `games` or listed without episodes, frames that are not uint8
    (1, H, W), action indices outside [0, num_actions), and everything
    `replay.datasets.load_minari` refuses.
    """
    folder = _resolve_minari_folder(Path(path))
    metadata_file = folder / MINARI_METADATA_FILE
    metadata = _read_minari_metadata(metadata_file)
    games = metadata.get("games")
    if not (isinstance(games, list) and games and all(isinstance(g, str) for g in games)):
        raise DatasetError(metadata_file, f"'games' must list the dataset's games, got "
                                          f"{games!r} (is this a multi-game dataset?)")
    num_actions = metadata.get("num_actions")
    if isinstance(num_actions, bool) or not isinstance(num_actions, int) or num_actions < 1:
        raise DatasetError(metadata_file, f"'num_actions' must be a positive int, got "
                                          f"{num_actions!r}")
    data_file = folder / MINARI_DATA_FILE
    with _read_errors_as_dataset_error(data_file), _open_hdf5(data_file) as file:
        episodes = _read_minari_episodes(file, data_file, metadata.get("total_episodes"))
        tags = [_read_tags(file[f"episode_{i}"], f"episode_{i}", data_file)
                for i in range(len(episodes))]
    _check_frames(data_file, "episode_0", episodes[0].observations)
    check_action_indices(data_file, episodes, num_actions)
    by_game: dict[str, list[TaggedEpisode]] = {game: [] for game in games}
    for index, (episode, tag) in enumerate(zip(episodes, tags)):
        if tag["game"] not in by_game:
            raise DatasetError(data_file, f"episode_{index} is of game {tag['game']!r}, "
                                          f"which metadata.json's games {games} do not list")
        by_game[tag["game"]].append(TaggedEpisode(episode, tag["policy"]))
    empty = [game for game, items in by_game.items() if not items]
    if empty:
        raise DatasetError(data_file, f"game {empty[0]!r} is listed in metadata.json but has "
                                      "no episodes")
    return by_game


def _check_frames(path: PathLike, name: str, observations: np.ndarray) -> None:
    """DatasetError unless `observations` are uint8 frames (T+1, 1, H, W)."""
    observations = np.asarray(observations)
    if observations.dtype != np.uint8 or observations.ndim != 4 or observations.shape[1] != 1:
        raise DatasetError(path, f"{name} observations are {observations.dtype} of shape "
                                 f"{observations.shape}; a multi-game dataset stores one uint8 "
                                 "frame per step, (T+1, 1, H, W) (envpool stack_num=1)")


def _read_tags(group: h5py.Group, name: str, path: Path) -> dict[str, str]:
    """The episode's game and policy, from its group's string attributes."""
    tags = {}
    for tag in EPISODE_TAGS:
        if tag not in group.attrs:
            raise DatasetError(path, f"{name} has no attribute {tag!r} (a multi-game dataset "
                                     f"tags every episode with {', '.join(EPISODE_TAGS)})")
        value = group.attrs[tag]
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if not isinstance(value, str) or not value:
            raise DatasetError(path, f"{name} attribute {tag!r} must be a non-empty string, "
                                     f"got {value!r}")
        tags[tag] = value
    return tags
