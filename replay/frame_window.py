"""The frame-window item format: windows of consecutive steps of one episode of one
Atari game, for the Multi-Game Decision Transformer.

Reference: Lee et al. 2022, "Multi-Game Decision Transformers"; the batch is what the
`mgdt` objective reads (learner/objectives/mgdt.py). An item is a window of
`context_len` (T) consecutive steps of one episode ending at any of its steps,
left-padded with mask 0 before the episode's first step (as `episode_window`), never
spanning two episodes or two games. Per position it holds:

- observations (T, 1, H, W) uint8: the frame the action was taken in;
- actions (T,) int64 indices of the full action set;
- rewards (T,) float32, clipped to [-1, 1];
- returns_to_go (T,) float32: the undiscounted sum of the clipped rewards from that
  step to the episode's end (hindsight, as the model's return buckets expect);
- terminals (T,) float32: 1 on the last step of a terminated (not truncated) episode;
- mask (T,) float32: 1 on real steps, 0 on padding (padding is all zeros);

and per window, game () int64: the window's game's index in the sorted game list
(`GameSteps.games`), for per-game metrics.

Sampling (`FrameSampler`) is uniform over steps by default, so each game is drawn in
proportion to its steps, as `episode_window` and `history_window` sample and as the
paper's data (the same number of transitions per game) amounts to; `balance_games=True`
draws each game equally often whatever its size, then a step of it uniformly, for
recordings whose games differ in size (a fixed number of episodes per game gives Pong
several times Breakout's steps).

Online, `FrameWindowWriter` writes finished episodes into the Reverb experience table
(each frame stored once, one item per step, the game index a per-item column) and
`FrameWindows.batches` samples them back as the same windows. The in-memory parts are
numpy only; the Reverb parts import it when used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Self

import numpy as np

from replay.datasets import Episode
from replay.formats import ItemFormat
from replay.multigame import NUM_ATARI_ACTIONS
from replay.offline import OfflineSampler
from replay.windows import returns_to_go

REWARD_CLIP = 1.0
"""Rewards are clipped to [-REWARD_CLIP, REWARD_CLIP] in windows (MGDT, as DQN)."""
FRAME_WINDOW_KEYS = ("observations", "actions", "returns_to_go", "rewards", "terminals",
                     "mask", "game")
"""The keys of a batch of frame windows."""


@dataclass
class GameSteps:
    """The steps of many episodes of several games, concatenated game by game (in
    `games` order) and episode by episode, with every window column computed once.

    In memory a step costs its frame (1 x 84 x 84 = 7,056 bytes) plus 36 bytes of
    columns; the final frame of each episode (after its last action) is not kept.
    """

    games: tuple[str, ...]
    """The game list; `game` indexes it."""
    observations: np.ndarray  # (N, C, H, W) uint8, the frame each action was taken in
    actions: np.ndarray  # (N,) int64
    rewards: np.ndarray  # (N,) float32, clipped to [-1, 1]
    returns_to_go: np.ndarray  # (N,) float32, of the clipped rewards, to the episode end
    terminals: np.ndarray  # (N,) float32, 1 on the last step of a terminated episode
    episode_start: np.ndarray  # (N,) int64, flat index of the step's episode's first step
    game: np.ndarray  # (N,) int64, index of the step's game in `games`
    game_ranges: np.ndarray  # (G, 2) int64, [start, end) of each game's steps

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def steps_per_game(self) -> dict[str, int]:
        """Steps of each game of `games` (0 for a game without data)."""
        sizes = self.game_ranges[:, 1] - self.game_ranges[:, 0]
        return dict(zip(self.games, sizes.tolist()))


def concat_games(episodes_by_game: Mapping[str, Sequence[Episode | tuple[Episode, str]]],
                 games: Sequence[str] | None = None,
                 num_actions: int = NUM_ATARI_ACTIONS) -> GameSteps:
    """Join the episodes of several games (`replay.multigame.load_multigame`'s result:
    game -> `TaggedEpisode`s; bare `Episode`s are accepted too) into one `GameSteps`.

    `games` is the game list the windows' `game` indexes: by default the data's games,
    sorted; given, it must hold every game of the data, in any order, and may name games
    without data (never sampled), so a model's game indices can outlive one dataset.
    ValueError names the game and the episode when a game is not in `games`, when
    frames are not uint8 (T+1, C, H, W) of one shape across games, an episode has no
    steps, or actions are not integer indices in [0, num_actions); and when there is
    no step at all.
    """
    data_games = list(episodes_by_game)
    if games is None:
        games = sorted(data_games)
    games = tuple(games)
    if len(set(games)) != len(games):
        raise ValueError(f"games={list(games)} names a game twice")
    missing = [game for game in data_games if game not in games]
    if missing:
        raise ValueError(f"game {missing[0]!r} of the data is not in games={list(games)}")
    parts: dict[str, list[np.ndarray]] = {name: [] for name in (
        "observations", "actions", "rewards", "returns_to_go", "terminals", "episode_start",
        "game")}
    ranges = np.zeros((len(games), 2), np.int64)
    frame_shape = None
    offset = 0
    for g, game in enumerate(games):
        ranges[g, 0] = offset
        for index, item in enumerate(episodes_by_game.get(game, ())):
            episode = item if isinstance(item, Episode) else item[0]
            columns = episode_columns(episode, f"game {game} episode {index}", num_actions,
                                      frame_shape)
            frame_shape = columns["observations"].shape[1:]
            n = len(columns["actions"])
            for name in ("observations", "actions", "rewards", "returns_to_go", "terminals"):
                parts[name].append(columns[name])
            parts["episode_start"].append(np.full(n, offset, np.int64))
            parts["game"].append(np.full(n, g, np.int64))
            offset += n
        ranges[g, 1] = offset
    if offset == 0:
        raise ValueError("concat_games needs at least one episode with a step")
    joined = {name: np.concatenate(values) for name, values in parts.items()}
    return GameSteps(games=games, game_ranges=ranges, **joined)


def episode_columns(episode: Episode, name: str, num_actions: int = NUM_ATARI_ACTIONS,
                    frame_shape: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
    """One episode's per-step columns as windows hold them: observations (T, C, H, W)
    uint8 (the frame each action was taken in; the final frame is dropped), actions
    (T,) int64, rewards clipped to [-1, 1], returns_to_go of the clipped rewards and
    terminals (1 on the last step of a terminated episode), (T,) float32 each.

    ValueError, naming the episode by `name`, when frames are not uint8 (T+1, C, H, W)
    (of `frame_shape` when given), the episode has no steps, or actions are not
    integer indices in [0, num_actions).
    """
    frames = np.asarray(episode.observations)
    if frames.dtype != np.uint8 or frames.ndim != 4:
        raise ValueError(f"{name}: observations must be uint8 frames (T+1, C, H, W), "
                         f"got {frames.dtype} of shape {frames.shape}")
    if frame_shape is not None and frames.shape[1:] != tuple(frame_shape):
        raise ValueError(f"{name}: frames of shape {frames.shape[1:]} differ from the "
                         f"expected {tuple(frame_shape)}")
    actions = np.asarray(episode.actions)
    n = len(actions)
    if n == 0:
        raise ValueError(f"{name} has no steps")
    if len(frames) != n + 1 or np.shape(episode.rewards) != (n,):
        raise ValueError(f"{name}: {len(frames)} frames, {n} actions and rewards of "
                         f"shape {np.shape(episode.rewards)}; expected T+1, T and (T,)")
    if actions.ndim != 1 or not np.issubdtype(actions.dtype, np.integer):
        raise ValueError(f"{name}: actions must be (T,) integer indices, got "
                         f"{actions.dtype} of shape {actions.shape}")
    if actions.min() < 0 or actions.max() >= num_actions:
        raise ValueError(f"{name}: actions span [{actions.min()}, {actions.max()}], "
                         f"outside [0, num_actions={num_actions})")
    rewards = np.clip(np.asarray(episode.rewards, np.float32), -REWARD_CLIP, REWARD_CLIP)
    terminals = np.zeros(n, np.float32)
    terminals[-1] = float(bool(episode.terminated))
    return {"observations": frames[:-1], "actions": actions.astype(np.int64),
            "rewards": rewards, "returns_to_go": returns_to_go(rewards),
            "terminals": terminals}


def gather_frame_windows(steps: GameSteps, ends: np.ndarray,
                         context_len: int) -> dict[str, np.ndarray]:
    """Windows of `context_len` steps ending at flat indices `ends`, each inside the
    episode of its end step, left-padded before that episode's first step.

    Returns FRAME_WINDOW_KEYS: observations (B, T, C, H, W) uint8, actions (B, T) int64,
    returns_to_go, rewards, terminals and mask (B, T) float32, game (B,) int64; padded
    positions are zeros with mask 0.
    """
    ends = np.asarray(ends, np.int64)
    idx = ends[:, None] + np.arange(1 - context_len, 1)  # (B, T)
    valid = idx >= steps.episode_start[ends][:, None]  # (B, T)
    idx = np.where(valid, idx, ends[:, None])  # any in-range index; zeroed below
    out = {
        "observations": steps.observations[idx],  # (B, T, C, H, W)
        "actions": steps.actions[idx],
        "returns_to_go": steps.returns_to_go[idx],
        "rewards": steps.rewards[idx],
        "terminals": steps.terminals[idx],
    }
    for name, value in out.items():
        pad = ~valid.reshape(valid.shape + (1,) * (value.ndim - 2))
        out[name] = np.where(pad, np.zeros((), value.dtype), value)
    out["mask"] = valid.astype(np.float32)
    out["game"] = steps.game[ends]
    return out


class FrameSampler(OfflineSampler):
    """Windows of `GameSteps`, ending at a step drawn uniformly over all steps (each game
    in proportion to its steps), or with `balance_games`, at a uniformly drawn game's
    uniformly drawn step (each game with data equally often)."""

    gather = staticmethod(gather_frame_windows)

    def __init__(self, steps: GameSteps, context_len: int, batch_size: int, seed: int = 0,
                 balance_games: bool = False):
        if not isinstance(steps, GameSteps):
            raise TypeError(f"frame_window samples several games' steps "
                            f"(replay.frame_window.concat_games), not {type(steps).__name__}")
        if context_len < 1 or batch_size < 1:
            raise ValueError(f"{context_len=} and {batch_size=} must be >= 1")
        super().__init__(steps, context_len, batch_size, seed)
        self.balance_games = bool(balance_games)
        sizes = steps.game_ranges[:, 1] - steps.game_ranges[:, 0]
        self._ranges = steps.game_ranges[sizes > 0]  # (G', 2), games with data

    def sample(self) -> dict[str, np.ndarray]:
        if self.balance_games:
            drawn = self._ranges[self.rng.integers(0, len(self._ranges), self.batch_size)]
            ends = self.rng.integers(drawn[:, 0], drawn[:, 1])  # (B,)
        else:
            ends = self.rng.integers(0, len(self.steps), size=self.batch_size)
        return self.gather(self.steps, ends, self.context_len)


class FrameWindowWriter:
    """Writes finished Atari episodes into the experience table as frame windows, one
    item per step (`FrameWindows.stored_shapes`), through `replay.writer.WindowWriter`:
    each frame is stored once, however many windows hold it. A sampled item equals
    `gather_frame_windows` of the same episode at the same step.

        with FrameWindowWriter(address, spec) as writer:
            writer.write(episode, game=1)   # a replay.datasets.Episode of game 1

    `num_actions` bounds the action indices (the full Atari set by default),
    `num_games` (when given) the game indices. Blocking on the rate limiter and `close`
    as `WindowWriter`, which it holds rather than extends: `replay.writer` imports Reverb,
    and this module stays importable without it.
    """

    def __init__(self, client_or_address, spec, num_actions: int = NUM_ATARI_ACTIONS,
                 num_games: int | None = None, **options):
        from replay.writer import WindowWriter

        shapes = FrameWindows().stored_shapes(spec)
        # Every column but `game` is stored per step; an item's game is its last step's.
        step_shapes = {name: (shape[1:] if name != "game" else shape, dtype)
                       for name, (shape, dtype) in shapes.items()}
        self._frame_shape = tuple(spec.observation_shape)
        self._num_actions = num_actions
        self._num_games = num_games
        self._writer = WindowWriter(client_or_address, spec.context_len, step_shapes,
                                    last_step_columns=("game",), **options)

    @property
    def items_written(self) -> int:
        return self._writer.items_written

    def write(self, episode: Episode, game: int) -> int:
        """Write one episode of game index `game` as one window per step; return the
        count. ValueError names what is wrong with the episode (`episode_columns`), or a
        game index outside [0, num_games) when `num_games` was given."""
        if isinstance(game, bool) or not isinstance(game, (int, np.integer)) or game < 0 or (
                self._num_games is not None and game >= self._num_games):
            raise ValueError(f"game={game!r} must be an int index in [0, "
                             f"{self._num_games if self._num_games is not None else 'num_games'})")
        columns = episode_columns(episode, f"episode of game {game}", self._num_actions,
                                  self._frame_shape)
        n = len(columns["actions"])
        columns["mask"] = np.ones(n, np.float32)
        columns["game"] = np.full(n, game, np.int64)
        return self._writer.write_columns(columns, n)

    def close(self, timeout_ms: int = 10_000) -> None:
        self._writer.close(timeout_ms)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class FrameWindows(ItemFormat):
    """One item per step of an Atari episode: the T steps of its episode ending there,
    left-padded, with the episode's game index."""

    key = "frame_window"

    def stored_shapes(self, spec):
        T, obs = spec.context_len, tuple(spec.observation_shape)
        return {
            "observations": ((T, *obs), np.uint8),
            "actions": ((T,), np.int64),
            "returns_to_go": ((T,), np.float32),
            "rewards": ((T,), np.float32),
            "terminals": ((T,), np.float32),
            "mask": ((T,), np.float32),
            "game": ((), np.int64),
        }

    def writer(self, client_or_address, spec):
        return FrameWindowWriter(client_or_address, spec)

    def batches(self, address, spec, batch_size, **options):
        from replay.stream import item_batches

        return item_batches(address, self.stored_shapes(spec), batch_size, **options)

    def offline_sampler(self, steps, context_len, batch_size, seed=0, balance_games=False):
        return FrameSampler(steps, context_len, batch_size, seed=seed,
                            balance_games=balance_games)
