"""The multi-game pipeline (`RunConfig.pipeline = "multi_game"`): one Multi-Game Decision
Transformer (Lee et al. 2022) for several Atari games, offline and then online.

Stages, each writing under the run directory:

1. `data/`: mixed-quality episodes of every game of `multigame.games`, recorded with
   onramp's envpool actors (`actors.multigame.record_games`: uniform random and sticky
   random play), one frame per step, the full 18-action set; a Minari folder with each
   episode's game and policy (`replay.multigame`).
2. `pretrain/`: one model on every game's windows (`replay.frame_window`, games drawn
   equally often with `multigame.balance_games`), the 'mgdt' objective (action, return
   bucket and reward class cross-entropies).
3. Per game, `multigame.eval_episodes` episodes with expert-action inference
   (`models.mgdt.MultiGamePolicy` 'expert': kappa, return samples and temperature of
   `actors.multigame.policy_settings`) and with conditioning on the dataset's best
   return ('target'), actions drawn after `multigame.action_top_percentile`'s cut in
   both; raw and human-normalized
   returns (`replay.atari_scores`), written to `multigame.json` and TensorBoard
   (`eval/<game>/{expert,target}_return`, `..._human_normalized` in `pretrain/`).
4. `finetune/` (unless `multigame.online_env_steps` is 0): online fine-tuning of the
   same model on every game at once (`finetune_online`). A Reverb server on
   127.0.0.1 holds the frame windows (`replay.frame_window`), preloaded with the
   recorded data (or each game's `multigame.preload_top_episodes` best episodes, as
   ODT's buffer starts from the top offline trajectories). One actor per game, or one
   for all games with `multigame.mix_games` (`actors.multigame.online_player`:
   `multigame.online_envs` envpool environments per game, expert-action inference,
   sampled actions, one forward pass per step for the actor's whole batch), writes
   its finished episodes, with hindsight returns-to-go, into it; the learner samples
   batches of every game's windows from it and steps the 'mgdt' objective with ODT's
   entropy term (`rl=True`), `replay.updates_per_env_step` updates per step played.
   By default actors and learner take turns in this process, as ODT's own loop does:
   every actor plays `multigame.online_round_steps` steps per game it plays with the
   newest weights, then the learner makes the updates due. With
   `multigame.actor_processes` every actor is a process of its own
   (`launch.roles.multigame_actor_role`) that plays while the learner learns, pulling
   the weights the learner publishes to the server's params table. Then step 3's
   evaluation again, on the fine-tuned model (`eval/<game>/...` and
   `online/<game>/episode_return` in `finetune/`).

    python -m launch.main --preset=mgdt-atari3 [--games=Pong,Breakout,...]
        [--set=multigame.actor_processes=true] [--set=multigame.mix_games=true]
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from actors.envs import VectorEnv
from actors.multigame import env_options, policy_settings, record_games
from launch.supervisor import role_context, rss_mib
from learner.checkpoint import save_checkpoint
from learner.pretrain import PretrainResult, train_offline
from learner.tensorboard import SummaryWriter
from replay.atari_scores import human_normalized
from replay.frame_window import FrameSampler, concat_games
from replay.multigame import write_multigame

CLIP = 1.0
"""Rewards are clipped to [-CLIP, CLIP] for returns-to-go and the reward classes."""
STREAM_TIMEOUT_MS = 600_000
"""How long the online learner waits for a batch before it reports the rate limiter."""
ATARI_EPISODE_LIMIT = 27_000
"""envpool's Atari episode limit in agent steps (108,000 frames), in effect when
`multigame.max_steps_per_episode` is 0."""


@dataclass
class GameResult:
    """One game: its dataset's returns (raw, and of clipped rewards) and the evaluation
    returns per mode ('expert', 'target')."""

    game: str
    dataset_returns: np.ndarray
    dataset_clipped_returns: np.ndarray
    returns: dict[str, np.ndarray]
    online_returns: dict[str, np.ndarray] = field(default_factory=dict)
    """The evaluation returns per mode after online fine-tuning (empty without it)."""
    actor_returns: list[float] = field(default_factory=list)
    """The returns of the game's episodes its actor played while fine-tuning."""

    def figures(self) -> dict:
        out = {"dataset_mean_return": float(self.dataset_returns.mean()),
               "dataset_best_return": float(self.dataset_returns.max()),
               "dataset_episodes": len(self.dataset_returns)}
        for prefix, returns in (("", self.returns), ("online_", self.online_returns)):
            for mode, values in returns.items():
                out[f"{prefix}{mode}_return"] = float(values.mean())
                out[f"{prefix}{mode}_human_normalized"] = human_normalized(
                    self.game, float(values.mean()))
        if self.actor_returns:
            out["actor_episodes"] = len(self.actor_returns)
            out["actor_mean_return"] = float(np.mean(self.actor_returns))
        out["dataset_mean_human_normalized"] = human_normalized(self.game,
                                                                out["dataset_mean_return"])
        return out


def game_result(game: str, episodes) -> GameResult:
    """A game's `GameResult` with its recorded episodes' (`TaggedEpisode`s) raw and
    clipped returns, and no evaluation yet."""
    raw = np.array([tagged.episode.ret for tagged in episodes])
    clipped = np.array([float(np.clip(tagged.episode.rewards, -CLIP, CLIP).sum())
                        for tagged in episodes])
    return GameResult(game, raw, clipped, {})


def play(model, game: str, episodes: int, seed: int, options: dict, mode: str,
         target_return: float | None = None, **settings) -> np.ndarray:
    """Raw returns of `episodes` episodes of `game`, one env each, played with the model
    through `MultiGamePolicy` in `mode` with `settings` (its keyword arguments, e.g.
    `policy_settings`); each env plays one episode."""
    from models.mgdt import MultiGamePolicy

    model.eval()
    device = next(model.parameters()).device
    policy = MultiGamePolicy(model, episodes, mode=mode, target_return=target_return,
                             **settings)
    generator = torch.Generator(device=device).manual_seed(seed)
    env = VectorEnv(game, episodes, seed, options=options)
    returns = np.zeros(episodes)
    done = np.zeros(episodes, bool)
    try:
        frames = env.reset()
        policy.reset()
        while not done.all():
            actions = policy.act(frames, generator=generator)
            result = env.step(actions)
            policy.record(actions, result.rewards, result.terminated)
            live = result.is_transition & ~done
            returns[live] += result.rewards[live]
            done |= live & result.done
            frames = result.observations
    finally:
        env.close()
    return returns


def run_multi_game(cfg, run_dir: Path
                   ) -> tuple[dict[str, GameResult], PretrainResult, dict, dict]:
    """The stages for `cfg` (pipeline 'multi_game') in `run_dir`: per game its result,
    the pretraining result, seconds per stage, and the online stage's figures
    (`finetune_online`; empty when `multigame.online_env_steps` is 0). They run in this
    process, on `compute.cpu_threads` torch threads when that names a count."""
    from learner.checkpoint import load_policy
    from learner.device import resolve_device, set_cpu_threads_if_asked

    set_cpu_threads_if_asked(resolve_device(cfg.device), cfg.compute)
    mg, seconds = cfg.multigame, {}
    options = env_options(cfg)
    start = time.perf_counter()
    data = record_games(mg.games, dict(mg.episodes_per_policy), cfg.seed, options,
                        num_envs=mg.record_envs)
    write_multigame(run_dir / "data", data, num_actions=cfg.model.act_dim)
    seconds["recording"] = time.perf_counter() - start
    steps = concat_games(data, games=mg.games, num_actions=cfg.model.act_dim)
    if mg.online_env_steps:
        preload = sum(len(episode.actions) for episodes in preloaded(cfg, data).values()
                      for episode in episodes)
        if mg.replay_capacity_steps < preload:
            raise ValueError(
                f"multigame.replay_capacity_steps={mg.replay_capacity_steps} is below the "
                f"{preload} recorded steps that online fine-tuning preloads; raise it, lower "
                "multigame.preload_top_episodes, or set multigame.online_env_steps=0 to "
                "skip fine-tuning")
    per_game = steps.steps_per_game
    print("data: " + ", ".join(f"{game} {len(data[game])} episodes / {per_game[game]} steps"
                               for game in mg.games), flush=True)
    results = {game: game_result(game, data[game]) for game in mg.games}
    del data

    start = time.perf_counter()
    sampler = FrameSampler(steps, cfg.model.context_len, cfg.optim.batch_size, seed=cfg.seed,
                           balance_games=mg.balance_games)
    trained = train_offline(
        cfg, sampler, run_dir / "pretrain", evaluate_fn=None, source=str(run_dir / "data"),
        desc="MGDT", progress=True,
        dataset_scalars={"dataset/steps": len(steps), "dataset/games": len(mg.games)})
    seconds["pretraining"] = time.perf_counter() - start
    del steps, sampler

    start = time.perf_counter()
    model, _ = load_policy(trained.checkpoint)
    evaluate_games(cfg, model, results, "returns", run_dir / "pretrain", trained.updates)
    seconds["evaluation"] = time.perf_counter() - start
    online = {}
    if mg.online_env_steps:
        start = time.perf_counter()
        online = finetune_online(cfg, run_dir, trained.checkpoint, results)
        seconds["finetuning"] = time.perf_counter() - start
        start = time.perf_counter()
        model, _ = load_policy(run_dir / "finetune" / "checkpoint.pt")
        evaluate_games(cfg, model, results, "online_returns", run_dir / "finetune",
                       online["env_steps"], before="returns")
        seconds["online_evaluation"] = time.perf_counter() - start
    (run_dir / "multigame.json").write_text(json.dumps(
        {"games": {game: result.figures() for game, result in results.items()},
         "seconds": {k: round(v, 1) for k, v in seconds.items()},
         "pretraining_updates_per_s": trained.updates_per_s,
         "online": online}, indent=1))
    return results, trained, seconds, online


def evaluate_games(cfg, model, results: dict[str, GameResult], field_name: str,
                   logdir: Path, step: int, before: str | None = None) -> None:
    """Play every game in both modes ('expert', 'target' on the dataset's best clipped
    return; both with `policy_settings(cfg)`) and store the returns in each result's
    `field_name` dict; TensorBoard `eval/<game>/<mode>_return` and
    `..._human_normalized` at `step` in `logdir`. With `before` (another such field,
    e.g. 'returns' after fine-tuning) those scores are written there too, at step 0, so
    each game's curve in `logdir` runs from before to after."""
    mg, options = cfg.multigame, env_options(cfg)
    with SummaryWriter(logdir) as writer:
        for game, result in results.items():
            best = float(result.dataset_clipped_returns.max())
            returns = getattr(result, field_name)
            returns["expert"] = play(model, game, mg.eval_episodes, cfg.eval.seed, options,
                                     "expert", **policy_settings(cfg))
            returns["target"] = play(model, game, mg.eval_episodes, cfg.eval.seed, options,
                                     "target", target_return=best, **policy_settings(cfg))
            written = [(returns, step)]
            if before is not None:
                written.insert(0, (getattr(result, before), 0))
            for values_by_mode, at in written:
                for mode, values in values_by_mode.items():
                    mean = float(values.mean())
                    writer.scalars({f"eval/{game}/{mode}_return": mean,
                                    f"eval/{game}/{mode}_human_normalized":
                                        human_normalized(game, mean)}, at)


def preloaded(cfg, data: dict) -> dict[str, list]:
    """Per game of `multigame.games`, the recorded episodes (`data`: game -> its
    `TaggedEpisode`s) that the online stage preloads: all of them, or the
    `multigame.preload_top_episodes` highest returns, worst first."""
    from replay.offline import top_episodes

    top = cfg.multigame.preload_top_episodes
    out = {}
    for game in cfg.multigame.games:
        episodes = [tagged.episode for tagged in data[game]]
        out[game] = top_episodes(episodes, top) if top else episodes
    return out


def online_spec(cfg, preload_items: int):
    """The Reverb experience table of the online stage: frame windows of
    `model.context_len` steps, `multigame.replay_capacity_steps` of them (FIFO), sampled
    `replay.updates_per_env_step` x batch times per step played.

    The learner's turn makes its updates for every step played, but only finished
    episodes are in the table, so it may sample ahead of the inserts by every
    environment's unfinished episode. The rate limiter's slack covers that (each
    environment's episode limit) plus two rounds of every game, so the turn-taking loop
    never waits on it: it has no other thread to wait for."""
    from replay.tables import ReplaySpec

    mg = cfg.multigame
    episode_limit = mg.max_steps_per_episode or ATARI_EPISODE_LIMIT
    unfinished = len(mg.games) * mg.online_envs * episode_limit
    return ReplaySpec(
        observation_shape=tuple(cfg.model.frame_shape), action_shape=(),
        context_len=cfg.model.context_len, capacity_items=mg.replay_capacity_steps,
        samples_per_insert=cfg.replay.updates_per_env_step * cfg.optim.batch_size,
        tolerance_steps=float(unfinished + 2 * len(mg.games) * (mg.online_round_steps
                                                                + mg.online_envs) + 1),
        preload_items=preload_items, item_format="frame_window", observation_dtype="uint8",
        action_dtype="int32")


def finetune_online(cfg, run_dir: Path, checkpoint: Path,
                    results: dict[str, GameResult], logdir: Path | None = None) -> dict:
    """Stage 4 (module docstring): fine-tune the pretrained model online on every game
    until `multigame.online_env_steps` steps (all games together) were played, or a
    little more (each schedule says by how much), preloading from `run_dir/data`
    (`preloaded`). Writes `checkpoint.pt` and TensorBoard to `logdir` (default
    `run_dir/finetune`); fills each result's `actor_returns`; returns the stage's
    figures (env steps, updates, updates/s, env steps/s, the number of actors that
    played, and this process's resident-memory growth over the replay server's preload
    and over the whole stage).
    Stops with `learner.NonFiniteLoss` after `finetune.max_nonfinite_updates` skipped
    updates in a row, as pretraining does.

    The actors and the learner take turns in this process (`_take_turns`), or, with
    `multigame.actor_processes`, each actor is a process of its own beside the
    learner (`_learn_beside_actor_processes`)."""
    from learner.checkpoint import learner_payload, load_checkpoint
    from learner.device import resolve_device
    from learner.finetune import learner_from_checkpoint
    from replay.frame_window import FrameWindowWriter
    from replay.multigame import load_multigame
    from replay.tables import start_server, table_counts

    mg = cfg.multigame
    logdir = run_dir / "finetune" if logdir is None else logdir
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    learner = learner_from_checkpoint(load_checkpoint(checkpoint, map_location=device),
                                      cfg.objective, cfg.optim, device, cfg.compute)
    data = preloaded(cfg, load_multigame(run_dir / "data"))
    preload = sum(len(episode.actions) for episodes in data.values() for episode in episodes)
    spec = online_spec(cfg, preload)
    rss_before = rss_mib()
    server = start_server(spec)
    address = f"127.0.0.1:{server.port}"
    writer = None
    try:
        writer = SummaryWriter(logdir)
        with FrameWindowWriter(address, spec, num_actions=cfg.model.act_dim,
                               num_games=len(mg.games)) as frames_writer:
            for g, game in enumerate(mg.games):
                for episode in data[game]:
                    frames_writer.write(episode, g)
            del data
            preloaded_mib = rss_mib() - rss_before
            online = _Online(cfg, learner, address, spec, writer, results)
            try:
                if mg.actor_processes:
                    _learn_beside_actor_processes(online, checkpoint)
                else:
                    _take_turns(online, frames_writer)
            finally:
                online.close()
        final_size, final_mib = table_counts(address)["size"], rss_mib()
        save_checkpoint(logdir / "checkpoint.pt",
                        learner_payload(learner, updates=learner.step,
                                        env_steps=online.env_steps, run_config=cfg.to_dict()))
    finally:
        try:
            if writer is not None:
                writer.close()
        finally:
            server.stop()
    return {"env_steps": online.env_steps, "updates": online.updates,
            "env_steps_per_s": online.env_steps / max(online.act_s, 1e-9),
            "updates_per_s": online.updates / max(online.learn_s, 1e-9),
            "acting_s": round(online.act_s, 1), "learning_s": round(online.learn_s, 1),
            "actor_processes": mg.actor_processes, "actors": online.actors,
            "preloaded_steps": preload, "replay_size": final_size,
            "preload_rss_mib": round(preloaded_mib, 1),
            "final_rss_growth_mib": round(final_mib - rss_before, 1)}


class _Online:
    """The learner's side of the online stage, shared by both schedules: the batch
    stream, updates with the non-finite guard and loss logging, the actors' episodes
    into TensorBoard and the results, and the stage's counters. `act_s` is the time the
    actors played while the learner waited (turn-taking) or the stage's wall time
    (actor processes, which play while it learns); `learn_s` the time spent in
    updates, waiting for batches included."""

    def __init__(self, cfg, learner, address: str, spec, writer,
                 results: dict[str, GameResult]):
        from learner.learner import NonFiniteGuard
        from replay.formats import item_format

        self.cfg, self.learner, self.address, self.spec = cfg, learner, address, spec
        self.writer = writer
        self.results = results
        self.games = list(cfg.multigame.games)
        self.batches = item_format("frame_window").batches(
            address, spec, cfg.optim.batch_size, rate_limiter_timeout_ms=STREAM_TIMEOUT_MS)
        self.guard = NonFiniteGuard(learner, cfg.finetune.max_nonfinite_updates)
        self.env_steps = self.updates = self.actors = 0
        self.act_s = self.learn_s = 0.0

    def episode(self, g: int, ret: float, at: int) -> None:
        """Game `g`'s actor finished an episode of return `ret` at `at` env steps."""
        game = self.games[g]
        self.results[game].actor_returns.append(ret)
        self.writer.scalar(f"online/{game}/episode_return", ret, at)

    def due(self) -> int:
        """Updates owed for the env steps played: `replay.updates_per_env_step` each."""
        return int(self.env_steps * self.cfg.replay.updates_per_env_step) - self.updates

    def update(self) -> None:
        """One update on the next batch; the stream waits on the rate limiter."""
        from learner.device import to_device

        start = time.perf_counter()
        batch = next(self.batches, None)
        if batch is None:
            raise RuntimeError(
                f"the replay table gave no batch within {STREAM_TIMEOUT_MS} ms at "
                f"{self.env_steps} env steps: its rate limiter held the learner "
                "(online_spec's slack is too small for these settings)")
        learner = self.learner
        out = learner.update(to_device(batch, learner.device), rl=True)
        self.updates += 1
        if self.guard.skipped():
            self.writer.scalar("loss/nonfinite_skipped", learner.skipped, learner.step)
        elif learner.step % self.cfg.finetune.log_every == 0:
            self.writer.scalars({k: float(v) for k, v in out.items()}, learner.step)
        self.learn_s += time.perf_counter() - start

    def log_progress(self) -> None:
        from replay.tables import table_counts

        self.writer.scalars({"online/env_steps": self.env_steps, "online/updates": self.updates,
                             "online/replay_size": table_counts(self.address)["size"]},
                            self.env_steps)

    def close(self) -> None:
        """Close the batch stream (`finetune_online`, which made this, does it)."""
        self.batches.close()


def _take_turns(online: _Online, frames_writer) -> None:
    """Every actor (`actors.multigame.online_player`: one per game, or one for all with
    `multigame.mix_games`) plays `multigame.online_round_steps` steps per game it plays
    with the learner's own model, its finished episodes written to the table, then the
    learner makes the updates due; until the budget is played (the last round whole, so
    the count may pass it by up to a round)."""
    from actors.multigame import online_player

    cfg, mg = online.cfg, online.cfg.multigame
    device = online.learner.device
    generator = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    groups, players = actor_games(cfg), []
    try:
        for group in groups:
            players.append(online_player(cfg, online.learner.model, group,
                                         [game_seed(cfg, g) for g in group], generator))
        online.actors = len(players)
        while online.env_steps < mg.online_env_steps:
            start = time.perf_counter()
            for group, player in zip(groups, players):
                episodes, taken = player.play(mg.online_round_steps * len(group))
                for g, episode in episodes:
                    frames_writer.write(episode, g)
                    online.episode(g, episode.ret, online.env_steps + taken)
                online.env_steps += taken
            online.act_s += time.perf_counter() - start
            for _ in range(online.due()):
                online.update()
            online.log_progress()
    finally:
        for player in players:
            player.close()


def actor_games(cfg) -> list[list[int]]:
    """The game indices each online actor plays: one actor for all games with
    `multigame.mix_games`, else one per game."""
    indices = list(range(len(cfg.multigame.games)))
    return [indices] if cfg.multigame.mix_games else [[g] for g in indices]


def game_seed(cfg, g: int) -> int:
    """The environment seed of game `g`'s environments in the online stage."""
    return cfg.seed * 1000 + 500 + g


def _learn_beside_actor_processes(online: _Online, checkpoint: Path) -> None:
    """One process per actor (`launch.roles.multigame_actor_role`; per game, or one for
    all with `multigame.mix_games`) plays its share of the budget (`online_env_steps` x
    its games / all games, rounded up; each actor may pass it by up to the last step
    of its last chunk) with the newest published weights and writes its finished
    episodes to the table, while this process learns: it publishes its weights before
    starting the actors and every `finetune.publish_every` updates, and makes the
    updates due for the steps the actors report played (after every chunk of 8 steps of
    each of their environments), finished episodes or not, as turn-taking counts them.
    The rate limiter holds an actor whose writes run ahead of the learner by more than
    `online_spec`'s slack. Ends when every actor has played its share and the learner
    has made the updates due. An actor that fails stops the stage with RuntimeError,
    its traceback in this process's stderr; every actor is stopped and joined."""
    import queue

    from launch.roles import multigame_actor_role
    from learner.finetune import weights_as_arrays
    from replay.params import publish_params
    from replay.tables import as_client

    cfg, mg = online.cfg, online.cfg.multigame
    context = role_context()
    stop, reports = context.Event(), context.Queue()
    groups = actor_games(cfg)
    actors = [context.Process(
        target=multigame_actor_role, name="actor-" + "+".join(mg.games[g] for g in group),
        args=(cfg, str(checkpoint), online.address, online.spec, a, group,
              -(-mg.online_env_steps * len(group) // len(mg.games)),
              [game_seed(cfg, g) for g in group], stop, reports), daemon=True)
        for a, group in enumerate(groups)]
    start = time.perf_counter()
    played, done = [0] * len(actors), [False] * len(actors)
    try:
        client = as_client(online.address)
        publish_params(client, weights_as_arrays(online.learner.model), online.learner.step)
        for actor in actors:
            actor.start()
        online.actors = len(actors)
        last_logged = 0
        while True:
            try:
                while True:
                    kind, a, g, ret, taken, weights_step = reports.get_nowait()
                    played[a] = taken
                    online.env_steps = sum(played)
                    done[a] = done[a] or kind == "done"
                    if kind == "episode":
                        online.episode(g, ret, online.env_steps)
                        online.writer.scalar(f"online/{mg.games[g]}/weights_step",
                                             weights_step, online.env_steps)
            except queue.Empty:
                pass
            failed = [a for a in actors if a.exitcode not in (None, 0)]
            if failed:
                raise RuntimeError(f"{failed[0].name} exited with code {failed[0].exitcode} "
                                   "(its traceback is above in stderr)")
            if online.due() > 0:
                online.update()
                if online.learner.step % cfg.finetune.publish_every == 0:
                    publish_params(client, weights_as_arrays(online.learner.model),
                                   online.learner.step)
            elif all(done):
                break
            else:
                time.sleep(0.01)
            if online.env_steps - last_logged >= mg.online_round_steps:
                online.log_progress()
                last_logged = online.env_steps
        online.log_progress()
    finally:
        stop.set()
        deadline = time.monotonic() + 30.0
        for actor in actors:  # an actor held in a rate-limited write does not see `stop`
            if actor.pid is not None:
                actor.join(timeout=max(deadline - time.monotonic(), 0.0))
        for actor in actors:
            if actor.is_alive():
                actor.terminate()
                actor.join(timeout=5.0)
        online.act_s = time.perf_counter() - start
