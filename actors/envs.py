"""envpool environments as onramp uses them.

- Vector observations come back as float32 (envpool gives float64 for MuJoCo); image
  observations (Atari's stacked 84x84 frames) stay uint8.
- The policy acts in [-1, 1] on a Box action space; `VectorEnv.step` rescales to the
  environment's box. On a Discrete space it acts with action indices (int32).
- envpool auto-resets on the step *after* an episode ends: that step ignores the
  action and returns reward 0 (reference/datasets.md §3.4). `VectorEnv` hides it:
  it resets finished environments itself, so every `step` result is a real
  transition, and it keeps terminated apart from truncated.

D4RL-comparable ids: Hopper-v4, HalfCheetah-v4, Walker2d-v4, Ant-v3 (111-dim
observation); v5 differs from D4RL.

Task families onramp implements itself (`LOCAL_ENVS`: Dark Room and Dark
Key-to-Door, `actors.darkroom`) are built by id in place of an envpool task, with a
task index per environment (`VectorEnv(..., tasks=)`), and driven through the same
calls.

envpool's own task options (`env_spec(..., options=)`, `VectorEnv(..., options=)`,
`launch.presets.EnvConfig.options`) are passed to `envpool.make_gymnasium` by name,
e.g. `MGDT_OPTIONS` for the Multi-Game Decision Transformer's Atari: single 84x84
grayscale frames per step (`stack_num=1`, observation (1, 84, 84) uint8) and the full
18-action set for every game (`full_action_space=True`, Discrete(18)). `check_options`
refuses a name the task does not have, one that `VectorEnv` sets itself, and a value
of the wrong type.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from actors import darkroom
from replay.windows import ActionBox, ActionIndex

D4RL_ENV_IDS = ("Hopper-v4", "HalfCheetah-v4", "Walker2d-v4", "Ant-v3")

LOCAL_ENVS: dict[str, type] = {**darkroom.ENVS}
"""onramp's own task families by env id. Each class is built as `(num_envs, tasks,
batch_size)`, has the envpool calls `VectorEnv` makes (reset, step, async_reset, send,
recv, close) and the class attributes `observation_shape`, `num_actions` (Discrete
actions) and `max_episode_steps` that `env_spec` reads."""
LOCAL_ENV_VERSION = "onramp"
"""`EnvSpec.envpool_version` of a `LOCAL_ENVS` family."""


MGDT_OPTIONS: Mapping = MappingProxyType({"stack_num": 1, "full_action_space": True})
"""envpool options of the Multi-Game Decision Transformer's Atari games (Lee et al.
2022): one 84x84 grayscale frame per step, (1, 84, 84) uint8, the model's context of T
steps giving the temporal view instead of a frame stack; and the full 18-action set,
so one action head serves every game. Every other Atari option keeps envpool's
default (frame skip 4, up to 30 no-op starts, raw rewards, no sticky actions,
108,000-frame episodes)."""

RESERVED_OPTIONS = ("num_envs", "batch_size", "seed", "max_num_players",
                    "gym_reset_return_info")
"""envpool config fields `VectorEnv` sets or relies on itself; refused as options."""

_MIN_OPTION_VALUES = {"stack_num": 1, "frame_skip": 1, "img_height": 1, "img_width": 1,
                      "max_episode_steps": 1}
"""Lower bounds of integer options envpool does not check (Atari with `stack_num=0`
builds a (0, 84, 84) space and crashes at reset)."""


class EnvError(ValueError):
    """An environment id envpool does not know, or an unsupported space."""


def check_options(env_id: str, options: Mapping | None) -> dict:
    """`options` as a plain dict of envpool task options for `env_id` ({} for None).

    ValueError names the option and the problem: options for a `LOCAL_ENVS` family
    (which take none), a name that is not a string, one of `RESERVED_OPTIONS`, one
    that is not a field of envpool's config for `env_id` (the message lists those), a
    value whose type differs from the field's default (a bool for a bool, an int for an
    int, a number for a float, a string for a string), an integer below the bound
    envpool needs (`stack_num`, `frame_skip`, ... >= 1), or anything else envpool's
    `make_spec` refuses (its error's first line). An id envpool does not know is an
    `EnvError`.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(  # noqa: TRY004 - onramp refuses bad input with a ValueError
            f"options={options!r} for env_id={env_id!r} must be a mapping of envpool option "
            "names to values")
    options = dict(options)
    if not options:
        return {}
    if env_id in LOCAL_ENVS:
        raise ValueError(f"options={options!r}: env_id={env_id!r} is one of onramp's own "
                         "task families, which take no envpool options")
    names = [name for name in options if not isinstance(name, str)]
    if names:
        raise ValueError(f"options for env_id={env_id!r}: option name {names[0]!r} must be "
                         "a string")
    reserved = [name for name in options if name in RESERVED_OPTIONS]
    if reserved:
        raise ValueError(f"options for env_id={env_id!r}: {reserved[0]!r} is set by "
                         f"VectorEnv itself, not as an option ({', '.join(RESERVED_OPTIONS)})")
    import envpool

    if env_id not in envpool.list_all_envs():
        raise EnvError(f"env_id={env_id!r} is not an envpool task (see envpool.list_all_envs())")
    defaults = envpool.make_spec(env_id).config._asdict()
    unknown = [name for name in options if name not in defaults]
    if unknown:
        known = [name for name in defaults if name not in RESERVED_OPTIONS]
        raise ValueError(f"options for env_id={env_id!r}: {unknown[0]!r} is not an envpool "
                         f"option of this task; its options: {', '.join(known)}")
    for name, value in options.items():
        problem = _option_type_problem(defaults[name], value)
        if problem:
            raise ValueError(f"options for env_id={env_id!r}: {name}={value!r} must be "
                             f"{problem}, like its default {defaults[name]!r}")
        low = _MIN_OPTION_VALUES.get(name)
        if low is not None and value < low:
            raise ValueError(f"options for env_id={env_id!r}: {name}={value!r} must be "
                             f">= {low}")
    try:
        envpool.make_spec(env_id, **options)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"options={options!r} for env_id={env_id!r}: envpool refused them "
                         f"({_first_line(error)})") from error
    return options


def _first_line(error: BaseException) -> str:
    """The first line of an error's message (pybind11's list every signature below it)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _option_type_problem(default, value) -> str | None:
    """What `value` must be to stand for an option whose default is `default`, or None
    when it fits (options whose default is not a bool, number or string are not checked)."""
    if isinstance(default, bool):
        return None if isinstance(value, (bool, np.bool_)) else "a bool"
    if isinstance(default, int):
        fits = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
        return None if fits else "an int"
    if isinstance(default, float):
        fits = isinstance(value, (int, float, np.integer, np.floating)) \
            and not isinstance(value, (bool, np.bool_))
        return None if fits else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    return None


@dataclass(frozen=True)
class EnvSpec:
    env_id: str
    observation_shape: tuple[int, ...]
    action_shape: tuple[int, ...]
    action_low: np.ndarray
    action_high: np.ndarray
    max_episode_steps: int
    envpool_version: str
    observation_dtype: str = "float32"
    """'float32' (vector observations) or 'uint8' (image frames)."""
    num_actions: int = 0
    """Size of a Discrete action space; 0 for a Box."""

    @property
    def discrete(self) -> bool:
        return self.num_actions > 0

    @property
    def state_dim(self) -> int:
        return int(np.prod(self.observation_shape))

    @property
    def act_dim(self) -> int:
        """Box: the action vector's size; Discrete: the number of actions."""
        return self.num_actions if self.discrete else int(np.prod(self.action_shape))

    @property
    def action_dtype(self) -> str:
        return "int32" if self.discrete else "float32"

    @property
    def action_kind(self) -> str:
        """The model's action kind (`models.ModelConfig.action_kind`)."""
        return "discrete" if self.discrete else "continuous"

    @property
    def action_box(self) -> ActionBox | ActionIndex:
        """The map between onramp's actions and the environment's."""
        if self.discrete:
            return ActionIndex(self.num_actions)
        return ActionBox.from_bounds(self.action_low, self.action_high)

    def info(self) -> dict:
        """The spec as plain values (shapes, action bounds, episode limit, dtypes), as the
        roles and the episode log take it (`launch.runs.env_info`)."""
        return {
            "observation_shape": self.observation_shape,
            "action_shape": self.action_shape,
            "action_low": self.action_low.tolist(),
            "action_high": self.action_high.tolist(),
            "max_episode_steps": self.max_episode_steps,
            "observation_dtype": self.observation_dtype,
            "action_dtype": self.action_dtype,
            "num_actions": self.num_actions,
        }

    @property
    def action_space(self) -> str:
        """The action space in words, for messages: 'Discrete(6)' or 'Box(3,)'."""
        return f"Discrete({self.num_actions})" if self.discrete else f"Box{self.action_shape}"


def _make(env_id: str, num_envs: int, seed: int, batch_size: int | None = None,
          tasks: np.ndarray | None = None, options: dict | None = None):
    """The envpool (or `LOCAL_ENVS`) batch; `options` were checked by `check_options`."""
    options = options or {}
    family = LOCAL_ENVS.get(env_id)
    if family is not None:
        if tasks is None:
            raise ValueError(f"env_id={env_id!r} needs tasks=, a ({num_envs},) int array of "
                             "task indices")
        return family(num_envs, tasks, batch_size=batch_size or num_envs)
    if tasks is not None:
        raise ValueError(f"tasks= is for onramp's own task families ({', '.join(LOCAL_ENVS)}); "
                         f"env_id={env_id!r} takes none")
    import envpool

    if env_id not in envpool.list_all_envs():
        raise EnvError(f"env_id={env_id!r} is not an envpool task (see envpool.list_all_envs())")
    with _float32_bounds_accepted():
        try:
            env = envpool.make_gymnasium(env_id, num_envs=num_envs, seed=seed,
                                         batch_size=batch_size or num_envs, **options)
        except (TypeError, ValueError, RuntimeError) as error:
            if not options:
                raise
            raise ValueError(f"options={options!r} for env_id={env_id!r}: envpool refused "
                             f"them ({_first_line(error)})") from error
        _ = env.observation_space, env.action_space  # built once, here, and kept by envpool
        return env


@contextlib.contextmanager
def _float32_bounds_accepted():
    """A context in which gymnasium's warning that float64 Box bounds (MuJoCo's,
    CartPole's) are stored as float32 is not shown: harmless, and raised for every
    space envpool builds."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*precision lowered.*")
        yield


def env_spec(env_id: str, options: Mapping | None = None) -> EnvSpec:
    """Spaces and limits of `env_id` built with envpool `options` (`check_options`),
    read from a one-env envpool instance, or from the class of a `LOCAL_ENVS` family."""
    options = check_options(env_id, options)
    family = LOCAL_ENVS.get(env_id)
    if family is not None:
        n = int(family.num_actions)
        return EnvSpec(env_id=env_id, observation_shape=tuple(family.observation_shape),
                       action_shape=(), action_low=np.zeros((), np.float32),
                       action_high=np.full((), n - 1, np.float32),
                       max_episode_steps=int(family.max_episode_steps),
                       envpool_version=LOCAL_ENV_VERSION, num_actions=n)
    env = _make(env_id, 1, 0, options=options)
    try:
        return _envpool_spec(env_id, env)
    finally:
        env.close()


def _envpool_spec(env_id: str, env) -> EnvSpec:
    """The spec of `env_id` read from `env`, an envpool instance of it."""
    import envpool

    obs, act = env.observation_space, env.action_space
    if not hasattr(obs, "low") or obs.dtype is None:
        raise EnvError(f"env_id={env_id!r} has observation space {obs}; onramp needs a Box")
    obs_dtype = "uint8" if np.dtype(obs.dtype) == np.uint8 else "float32"
    if hasattr(act, "n"):
        n = int(act.n)
        low, high, shape = np.zeros((), np.float32), np.full((), n - 1, np.float32), ()
    elif hasattr(act, "low"):
        n = 0
        low, high = np.asarray(act.low, np.float32), np.asarray(act.high, np.float32)
        shape = tuple(act.shape)
    else:
        raise EnvError(f"env_id={env_id!r} has action space {act}; onramp needs a Box or "
                       "a Discrete")
    return EnvSpec(
        env_id=env_id,
        observation_shape=tuple(obs.shape),
        action_shape=shape,
        action_low=low,
        action_high=high,
        max_episode_steps=int(env.spec.config.max_episode_steps),
        envpool_version=envpool.__version__,
        observation_dtype=obs_dtype,
        num_actions=n,
    )


@dataclass
class StepResult:
    """What one `VectorEnv.step` gave each environment of the batch."""

    observations: np.ndarray  # (N, *obs) float32, or uint8 frames
    """After a transition, the next observation; after an auto-reset, the new episode's first."""
    rewards: np.ndarray  # (N,) float32
    terminated: np.ndarray  # (N,) bool
    truncated: np.ndarray  # (N,) bool
    is_reset: np.ndarray  # (N,) bool
    """True where this entry was envpool's auto-reset: no transition, not a budget step."""

    @property
    def done(self) -> np.ndarray:
        return self.terminated | self.truncated

    @property
    def is_transition(self) -> np.ndarray:
        return ~self.is_reset


class VectorEnv:
    """A batch of `num_envs` envpool environments.

    After an environment's episode ends, its next step is envpool's auto-reset: the
    action is ignored and the result is flagged `is_reset`, carrying the new
    episode's first observation.

    Two ways to drive it:
    - lockstep: `reset()`, then `step(actions)` for all `num_envs` at once;
    - send/recv (envpool's asynchronous API): `start()`, then repeatedly
      `env_ids, result = recv()` and `send(actions, env_ids)`. `recv` returns the
      first `batch_size` environments to finish their step, so with
      `batch_size < num_envs` the other environments step (in envpool's C++ threads)
      while the caller computes actions. Right after `start()` every environment
      comes back once flagged `is_reset` with its first observation.
      `batch_size == num_envs` is lockstep through the same calls.

    `tasks` ((num_envs,) task indices) fixes each environment of a `LOCAL_ENVS` family
    to its task, and is refused for an envpool id. Those families are deterministic
    and do not read `seed`.

    `options` are envpool task options (`check_options`), e.g. `MGDT_OPTIONS`; `spec`
    describes the spaces they give. A `LOCAL_ENVS` family takes none.
    """

    def __init__(self, env_id: str, num_envs: int, seed: int, batch_size: int | None = None,
                 tasks: np.ndarray | None = None, options: Mapping | None = None):
        batch_size = batch_size or num_envs
        if not 1 <= batch_size <= num_envs:
            raise ValueError(f"{batch_size=} must lie in [1, num_envs={num_envs}]")
        self.options = check_options(env_id, options)
        self.num_envs = num_envs
        self.batch_size = batch_size
        self._env = _make(env_id, num_envs, seed, batch_size, tasks, self.options)
        if env_id in LOCAL_ENVS:
            self.spec = env_spec(env_id)
        else:  # read from the batch itself: a second, one-env instance took ~0.3 s on Atari
            try:
                self.spec = _envpool_spec(env_id, self._env)
            except BaseException:
                self._env.close()
                raise
        self._box = self.spec.action_box
        self._obs_dtype = np.uint8 if self.spec.observation_dtype == "uint8" else np.float32
        self._ids = np.arange(num_envs, dtype=np.int32)
        self._was_done = np.zeros(num_envs, bool)

    def reset(self) -> np.ndarray:
        """Reset every env (lockstep only); their first observations, (N, *obs)."""
        self._require_lockstep("reset")
        obs, _ = self._env.reset()
        self._was_done[:] = False
        return np.asarray(obs, self._obs_dtype)

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every env with `actions` in [-1, 1] (shape (N, *action_shape)), or action
        indices (N,) on a Discrete space; lockstep only."""
        self._require_lockstep("step")
        obs, rew, term, trunc, _ = self._env.step(self._box.to_env(actions), self._ids)
        return self._result(self._ids, obs, rew, term, trunc)

    def start(self) -> None:
        """Begin send/recv stepping: reset every env; `recv` returns them flagged is_reset."""
        self._env.async_reset()
        self._was_done[:] = True

    def send(self, actions: np.ndarray, env_ids: np.ndarray) -> None:
        """Step the envs `env_ids` (as `recv` gave them) with `actions` in [-1, 1]."""
        self._env.send(self._box.to_env(actions), env_ids)

    def recv(self) -> tuple[np.ndarray, StepResult]:
        """(env ids, their results) of the next `batch_size` envs done stepping."""
        obs, rew, term, trunc, info = self._env.recv()
        ids = np.asarray(info["env_id"], np.int32)
        return ids, self._result(ids, obs, rew, term, trunc)

    def _result(self, ids, obs, rew, term, trunc) -> StepResult:
        is_reset = self._was_done[ids]
        term = np.asarray(term, bool) & ~is_reset
        trunc = np.asarray(trunc, bool) & ~is_reset
        self._was_done[ids] = term | trunc
        rew = np.where(is_reset, 0.0, rew).astype(np.float32)
        return StepResult(np.asarray(obs, self._obs_dtype), rew, term, trunc, is_reset)

    def _require_lockstep(self, name: str) -> None:
        if self.batch_size != self.num_envs:
            raise RuntimeError(f"VectorEnv.{name} steps every env at once; with batch_size="
                               f"{self.batch_size} < num_envs={self.num_envs} use start/send/recv")

    def close(self) -> None:
        self._env.close()
