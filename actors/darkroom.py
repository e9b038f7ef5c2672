"""Dark Room and Dark Key-to-Door: the grid tasks of Algorithm Distillation.

Laskin et al. 2022, "In-context Reinforcement Learning with Algorithm Distillation"
(arXiv:2210.14215), section 5. Both are 9x9 rooms where the agent sees only its own
position and must find cells it cannot see:

- **Dark Room** (`DarkRoom-v0`): one goal cell per task. Every step whose resulting
  position is the goal pays 1.0 and the episode goes on; 20 steps, then truncated
  (never terminated). Task index = the goal's cell index `y * 9 + x`, 81 tasks.
- **Dark Key-to-Door** (`DarkKeyToDoor-v0`): a key cell and a different door cell per
  task. Reaching the key pays 1.0 once; reaching the door with the key pays 1.0 and
  terminates the episode; otherwise it is truncated after 50 steps. 81 * 80 tasks,
  ordered by key cell, then door cell among the 80 others (`key_door_task`).

The agent starts every episode in the centre cell (4, 4). "Reaching" a cell means a
step's resulting position is that cell, so a goal or key in the centre is reached
by the first step that stays. Observations are float32 `(x, y)` in 0..8; actions
are Discrete(5): 0 stay, 1 up (y - 1), 2 right (x + 1), 3 down (y + 1), 4 left
(x - 1), clipped at the walls. The dynamics are deterministic.

`GridTasks` is a batch of environments of one family, each fixed to its task, with
the part of envpool's gymnasium surface that `actors.envs.VectorEnv` drives:
`reset`, `step`, `async_reset`, `send`, `recv` (whose info carries `env_id`) and
`close`, and envpool's auto-reset (the step after an episode ends ignores its action,
pays 0 with both flags False and returns the new episode's first observation).
`recv` returns results in the order the envs were sent, `batch_size` at a time.
Build them through `VectorEnv(env_id, num_envs, seed, tasks=...)`; `ENVS` is this
module's entry in `actors.envs.LOCAL_ENVS`.
"""

from __future__ import annotations

from collections import deque

import numpy as np

GRID_SIZE = 9
NUM_CELLS = GRID_SIZE * GRID_SIZE
CENTRE = (4, 4)
NUM_ACTIONS = 5
# (dx, dy) of actions 0 stay, 1 up, 2 right, 3 down, 4 left.
MOVES = np.array([[0, 0], [0, -1], [1, 0], [0, 1], [-1, 0]], dtype=np.int64)


def cell_xy(cells: np.ndarray) -> np.ndarray:
    """(x, y) of cell indices `y * 9 + x`; shape (*cells.shape, 2), int64."""
    cells = np.asarray(cells, np.int64)
    return np.stack([cells % GRID_SIZE, cells // GRID_SIZE], axis=-1)


def distance_from_centre(cells: np.ndarray) -> np.ndarray:
    """Manhattan distance of cell indices from the centre cell, int64."""
    return np.abs(cell_xy(cells) - np.array(CENTRE)).sum(-1)


def key_door_task(key: np.ndarray, door: np.ndarray) -> np.ndarray:
    """Key-to-Door task index of (key cell, door cell) pairs, key != door:
    `key * 80 + door`, with doors past the key shifted down by one."""
    key, door = np.asarray(key, np.int64), np.asarray(door, np.int64)
    if np.any(key == door):
        raise ValueError(f"key={key} and door={door} must differ")
    for name, cells in (("key", key), ("door", door)):
        if np.any((cells < 0) | (cells >= NUM_CELLS)):
            raise ValueError(f"{name}={cells} must hold cell indices in [0, {NUM_CELLS})")
    return key * (NUM_CELLS - 1) + door - (door > key)


def key_door_cells(tasks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(key cells, door cells) of Key-to-Door task indices; inverse of `key_door_task`."""
    tasks = np.asarray(tasks, np.int64)
    key, rank = np.divmod(tasks, NUM_CELLS - 1)
    return key, rank + (rank >= key)


class GridTasks:
    """`num_envs` environments of one grid family, env i fixed to task `tasks[i]`.

    Subclasses set the class attributes below and define `_begin` (per-task state at
    an episode's start) and `_arrive` (reward and termination for the envs that just
    moved).
    """

    env_id: str = ""
    num_tasks: int = 0
    max_episode_steps: int = 0
    observation_shape = (2,)
    num_actions = NUM_ACTIONS

    def __init__(self, num_envs: int, tasks: np.ndarray, batch_size: int | None = None):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) \
                or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r} must be a positive int")
        batch_size = num_envs if batch_size is None else batch_size
        if not 1 <= batch_size <= num_envs:
            raise ValueError(f"batch_size={batch_size} must lie in [1, num_envs={num_envs}]")
        self.num_envs, self.batch_size = int(num_envs), int(batch_size)
        self.tasks = self.check_tasks(tasks, self.num_envs)
        self._position = np.tile(np.array(CENTRE, np.int64), (self.num_envs, 1))
        self._elapsed = np.zeros(self.num_envs, np.int64)
        self._ended = np.zeros(self.num_envs, bool)
        self._out_reward = np.zeros(self.num_envs, np.float32)
        self._out_terminated = np.zeros(self.num_envs, bool)
        self._out_truncated = np.zeros(self.num_envs, bool)
        self._pending: deque[int] = deque()
        self._is_pending = np.zeros(self.num_envs, bool)

    @classmethod
    def check_tasks(cls, tasks: np.ndarray, num_envs: int) -> np.ndarray:
        """`tasks` as an int64 (num_envs,) array; ValueError unless every entry is a
        task index of this family."""
        array = np.asarray(tasks)
        if array.shape != (num_envs,) or array.dtype.kind not in "iu":
            raise ValueError(f"tasks must be an int array of shape ({num_envs},) for "
                             f"{cls.env_id}, got {array.dtype} of shape {array.shape}")
        bad = (array < 0) | (array >= cls.num_tasks)
        if bad.any():
            raise ValueError(f"tasks[{int(np.argmax(bad))}]={array[bad][0]} is not a "
                             f"{cls.env_id} task index in [0, {cls.num_tasks})")
        return array.astype(np.int64)

    @classmethod
    def optimal_returns(cls, tasks: np.ndarray | None = None) -> np.ndarray:
        """The best return an episode of each of `tasks` can get (default: every
        task), float64."""
        raise NotImplementedError

    def _begin(self, ids: np.ndarray) -> None:
        """Set the per-task state of envs `ids` for a new episode."""

    def _arrive(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(reward float32, terminated bool) of envs `ids`, which have just moved."""
        raise NotImplementedError

    def _observe(self, ids: np.ndarray) -> np.ndarray:
        return self._position[ids].astype(np.float32)  # (n, 2) = (x, y)

    def _env_ids(self, env_id: np.ndarray | None) -> np.ndarray:
        if env_id is None:
            return np.arange(self.num_envs)
        ids = np.asarray(env_id).reshape(-1)
        if ids.dtype.kind not in "iu" or np.any((ids < 0) | (ids >= self.num_envs)) \
                or len(np.unique(ids)) != len(ids):
            raise ValueError(f"env_id={env_id!r} must hold distinct env indices in "
                             f"[0, {self.num_envs})")
        return ids.astype(np.int64)

    def _start_episode(self, ids: np.ndarray) -> None:
        self._position[ids] = CENTRE
        self._elapsed[ids] = 0
        self._ended[ids] = False
        self._out_reward[ids] = 0.0
        self._out_terminated[ids] = False
        self._out_truncated[ids] = False
        self._begin(ids)

    def _queue(self, ids: np.ndarray) -> None:
        self._is_pending[ids] = True
        self._pending.extend(ids.tolist())

    def reset(self, env_id: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
        """Start a new episode in envs `env_id` (default: all); their first
        observations (n, 2) and info."""
        ids = self._env_ids(env_id)
        self._start_episode(ids)
        return self._observe(ids), self._info(ids)

    def async_reset(self) -> None:
        """Start a new episode in every env; `recv` returns their first observations."""
        self._start_episode(np.arange(self.num_envs))
        self._is_pending[:] = False
        self._pending.clear()
        self._queue(np.arange(self.num_envs))

    def send(self, action: np.ndarray, env_id: np.ndarray | None = None) -> None:
        """Step envs `env_id` (default: all) with action indices `action` (n,); an env
        whose episode ended resets instead, ignoring its action."""
        ids = self._env_ids(env_id)
        action = np.asarray(action)
        if action.shape != ids.shape or action.dtype.kind not in "iu":
            raise ValueError(f"action must be an int array of shape {ids.shape}, got "
                             f"{action.dtype} of shape {action.shape}")
        bad = (action < 0) | (action >= NUM_ACTIONS)
        if bad.any():
            raise ValueError(f"action {int(action[bad][0])} is not an index of "
                             f"Discrete({NUM_ACTIONS})")
        busy = ids[self._is_pending[ids]]
        if busy.size:
            raise RuntimeError(f"env {int(busy[0])} was sent again before recv returned it")
        restart = self._ended[ids]
        self._start_episode(ids[restart])
        move, moved = ids[~restart], action[~restart].astype(np.int64)
        self._position[move] = np.clip(self._position[move] + MOVES[moved], 0, GRID_SIZE - 1)
        self._elapsed[move] += 1
        reward, terminated = self._arrive(move)
        truncated = ~terminated & (self._elapsed[move] >= self.max_episode_steps)
        self._out_reward[move] = reward
        self._out_terminated[move] = terminated
        self._out_truncated[move] = truncated
        self._ended[move] = terminated | truncated
        self._queue(ids)

    def recv(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """(observations, rewards, terminated, truncated, info) of the next
        `batch_size` envs sent, in the order they were sent; info["env_id"] names them."""
        if len(self._pending) < self.batch_size:
            raise RuntimeError(f"recv needs {self.batch_size} envs stepping, "
                               f"{len(self._pending)} were sent")
        ids = np.array([self._pending.popleft() for _ in range(self.batch_size)], np.int64)
        self._is_pending[ids] = False
        return (self._observe(ids), self._out_reward[ids].copy(),
                self._out_terminated[ids].copy(), self._out_truncated[ids].copy(),
                self._info(ids))

    def step(self, action: np.ndarray, env_id: np.ndarray | None = None):
        """`send` then `recv` (lockstep: env_id names `batch_size` envs)."""
        self.send(action, env_id)
        return self.recv()

    def _info(self, ids: np.ndarray) -> dict:
        return {"env_id": ids.astype(np.int32), "elapsed_step": self._elapsed[ids].copy()}

    def close(self) -> None:
        """Nothing to release; present because envpool's environments have it."""


class DarkRoom(GridTasks):
    """Dark Room: reward 1.0 on every step that ends on the task's goal cell."""

    env_id = "DarkRoom-v0"
    num_tasks = NUM_CELLS
    max_episode_steps = 20

    def __init__(self, num_envs: int, tasks: np.ndarray, batch_size: int | None = None):
        super().__init__(num_envs, tasks, batch_size)
        self._goal = cell_xy(self.tasks)  # (N, 2)

    @classmethod
    def optimal_returns(cls, tasks: np.ndarray | None = None) -> np.ndarray:
        """`max_episode_steps - d + 1` for a goal at distance d >= 1 from the centre (d
        steps to get there, rewarded from the d-th on); `max_episode_steps` for the
        centre itself."""
        tasks = np.arange(cls.num_tasks) if tasks is None else cls.check_tasks(
            tasks, np.size(tasks))
        d = distance_from_centre(tasks)
        return np.maximum(cls.max_episode_steps - np.maximum(d, 1) + 1, 0).astype(np.float64)

    def _arrive(self, ids):
        at_goal = (self._position[ids] == self._goal[ids]).all(-1)
        return at_goal.astype(np.float32), np.zeros(len(ids), bool)


class DarkKeyToDoor(GridTasks):
    """Dark Key-to-Door: 1.0 for the first arrival at the key, 1.0 for then reaching
    the door, which ends the episode."""

    env_id = "DarkKeyToDoor-v0"
    num_tasks = NUM_CELLS * (NUM_CELLS - 1)
    max_episode_steps = 50

    def __init__(self, num_envs: int, tasks: np.ndarray, batch_size: int | None = None):
        super().__init__(num_envs, tasks, batch_size)
        key, door = key_door_cells(self.tasks)
        self._key, self._door = cell_xy(key), cell_xy(door)  # (N, 2) each
        self._has_key = np.zeros(self.num_envs, bool)

    @classmethod
    def optimal_returns(cls, tasks: np.ndarray | None = None) -> np.ndarray:
        """2 when the key and then the door can be reached within `max_episode_steps`
        (max(d(centre, key), 1) + d(key, door) steps: a key in the centre takes one
        step that stays), 1 when only the key can, else 0. On the 9x9 room it is 2
        for every task (at most 8 + 16 steps)."""
        tasks = np.arange(cls.num_tasks) if tasks is None else cls.check_tasks(
            tasks, np.size(tasks))
        key, door = key_door_cells(tasks)
        to_key = np.maximum(distance_from_centre(key), 1)
        to_door = to_key + np.abs(cell_xy(key) - cell_xy(door)).sum(-1)
        limit = cls.max_episode_steps
        return ((to_key <= limit).astype(np.float64) + (to_door <= limit)).astype(np.float64)

    def _begin(self, ids):
        self._has_key[ids] = False

    def _arrive(self, ids):
        position, had_key = self._position[ids], self._has_key[ids]
        takes_key = ~had_key & (position == self._key[ids]).all(-1)
        opens_door = had_key & (position == self._door[ids]).all(-1)
        self._has_key[ids] = had_key | takes_key
        return (takes_key | opens_door).astype(np.float32), opens_door


ENVS: dict[str, type[GridTasks]] = {DarkRoom.env_id: DarkRoom,
                                    DarkKeyToDoor.env_id: DarkKeyToDoor}
"""The grid families by env id."""


def split_tasks(num_tasks: int, held_out_fraction: float, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(train, held_out): task indices 0..num_tasks-1 split at random, deterministic
    in `seed`; `round(held_out_fraction * num_tasks)` held out (at least one, and at
    least one left to train on). Both sorted, int64."""
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, (int, np.integer)) \
            or num_tasks < 2:
        raise ValueError(f"num_tasks={num_tasks!r} must be an int >= 2 to split")
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction={held_out_fraction!r} must lie in (0, 1)")
    held = min(max(round(float(held_out_fraction) * int(num_tasks)), 1), int(num_tasks) - 1)
    order = np.random.default_rng(seed).permutation(num_tasks)
    return np.sort(order[held:]).astype(np.int64), np.sort(order[:held]).astype(np.int64)


def optimal_returns(env_id: str, tasks: np.ndarray | None = None) -> np.ndarray:
    """The best episode return of each of `tasks` (default: every task) of a grid
    family, float64."""
    if env_id not in ENVS:
        raise ValueError(f"env_id={env_id!r} is not a grid task ({', '.join(ENVS)})")
    return ENVS[env_id].optimal_returns(tasks)
