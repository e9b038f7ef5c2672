"""Record episodes of mixed quality on several Atari games, for a multi-game dataset.

The Multi-Game Decision Transformer (Lee et al. 2022) learns from episodes of every
quality, from near-random to expert, of many games. `record_games` plays each game
with each behaviour policy for a given number of episodes, through `VectorEnv` with
the MGDT's envpool options (`actors.envs.MGDT_OPTIONS`: one (1, 84, 84) uint8 frame per
step, the full 18-action set), and returns them tagged with the policy, ready for
`replay.multigame.write_multigame`.

Behaviour policies, by tag:

- "random": a uniformly random action of the full set at every step.
- "noisy:<eps>" (0 < eps <= 1, e.g. "noisy:0.3"): sticky random play. At each step
  the previous action is repeated with probability 1 - eps, otherwise a uniformly
  random action is drawn (always at an episode's first step). No simple scripted
  player exists for every game, and holding an action for about 1/eps steps moves an
  Atari agent further and more coherently than uniform play (a paddle crosses the
  screen, a ship keeps firing), so these episodes differ in kind from "random" ones.
  "noisy:1" plays as "random" does.
- "cem:<rounds>" (e.g. "cem:8"): the better episodes of a short online run of the
  cross-entropy method over sticky play. Sticky play at eps `CEM_EPS` draws its fresh
  actions from a learned distribution, uniform at first; each round every environment
  plays one episode, and the distribution moves halfway to the action frequencies of
  the round's best quarter (`CEM_ELITE`), with a floor of `CEM_FLOOR` per action so no
  action is lost. The tag's episodes are the best of all rounds' episodes, by
  return. It needs no model, so recording can start from it; in Freeway it learns to
  move up.
- any other tag (such as "online-best", a checkpoint of a later online run) names a
  policy given in `policies`: a callable `policy(frames) -> actions`, or an object
  with such an `act` method, called each step with the frames of all `num_envs`
  environments, (num_envs, 1, 84, 84) uint8, and returning (num_envs,) action indices.
  If it has `record(actions, rewards, terminated)` it is told each step's actions, raw
  (unclipped) rewards and terminations, and if it has `reset(env_ids)`, which
  environments' next frame starts an episode (all of them, `reset()`, before the
  first step). `models.mgdt.MultiGamePolicy` has exactly these methods. An
  environment whose episode just ended is acted for once more: envpool's auto-reset
  ignores that action (`actors.envs.VectorEnv`).

Each game runs on one `VectorEnv` of `num_envs` environments, its seed and each
policy's random stream drawn from `seed` (`numpy.random.SeedSequence`); the policies
take turns on it, every environment reset at each turn's start. Environment i records
every num_envs-th of a policy's episodes (episodes i, i + num_envs, ...), so long
episodes are kept as often as short ones (taking the first episodes to finish would
favour short ones); the episodes other environments finish meanwhile are dropped. An episode ends on
termination (game over) or truncation: envpool's episode limit (27,000 steps, 108,000
frames, in Atari) or `max_steps_per_episode`, which becomes that limit
(envpool's `max_episode_steps`) to keep CPU runs short; both are flagged truncated.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from actors.envs import (
    MGDT_OPTIONS,
    EnvSpec,
    StepResult,
    VectorEnv,
    check_options,
    env_spec,
)
from replay.datasets import Episode
from replay.multigame import TaggedEpisode, check_policy_tag

FramePolicy = Callable[[np.ndarray], np.ndarray]
"""frames (N, 1, H, W) uint8 -> (N,) action indices; see the module docstring for the
optional `act`, `record` and `reset` methods."""
NOISY_TAG = re.compile(r"noisy:(\d+(?:\.\d*)?|\.\d+)")
CEM_TAG = re.compile(r"cem:([1-9]\d{0,3})")
CEM_EPS = 0.1
"""Stickiness of the cross-entropy method's play: a fresh action about every 10 steps."""
CEM_ELITE = 0.25
"""The share of a round's episodes (at least one) whose actions the next round imitates."""
CEM_FLOOR = 0.01
"""The least probability any action keeps in the cross-entropy method's distribution."""


class StickyRandom:
    """Sticky random play for `num_envs` environments: each step repeats an
    environment's previous action with probability 1 - eps, otherwise draws one of
    `num_actions` (always on an episode's first step), uniformly or with the
    probabilities `probs`. eps = 1 with uniform draws is uniform play."""

    def __init__(self, num_envs: int, num_actions: int, eps: float,
                 rng: np.random.Generator, probs: np.ndarray | None = None):
        if not 0.0 < eps <= 1.0:
            raise ValueError(f"eps={eps} must lie in (0, 1]")
        if probs is not None:
            probs = np.asarray(probs, np.float64)
            if probs.shape != (num_actions,) or (probs < 0).any() \
                    or not np.isclose(probs.sum(), 1.0):
                raise ValueError(f"probs must be {num_actions} probabilities summing to 1")
        self.num_actions = num_actions
        self.eps = float(eps)
        self.rng = rng
        self.probs = probs
        self.previous = np.zeros(num_envs, np.int64)
        self.first = np.ones(num_envs, bool)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        n = len(self.previous)
        fresh = self.first | (self.rng.random(n) < self.eps)
        drawn = (self.rng.integers(0, self.num_actions, n) if self.probs is None
                 else self.rng.choice(self.num_actions, n, p=self.probs))
        self.previous = np.where(fresh, drawn, self.previous)
        self.first[:] = False
        return self.previous.copy()

    def reset(self, env_ids: np.ndarray | None = None) -> None:
        """The next step of `env_ids` (all when None) starts an episode."""
        if env_ids is None:
            self.first[:] = True
        else:
            self.first[np.asarray(env_ids, np.int64)] = True


def noisy_eps(tag: str) -> float | None:
    """The eps of a "noisy:<eps>" tag, None for any other tag; ValueError for a noisy tag
    whose eps is not in (0, 1]."""
    if not tag.startswith("noisy:"):
        return None
    match = NOISY_TAG.fullmatch(tag)
    eps = float(match.group(1)) if match else float("nan")
    if not 0.0 < eps <= 1.0:
        raise ValueError(f"policy tag {tag!r}: 'noisy:<eps>' needs eps in (0, 1], such as "
                         "'noisy:0.3'")
    return eps


def env_options(cfg) -> dict:
    """The MGDT's envpool options (`MGDT_OPTIONS`) with `cfg.multigame`'s episode limit."""
    options = dict(MGDT_OPTIONS)
    if cfg.multigame.max_steps_per_episode:
        options["max_episode_steps"] = cfg.multigame.max_steps_per_episode
    return options


def policy_settings(cfg) -> dict:
    """`MultiGamePolicy`'s inference settings from `cfg.multigame`, for evaluation and
    online acting alike."""
    mg = cfg.multigame
    return {"kappa": mg.kappa, "num_return_samples": mg.num_return_samples,
            "return_temperature": mg.return_temperature,
            "action_top_percentile": mg.action_top_percentile}


def cem_rounds(tag: str) -> int | None:
    """The rounds of a "cem:<rounds>" tag (1-9999), None for any other tag; ValueError
    for a malformed cem tag."""
    if not tag.startswith("cem:"):
        return None
    match = CEM_TAG.fullmatch(tag)
    if not match:
        raise ValueError(f"policy tag {tag!r}: 'cem:<rounds>' needs a whole number of "
                         "rounds from 1 to 9999, such as 'cem:8'")
    return int(match.group(1))


def built_in_tag(tag: str) -> bool:
    """Whether `tag` names a policy `record_games` plays itself ("random", "noisy:<eps>",
    "cem:<rounds>"); ValueError for a malformed noisy or cem tag."""
    return tag == "random" or noisy_eps(tag) is not None or cem_rounds(tag) is not None


def cem_update(probs: np.ndarray, episodes: Sequence[Episode]) -> np.ndarray:
    """The cross-entropy method's next action distribution: halfway from `probs` to
    the action frequencies of the best `CEM_ELITE` of `episodes` (at least one) by
    return, then mixed with a floor: CEM_FLOOR + (1 - n x CEM_FLOOR) x that, for n
    actions, so every action keeps at least `CEM_FLOOR`."""
    ranked = sorted(episodes, key=lambda episode: episode.ret, reverse=True)
    elite = ranked[:max(1, round(CEM_ELITE * len(ranked)))]
    counts = np.bincount(np.concatenate([e.actions for e in elite]).astype(np.int64),
                         minlength=len(probs)).astype(np.float64)
    mixed = 0.5 * probs + 0.5 * counts / max(counts.sum(), 1.0)
    return CEM_FLOOR + (1.0 - CEM_FLOOR * len(probs)) * mixed


def _record_cem(env: VectorEnv, rounds: int, count: int, rng: np.random.Generator,
                tag: str) -> list[Episode]:
    """`rounds` rounds of the cross-entropy method (module docstring), each environment
    playing one episode a round; the `count` best episodes of them all, best first."""
    probs = np.full(env.spec.num_actions, 1.0 / env.spec.num_actions)
    played: list[Episode] = []
    for _ in range(rounds):
        policy = StickyRandom(env.num_envs, env.spec.num_actions, CEM_EPS, rng, probs)
        episodes = _record(env, policy, tag, env.num_envs)
        played.extend(episodes)
        probs = cem_update(probs, episodes)
    return sorted(played, key=lambda episode: episode.ret, reverse=True)[:count]


def record_games(games: Sequence[str], episodes_per_policy: Mapping[str, int], seed: int,
                 options: Mapping | None = MGDT_OPTIONS,
                 max_steps_per_episode: int | None = None, *, num_envs: int = 4,
                 policies: Mapping[str, FramePolicy] | None = None
                 ) -> dict[str, list[TaggedEpisode]]:
    """Play every game of `games` with every policy of `episodes_per_policy` (tag ->
    episodes per game) and return game -> its `TaggedEpisode`s, games in the given
    order, each game's episodes policy by policy in `episodes_per_policy`'s order.

    Episodes hold uint8 frames (T+1, 1, 84, 84), int64 actions, raw float32 rewards and
    their terminated/truncated flags (module docstring for the policies, the seeds
    and the ends of episodes). Everything is checked before the first step: ValueError
    names a game that envpool does not know or whose spaces under `options` are not
    Discrete actions with one uint8 frame per step, games whose action counts or frame
    shapes differ (without `full_action_space`), an unknown or malformed policy tag,
    a tag of `policies` that no count asks for, a count that is not an int >= 0 or,
    for a "cem:<rounds>" tag, above the rounds x `num_envs` episodes it plays,
    `max_steps_per_episode` < 1 or given with `options["max_episode_steps"]`, and
    `num_envs` < 1.
    """
    options = dict(options or {})
    if max_steps_per_episode is not None:
        if isinstance(max_steps_per_episode, bool) or not isinstance(
                max_steps_per_episode, (int, np.integer)) or max_steps_per_episode < 1:
            raise ValueError(f"max_steps_per_episode={max_steps_per_episode!r} must be an "
                             "int >= 1")
        if "max_episode_steps" in options:
            raise ValueError(f"max_steps_per_episode={max_steps_per_episode} and options["
                             f"'max_episode_steps']={options['max_episode_steps']} both set "
                             "the episode limit; give one")
        options["max_episode_steps"] = int(max_steps_per_episode)
    if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) \
            or num_envs < 1:
        raise ValueError(f"num_envs={num_envs!r} must be an int >= 1")
    games = list(games)
    if not games or len(set(games)) != len(games):
        raise ValueError(f"games={games} must name at least one game, each once")
    policies = dict(policies or {})
    counts = _check_counts(episodes_per_policy, policies)
    for tag, count in counts.items():
        rounds = cem_rounds(tag)
        if rounds is not None and count > rounds * num_envs:
            raise ValueError(f"episodes_per_policy[{tag!r}]={count}: {rounds} rounds of "
                             f"{num_envs} environments play {rounds * num_envs} episodes")
    specs = [_game_spec(game, options) for game in games]
    for game, spec in zip(games[1:], specs[1:]):
        if (spec.num_actions, spec.observation_shape) != (specs[0].num_actions,
                                                          specs[0].observation_shape):
            raise ValueError(
                f"game {game} has {spec.action_space} and frames {spec.observation_shape} "
                f"under options={options}, but {games[0]} has {specs[0].action_space} and "
                f"{specs[0].observation_shape}; one dataset needs one action set "
                "(full_action_space=True)")

    game_seeds = np.random.SeedSequence(seed).spawn(len(games))
    recorded: dict[str, list[TaggedEpisode]] = {game: [] for game in games}
    for game, spec, sequence in zip(games, specs, game_seeds):
        env_seed = int(sequence.generate_state(1)[0] % (2**31 - 1))
        policy_seeds = sequence.spawn(len(counts))
        env = VectorEnv(game, num_envs, env_seed, options=options)
        try:
            for (tag, count), policy_seed in zip(counts.items(), policy_seeds):
                if count == 0:
                    continue
                rng = np.random.default_rng(policy_seed)
                rounds = cem_rounds(tag)
                if rounds is not None:
                    episodes = _record_cem(env, rounds, count, rng, tag)
                else:
                    eps = 1.0 if tag == "random" else noisy_eps(tag)
                    policy = policies[tag] if eps is None else StickyRandom(
                        num_envs, spec.num_actions, eps, rng)
                    episodes = _record(env, policy, tag, count)
                recorded[game].extend(TaggedEpisode(episode, tag) for episode in episodes)
        finally:
            env.close()
    return recorded


def _check_counts(episodes_per_policy: Mapping[str, int],
                  policies: Mapping[str, FramePolicy]) -> dict[str, int]:
    """`episodes_per_policy` as a dict, every tag and count checked."""
    if not isinstance(episodes_per_policy, Mapping) or not episodes_per_policy:
        raise ValueError(f"episodes_per_policy={episodes_per_policy!r} must map at least one "
                         "policy tag to an episode count")
    counts = {}
    for tag, count in episodes_per_policy.items():
        check_policy_tag(tag)
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise ValueError(f"episodes_per_policy[{tag!r}]={count!r} must be an int >= 0")
        built_in = built_in_tag(tag)
        if built_in and tag in policies:
            raise ValueError(f"policies[{tag!r}]: {tag!r} is a built-in policy tag")
        if not built_in:
            if tag not in policies:
                raise ValueError(f"episodes_per_policy names policy {tag!r}, which is neither "
                                 "'random', 'noisy:<eps>' nor a key of policies="
                                 f"{sorted(policies)}")
            given = policies[tag]
            if not callable(getattr(given, "act", given)):
                raise ValueError(f"policies[{tag!r}] must be callable or have an act method, "
                                 f"got {type(given).__name__}")
        counts[tag] = int(count)
    unused = sorted(set(policies) - set(counts))
    if unused:
        raise ValueError(f"policies[{unused[0]!r}] is given but episodes_per_policy has no "
                         "count for it")
    return counts


def _game_spec(game: str, options: dict) -> EnvSpec:
    """`game`'s spec under `options`; ValueError unless its actions are Discrete and its
    observations one uint8 frame (1, H, W) per step."""
    if not isinstance(game, str) or not game:
        raise ValueError(f"game {game!r} must be an envpool task id such as 'Pong-v5'")
    spec = env_spec(game, check_options(game, options))
    if not spec.discrete or spec.observation_dtype != "uint8" \
            or len(spec.observation_shape) != 3 or spec.observation_shape[0] != 1:
        raise ValueError(
            f"game {game} under options={options} has {spec.action_space} actions and "
            f"{spec.observation_dtype} observations of shape {spec.observation_shape}; a "
            "multi-game dataset needs Discrete actions and one uint8 frame (1, H, W) per "
            "step (Atari with stack_num=1)")
    return spec


class EpisodeBuffers:
    """The episode so far of each of a `VectorEnv`'s environments, from its auto-reset
    results: `step` books one step's results and returns the episodes it finished."""

    def __init__(self, frames: np.ndarray):
        self.buffers = [{"obs": [frame], "act": [], "rew": []} for frame in frames]

    def step(self, actions: np.ndarray, result) -> list[tuple[int, Episode]]:
        """Book `actions` and the `VectorEnv.step` result they led to; return (env index,
        Episode) for each episode that ended, its frames (T+1, 1, H, W) uint8, int64
        actions, raw float32 rewards and its terminated/truncated flags."""
        finished = []
        for i in range(len(self.buffers)):
            if result.is_reset[i]:
                self.buffers[i] = {"obs": [result.observations[i]], "act": [], "rew": []}
                continue
            buffer = self.buffers[i]
            buffer["act"].append(actions[i])
            buffer["rew"].append(result.rewards[i])
            buffer["obs"].append(result.observations[i])
            if result.done[i]:
                finished.append((i, Episode(
                    observations=np.stack(buffer["obs"]),
                    actions=np.asarray(buffer["act"], np.int64),
                    rewards=np.asarray(buffer["rew"], np.float32),
                    terminated=bool(result.terminated[i]),
                    truncated=bool(result.truncated[i]),
                )))
        return finished


def _record(env: VectorEnv, policy, tag: str, count: int) -> list[Episode]:
    """Reset every environment of `env` and run it with `policy` until each has finished
    its share of `count` episodes; return them in finishing order."""
    n = env.num_envs
    quota = np.full(n, count // n) + (np.arange(n) < count % n)  # (n,)
    kept = np.zeros(n, np.int64)
    act = getattr(policy, "act", policy)
    record = getattr(policy, "record", None)
    reset = getattr(policy, "reset", None)
    done: list[Episode] = []
    frames = env.reset()
    if reset is not None:
        reset()
    buffers = EpisodeBuffers(frames)
    while len(done) < count:
        actions = _checked_actions(act(frames), n, env.spec.num_actions, tag)
        result = env.step(actions)
        if record is not None:
            record(actions, result.rewards, result.terminated)
        for i, episode in buffers.step(actions, result):
            if kept[i] < quota[i]:
                kept[i] += 1
                done.append(episode)
        if reset is not None and result.is_reset.any():
            reset(np.flatnonzero(result.is_reset))
        frames = result.observations
    return done


class MixedGameEnv:
    """Several games' `VectorEnv`s as one batch, for an actor whose batch mixes games:
    environment i of the whole batch is environment i - offset of the game it falls in,
    games in the given order; `games[i]` is its game index. `reset` and `step` take and
    give whole-batch arrays, stepping each game's envs in turn (lockstep, as
    `VectorEnv.step`); `close` closes them all.

        env = MixedGameEnv([VectorEnv(game, 4, seed + g, options=MGDT_OPTIONS)
                            for g, game in enumerate(("Pong-v5", "Breakout-v5"))])
        env.num_envs, env.games  # 8, [0 0 0 0 1 1 1 1]

    Every game must have the same action count and frame shape (the full action set);
    ValueError names the first that does not. `spec` is the first game's."""

    def __init__(self, envs):
        self.envs = list(envs)
        if not self.envs:
            raise ValueError("MixedGameEnv needs at least one game's VectorEnv")
        first = self.envs[0].spec
        for env in self.envs[1:]:
            if (env.spec.num_actions, env.spec.observation_shape) != (
                    first.num_actions, first.observation_shape):
                raise ValueError(
                    f"game {env.spec.env_id} has {env.spec.action_space} and frames "
                    f"{env.spec.observation_shape}, but {first.env_id} has "
                    f"{first.action_space} and {first.observation_shape}; one batch needs "
                    "one action set (full_action_space=True)")
        self.spec = first
        sizes = [env.num_envs for env in self.envs]
        self.num_envs = sum(sizes)
        self.games = np.repeat(np.arange(len(sizes)), sizes)
        self._bounds = np.cumsum([0, *sizes])

    def reset(self) -> np.ndarray:
        """Reset every game's envs; their first frames, (num_envs, 1, H, W)."""
        return np.concatenate([env.reset() for env in self.envs])

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every game's envs with their slice of `actions` (num_envs,); one
        `StepResult` for the whole batch."""
        parts = [env.step(actions[lo:hi]) for env, lo, hi
                 in zip(self.envs, self._bounds[:-1], self._bounds[1:])]
        return StepResult(*(np.concatenate([getattr(part, name) for part in parts])
                            for name in ("observations", "rewards", "terminated",
                                         "truncated", "is_reset")))

    def close(self) -> None:
        """Close every game's envs, each even if closing another raised."""
        _close_all(self.envs)


def _close_all(envs) -> None:
    """Close each of `envs` (anything with `close`), the rest even if one raises."""
    if envs:
        try:
            envs[0].close()
        finally:
            _close_all(envs[1:])


class GamePlayer:
    """Plays with a `models.mgdt.MultiGamePolicy` (or any policy with the `act`,
    `record` and `reset` methods of the module docstring), episode after episode, on a
    `VectorEnv` of one game or a `MixedGameEnv` of several, whose game indices (in the
    caller's list of games) are `games`, one per game of `env`: each `play(steps)` goes
    on where the last one stopped, so an episode may span calls. The online actor of the
    multi-game pipeline, one forward pass per step for its whole batch.

        player = GamePlayer(VectorEnv("Pong-v5", 4, seed, options=MGDT_OPTIONS), policy)
        episodes, transitions = player.play(500)  # [(game index, Episode), ...], count
    """

    def __init__(self, env, policy, generator=None, games: Sequence[int] = (0,)):
        self.env = env
        self.policy = policy
        self.generator = generator
        local = getattr(env, "games", np.zeros(env.num_envs, np.int64))
        if len(games) != local.max() + 1 or min(games) < 0:
            raise ValueError(f"games={list(games)} must give one game index >= 0 for each "
                             f"of the env's {local.max() + 1} games")
        self.games = np.asarray(games, np.int64)[local]  # (num_envs,) each env's game
        self.frames: np.ndarray | None = None
        self.buffers: EpisodeBuffers | None = None

    def play(self, steps: int) -> tuple[list[tuple[int, Episode]], int]:
        """Step every environment until at least `steps` transitions were taken; return
        the episodes that ended meanwhile as (game index, Episode), in finishing order,
        and the transitions."""
        if self.frames is None:
            self.frames = self.env.reset()
            self.policy.reset()
            self.buffers = EpisodeBuffers(self.frames)
        n = self.env.num_envs
        finished: list[tuple[int, Episode]] = []
        taken = 0
        while taken < steps:
            actions = _checked_actions(self.policy.act(self.frames, generator=self.generator),
                                       n, self.env.spec.num_actions, "online")
            result = self.env.step(actions)
            self.policy.record(actions, result.rewards, result.terminated)
            finished.extend((int(self.games[i]), episode)
                            for i, episode in self.buffers.step(actions, result))
            if result.is_reset.any():
                self.policy.reset(np.flatnonzero(result.is_reset))
            taken += int(result.is_transition.sum())
            self.frames = result.observations
        return finished, taken

    def close(self) -> None:
        self.env.close()


def online_player(cfg, model, games: Sequence[int], seeds: Sequence[int],
                  generator=None) -> GamePlayer:
    """The online actor of `cfg.multigame.games[g]` for each g of `games` (indices),
    `multigame.online_envs` environments of each seeded with `seeds` (one per game), with
    expert-action inference (`MultiGamePolicy` with `policy_settings`): a `GamePlayer` on
    that game's `VectorEnv`, or on a `MixedGameEnv` of all of them when `games` names
    more than one."""
    from models.mgdt import MultiGamePolicy

    mg = cfg.multigame
    envs = []
    try:
        for g, seed in zip(games, seeds, strict=True):
            envs.append(VectorEnv(mg.games[g], mg.online_envs, seed, options=env_options(cfg)))
        env = envs[0] if len(envs) == 1 else MixedGameEnv(envs)
        policy = MultiGamePolicy(model, env.num_envs, mode="expert", **policy_settings(cfg))
        return GamePlayer(env, policy, generator, games)
    except BaseException:
        _close_all(envs)
        raise


def _checked_actions(actions, n: int, num_actions: int, tag: str) -> np.ndarray:
    """A policy's actions as (n,) int64; ValueError naming the policy otherwise."""
    array = np.asarray(actions)
    if array.shape != (n,) or not np.issubdtype(array.dtype, np.integer) \
            or array.min() < 0 or array.max() >= num_actions:
        raise ValueError(f"policy {tag!r} returned {array.dtype} actions of shape "
                         f"{array.shape}; expected ({n},) integer indices in [0, "
                         f"{num_actions})")
    return array.astype(np.int64)
