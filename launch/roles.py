"""The process roles of a fine-tuning run: replay, learner, actor, evaluator.

Each `*_role` function is the body of one OS process (on one host, forked from a
server process that has imported what the roles use: `launch.supervisor.role_context`);
they talk only through the Reverb server at `address` (experience in, weights out), so
the same functions run on one host or on many. Stopping is cooperative: each role
watches its `stop` event and finishes what it is doing (the learner writes a final
checkpoint and publishes its last weights).

reverb (and TensorFlow) are imported before torch, as both are used here.
"""

from __future__ import annotations

# isort: off
from replay import _reverb  # noqa: F401  (reverb/TF before torch)
from replay.params import ParamsPuller, publish_params
from replay.formats import item_format
from replay.windows import action_map
from replay.tables import (
    EXPERIENCE_TABLE,
    ReplaySpec,
    ReplayUnavailable,
    check_restored,
    checkpoint_replay,
    has_checkpoint,
    preload_items_from_server,
    start_server,
    table_counts,
)

# isort: on
import json
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from launch.program import Role, env_steps, samples_per_insert
from learner.objectives import get_objective
from learner.tensorboard import SummaryWriter, markdown_table


@dataclass(frozen=True)
class RunPaths:
    run_dir: str
    checkpoint: str
    """The pretrained (or earlier) checkpoint every role starts from."""

    def role_dir(self, role: str) -> Path:
        return Path(self.run_dir) / role

    @property
    def learner_checkpoint(self) -> Path:
        return self.role_dir("learner") / "checkpoint.pt"

    @property
    def replay_checkpoints(self) -> Path:
        """Reverb's checkpoint folder: written with the learner's checkpoints, restored
        by a replay server started on this run directory."""
        return self.role_dir("replay") / "checkpoints"

    @property
    def replay_checkpoint_record(self) -> Path:
        """JSON of the table counts at the latest replay checkpoint (and its path)."""
        return self.role_dir("replay") / "checkpoint.json"


def checkpoint_replay_and_record(client, paths: RunPaths, preload_items: int) -> dict:
    """Checkpoint the replay tables and record their counts next to the checkpoints.

    The counts are read right after the checkpoint; they match it exactly when no
    actor or learner is using the server.
    """
    path = checkpoint_replay(client)
    counts = table_counts(client, EXPERIENCE_TABLE)
    record = {"path": path, "env_steps": env_steps(counts, preload_items), **counts}
    target = paths.replay_checkpoint_record
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(target)
    return record


def replay_spec(cfg, env_info: dict, preload_items: int = 0) -> ReplaySpec:
    """The tables of a run of `cfg` on the env `env_info` describes (`launch.runs.env_info`),
    with `preload_items` offline windows: every role builds the same one."""
    return ReplaySpec(
        observation_shape=tuple(env_info["observation_shape"]),
        action_shape=tuple(env_info["action_shape"]),
        context_len=cfg.model.context_len,
        capacity_items=max(cfg.replay.capacity_trajectories * env_info["max_episode_steps"],
                           preload_items, 1),
        samples_per_insert=samples_per_insert(cfg),
        tolerance_steps=cfg.replay.tolerance_steps,
        preload_items=preload_items,
        item_format=cfg.replay.item_format,
        observation_dtype=env_info.get("observation_dtype", "float32"),
        action_dtype=env_info.get("action_dtype", "float32"),
    )


def _sleep_until(stop, seconds: float) -> None:
    stop.wait(seconds)


# ---- replay ----------------------------------------------------------------------


def replay_role(cfg, env_info: dict, dataset_path: str | None, port: int, ready, stop,
                checkpoint_dir: str | None = None) -> None:
    """Serve the experience and params tables until `stop`; preload top-N offline episodes.

    With `checkpoint_dir` holding a Reverb checkpoint (a resumed run), the tables are
    restored from it instead: experience, and the rate limiter's counters, which keep
    counting environment steps and the learner's samples where they were; nothing is
    preloaded again (the restored limiter is centred on the first run's preload, and
    more inserts would hold the actors back for good). Puts (port, preload_items) on
    the `ready` queue once the tables are ready.
    """
    from learner.tensorboard import SummaryWriter
    from replay.datasets import load_dataset
    from replay.offline import flatten_episodes, top_episodes

    box = action_map(env_info)
    restoring = has_checkpoint(checkpoint_dir)
    preload = []
    if not restoring and dataset_path is not None and cfg.replay.preload_trajectories > 0:
        episodes = load_dataset(dataset_path).episodes
        best = top_episodes(episodes, min(cfg.replay.preload_trajectories,
                                          cfg.replay.capacity_trajectories))
        preload = [flatten_episodes([ep], box) for ep in best if ep.length > 0]
    spec = replay_spec(cfg, env_info, sum(len(p) for p in preload))
    server = start_server(spec, port=port or None, checkpoint_dir=checkpoint_dir)
    try:
        client = server.localhost_client()
        if restoring:
            preload_items = preload_items_from_server(client)
            spec = replay_spec(cfg, env_info, preload_items)
            try:
                counts = check_restored(client, spec)
            except ValueError as error:
                ready.put(("error", f"{checkpoint_dir}: {error}"))
                return
            with SummaryWriter(Path(checkpoint_dir).parent) as writer:
                writer.scalars({"replay/restored_size": counts["size"],
                                "replay/restored_inserts": counts["inserts"],
                                "replay/restored_samples": counts["samples"]},
                               env_steps(counts, preload_items))
        else:
            writer = item_format(spec.item_format).writer(client, spec)
            for steps in preload:  # ascending return: FIFO evicts the worst first
                writer.write(steps)
            writer.close()
        ready.put((server.port, spec.preload_items))
        while not stop.is_set():
            _sleep_until(stop, 0.5)
    finally:
        server.stop()


# ---- learner ---------------------------------------------------------------------


class _StreamReader(threading.Thread):
    """Reads `batches` in a daemon thread into a queue of 2; what ends the stream (an
    exception, or `_STREAM_END`) is queued too. Stops handing on once `done` is set."""

    def __init__(self, batches):
        super().__init__(name="learner-stream", daemon=True)
        self.batches = batches
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.done = threading.Event()

    def run(self) -> None:
        try:
            for batch in self.batches:
                if not self._put(batch):
                    return
            self._put(_STREAM_END)
        except BaseException as error:  # handed to the learner's thread, which raises it
            self._put(error)

    def _put(self, item) -> bool:
        while not self.done.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False


_STREAM_END = object()


def _batches_until(address, spec, batch_size, stop):
    """Window batches until `stop` is set, seen within 0.1 s, or the replay server is
    gone (so the learner still writes its final checkpoint).

    A daemon thread (`_StreamReader`) reads the table's stream, which waits on the rate
    limiter as long as it takes, and this generator hands its batches on while it
    watches `stop`. The stream is not ended at a stop: ending a TF iterator joins its
    Reverb sampler, which waits for the samples it has in flight, and once the actors
    have stopped the rate limiter held those for up to ~50 s (the learner's stop took
    that long when its stream ended on a 1 s rate-limiter timeout). The reader is left
    waiting; a role process ends with os._exit, and inline the replay server stops next.
    """
    from replay.stream import STREAM_ERRORS
    from replay.tables import wait_for_server

    while not stop.is_set():
        reader = _StreamReader(item_format(spec.item_format).batches(address, spec, batch_size))
        reader.start()
        try:
            while not stop.is_set():
                try:
                    item = reader.queue.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _STREAM_END or isinstance(item, STREAM_ERRORS):
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
            else:
                return
        finally:
            reader.done.set()
        try:
            wait_for_server(address, timeout_s=5)
        except ReplayUnavailable:
            reason = "its stream ended" if item is _STREAM_END else item
            print(f"learner: replay server at {address} is gone ({reason}); stopping",
                  flush=True)
            return


def learner_role(cfg, paths: RunPaths, address: str, spec: ReplaySpec, stop) -> None:
    """Fine-tune from `paths.checkpoint` on windows from the experience table until `stop`.
    On a CPU device the process runs `cfg.compute.learner_cpu_threads` intra-op threads.

    Data-parallel on G GPUs of one node, one process per GPU:

        torchrun --nproc_per_node=G -m launch.node --role=learner ...

    Under torchrun (WORLD_SIZE > 1) each rank joins the process group (nccl on CUDA,
    device cuda:LOCAL_RANK; gloo on CPU), loads the checkpoint, takes rank 0's
    weights, and reads its own window stream from Reverb (the server samples each
    request independently, so the ranks' batches differ; torch is seeded per rank for
    dropout and target-policy noise). Gradients are averaged across ranks every update
    (`Learner`), and all ranks stop after the same update. Only rank 0 publishes
    weights, writes checkpoints and TensorBoard; the others publish and write nothing.

    Batch size and replay ratio: each rank samples cfg.optim.batch_size windows per
    update, so one update of the group trains on G x batch_size windows, and
    `learner.step` counts such group updates. The rate limiter counts every rank's
    samples against samples_per_insert = updates_per_env_step x batch_size (replay_spec),
    so with G ranks the learner makes updates_per_env_step / G updates per environment
    step: each window is still sampled as often as configured (the replay ratio holds),
    but there are G times fewer gradient steps per environment step, each on a G times
    larger batch. Keeping updates_per_env_step updates per environment step instead
    needs a replay server built with samples_per_insert x G. Rank 0 writes the figures
    in effect (`distributed.*`) into the config table.
    """
    from learner import distributed
    from learner.checkpoint import load_checkpoint
    from learner.device import resolve_device, set_cpu_threads
    from learner.finetune import (
        data_parallel_finetune_loop,
        learner_from_checkpoint,
        save_learner,
    )
    from learner.tensorboard import NullWriter, flatten

    device = resolve_device(cfg.device)
    set_cpu_threads(device, cfg.compute, learners=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    rank, world_size = distributed.init_from_env(device)
    device = distributed.local_device(device)
    torch.manual_seed(cfg.seed)
    payload = load_checkpoint(paths.checkpoint, map_location=device)
    learner = learner_from_checkpoint(payload, cfg.objective, cfg.optim, device, cfg.compute)
    if world_size > 1:  # Learner() seeded every rank alike
        torch.manual_seed(cfg.seed + rank)
    from replay.tables import as_client

    client = as_client(address)  # the client lives in this process
    # A resumed learner's step may be behind what the previous process logged.
    writer = (SummaryWriter(paths.role_dir("learner"), purge_step=learner.step) if rank == 0
              else NullWriter())
    table = flatten(cfg)
    if world_size > 1:
        table.update({
            "distributed.world_size": world_size,
            "distributed.global_batch_size": world_size * cfg.optim.batch_size,
            "distributed.updates_per_env_step":
                spec.samples_per_insert / (world_size * cfg.optim.batch_size),
        })
    table["compute.in_effect"] = f"{learner.compute_path}, {torch.get_num_threads()} threads"
    writer.text("config", markdown_table(table), step=learner.step)

    last_counts = {"env_steps": 0}

    def counters():
        counts = table_counts(client, EXPERIENCE_TABLE)
        counts["env_steps"] = env_steps(counts, spec.preload_items)
        last_counts.update(counts)
        return counts

    def checkpoint():
        """The learner's checkpoint, then the replay server's at the same moment."""
        try:
            steps = int(counters()["env_steps"])
        except ReplayUnavailable:  # the server is gone: keep the learner's state anyway
            steps = int(last_counts["env_steps"])
        save_learner(paths.learner_checkpoint, learner, run_config=cfg.to_dict(),
                     env_steps=steps)
        try:
            checkpoint_replay_and_record(client, paths, spec.preload_items)
        except (ReplayUnavailable, RuntimeError) as error:
            print(f"learner: replay checkpoint failed: {error}", flush=True)

    stats = data_parallel_finetune_loop(
        learner,
        iter(_batches_until(address, spec, cfg.optim.batch_size, stop)),
        publish=lambda step, arrays: publish_params(client, arrays, step),
        counters=counters,
        writer=writer,
        should_stop=stop.is_set,
        publish_every=cfg.finetune.publish_every,
        log_every=cfg.finetune.log_every,
        checkpoint_every=cfg.finetune.checkpoint_every,
        checkpoint=checkpoint,
        max_nonfinite_updates=cfg.finetune.max_nonfinite_updates,
    )
    if rank == 0:
        checkpoint()
    writer.scalars({"throughput/run_updates_per_s": stats.updates_per_s,
                    "throughput/run_sample_wait_fraction": stats.sample_wait_fraction},
                   learner.step)
    writer.close()
    distributed.shutdown()


# ---- actor -----------------------------------------------------------------------


def policy_from_checkpoint(cfg, checkpoint: str):
    """The acting model: the checkpoint's weights with the objective's head."""
    from learner.checkpoint import (
        convert_policy_head,
        load_checkpoint,
        model_config_from,
    )
    from models import build_model

    payload = load_checkpoint(checkpoint)
    model_cfg = model_config_from(payload)
    head = cfg.objective.policy(model_cfg.action_kind)
    model = build_model(model_cfg, head=head)
    model.load_state_dict(convert_policy_head(payload["learner"]["model"], head))
    return model.eval()


def expected_params(model) -> dict:
    return {k: (tuple(v.shape), np.dtype(np.float32)) for k, v in model.state_dict().items()}


def load_arrays(model, arrays: dict[str, np.ndarray]) -> None:
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})


def run_env_steps(address: str, spec: ReplaySpec) -> int:
    """Environment steps of the whole run so far, from the replay server's counters."""
    return env_steps(table_counts(address, EXPERIENCE_TABLE), spec.preload_items)


def actor_role(actor_id: int, cfg, paths: RunPaths, address: str, spec: ReplaySpec,
               stop, incarnation: int = 0, own_process: bool = True) -> None:
    """Act with the newest weights and write finished episodes until `stop`.

    In a process of its own (`own_process`) torch gets one intra-op thread: batched
    inference of a small model is bound by per-op overhead, and the other roles need
    the cores. A role that shares its process (`launch.local --mode=inline`) leaves the
    process's setting alone.

    `incarnation` counts restarts of this actor: each one gets its own seeds. The
    actor's TensorBoard step is the run's environment steps when it started plus its
    own, so a restarted or resumed actor's curves go on from where the run is.

    With `cfg.actor.log_episodes` every episode the replay server took is also appended
    to a new episode log file in the actor's directory (`replay.episode_log`), in the
    writer thread when `cfg.actor.background_writes` is on.
    """
    from actors.actor import Actor, BackgroundSink, TeeSink
    from actors.context import BatchedPolicy
    from actors.envs import VectorEnv
    from replay.episode_log import EpisodeLog

    if own_process:
        torch.set_num_threads(1)
    seed = (cfg.seed * 10_000 + 100 + actor_id * cfg.actor.envs_per_actor
            + incarnation * 1_000_003)
    model = policy_from_checkpoint(cfg, paths.checkpoint)
    mode = get_objective(cfg.objective.kind).exploration
    policy = BatchedPolicy(model, mode=mode, noise_std=cfg.actor.exploration_noise, seed=seed)
    env = VectorEnv(cfg.env.env_id, cfg.actor.envs_per_actor, seed,
                    cfg.actor.env_batch_size or None)
    puller = ParamsPuller(address, expected_params(model), interval_s=cfg.actor.params_interval_s)
    puller.start()
    base_step = run_env_steps(address, spec)
    writer = SummaryWriter(paths.role_dir(f"actor_{actor_id}"), purge_step=base_step)
    actor: Actor
    sink = item_format(spec.item_format).writer(address, spec)
    if cfg.actor.log_episodes:
        # Second in the tee: the log gets an episode once the replay server has it.
        log = EpisodeLog(paths.role_dir(f"actor_{actor_id}"), cfg.env.env_id,
                         env.spec.info(), actor_id=actor_id, incarnation=incarnation,
                         env_steps=lambda: base_step + actor.stats.env_steps)
        sink = TeeSink(sink, log)
    if cfg.actor.background_writes:
        sink = BackgroundSink(sink, should_stop=stop.is_set)
    started = time.perf_counter()

    def on_episode(ret: float, length: int, lag: int) -> None:
        steps = base_step + actor.stats.env_steps
        writer.scalars({
            "actor/episode_return": ret,
            "actor/episode_length": length,
            "actor/policy_lag": lag,
            "actor/env_steps_per_s": actor.stats.env_steps / max(time.perf_counter() - started,
                                                                 1e-9),
            "actor/params_rejected": puller.rejected,
        }, steps)

    actor = Actor(env, policy, sink, target_return=cfg.online_target_return,
                  context_len=cfg.eval.context_len, params=puller,
                  load_weights=lambda arrays: load_arrays(model, arrays), on_episode=on_episode)
    try:
        stats = actor.run(stop.is_set)
        total = stats.inference_s + stats.env_s + stats.write_s
        if stats.env_steps:
            writer.scalars({
                "actor/inference_ms_per_step": 1e3 * stats.inference_s / stats.env_steps,
                "actor/env_ms_per_step": 1e3 * stats.env_s / stats.env_steps,
                "actor/write_ms_per_step": 1e3 * stats.write_s / stats.env_steps,
                "actor/busy_fraction": total / max(time.perf_counter() - started, 1e-9),
            }, base_step + stats.env_steps)
    finally:
        puller.stop()
        writer.close()
        env.close()
        if isinstance(sink, BackgroundSink):
            # The run is stopping: episodes still queued are not worth a write the rate
            # limiter may hold for long (a 1000-step episode needs 1000 more updates at
            # one update per step), so they are dropped, and the episode being written
            # is given a second before the process ends with its thread.
            sink.close(timeout_s=1.0, discard_queued=True)
        else:
            sink.close()


FIRST_WEIGHTS_S = 60.0
"""How long a multi-game actor waits for the learner's first published weights."""


def multigame_actor_role(cfg, checkpoint: str, address: str, spec: ReplaySpec, a: int,
                         games: list[int], steps: int, seeds: list[int], stop,
                         reports) -> None:
    """Online actor `a` of the multi-game pipeline (`launch.multigame`,
    `multigame.actor_processes`), in a process of its own with one torch thread: plays
    the games of `cfg.multigame.games` indexed by `games` (one, or all of them mixed in
    one batch with `multigame.mix_games`; `actors.multigame.online_player`, envs seeded
    with `seeds`, expert-action inference with sampled actions) for `steps` steps (then
    stops, its unfinished episodes dropped) or until `stop`.

    It builds the model of `checkpoint`, loads the weights the learner published to the
    params table before starting the actors (RuntimeError when none arrive within
    `FIRST_WEIGHTS_S` or a payload does not fit the model), then the newest ones
    (polled every `actor.params_interval_s`, loaded between chunks of 8 steps of each
    environment). Each finished episode goes into the experience table as frame
    windows of its game, blocking on the rate limiter. Onto `reports` it puts
    ("episode", a, game index, return, steps played, learner step of the weights in
    use) for each finished episode, ("progress", a, None, None, steps played, that
    step) after each chunk, and ("done", a, None, None, steps played, that step) at the
    end."""
    from actors.multigame import online_player
    from learner.checkpoint import load_policy
    from replay.frame_window import FrameWindowWriter

    torch.set_num_threads(1)
    mg = cfg.multigame
    names = "+".join(mg.games[g] for g in games)
    model, _ = load_policy(checkpoint)
    player = online_player(cfg, model, games, seeds, torch.Generator().manual_seed(seeds[0]))
    try:
        puller = ParamsPuller(address, expected_params(model),
                              interval_s=cfg.actor.params_interval_s)
        puller.start()
    except BaseException:
        player.close()
        raise
    taken, weights_step = 0, -1

    def newest_weights() -> None:
        nonlocal weights_step
        if puller.rejected:
            raise RuntimeError(f"actor of {names}: published weights do not fit the model "
                               f"({puller.last_error})")
        newest = puller.poll()
        if newest is not None:
            weights_step, arrays = newest
            load_arrays(model, arrays)

    try:
        deadline = time.monotonic() + FIRST_WEIGHTS_S
        while weights_step < 0 and not stop.is_set():
            newest_weights()
            if weights_step < 0 and time.monotonic() > deadline:
                raise RuntimeError(f"actor of {names}: no weights in the params table at "
                                   f"{address} after {FIRST_WEIGHTS_S:.0f} s "
                                   f"({puller.last_error or 'the table stayed empty'})")
            time.sleep(0.01)
        with FrameWindowWriter(address, spec, num_actions=cfg.model.act_dim,
                               num_games=len(mg.games)) as writer:
            while taken < steps and not stop.is_set():
                newest_weights()
                episodes, n = player.play(min(player.env.num_envs * 8, steps - taken))
                taken += n
                for g, episode in episodes:
                    writer.write(episode, g)
                    reports.put(("episode", a, g, float(episode.ret), taken, weights_step))
                reports.put(("progress", a, None, None, taken, weights_step))
        reports.put(("done", a, None, None, taken, weights_step))
    finally:
        puller.stop()
        player.close()


# ---- evaluator -------------------------------------------------------------------


def evaluate_and_log(cfg, model, writer, env_steps: int, learner_step: int):
    from actors.evaluate import evaluate

    result = evaluate(model, cfg.env.env_id, episodes=cfg.eval.episodes,
                      target_return=cfg.eval.target_return, context_len=cfg.eval.context_len,
                      seed=cfg.eval.seed, task_id=cfg.env.task_id)
    values = {"eval/return": result.mean_return, "eval/learner_step": learner_step}
    if result.normalized_score is not None:
        values["eval/normalized_score"] = result.normalized_score
    writer.scalars(values, env_steps)
    return result


def evaluator_role(cfg, paths: RunPaths, address: str, spec: ReplaySpec, stop,
                   incarnation: int = 0, own_process: bool = True) -> None:
    """Evaluate the newest weights every `eval_every_env_steps` until `stop`
    (`own_process`: as in `actor_role`)."""
    from replay.tables import as_client

    del incarnation  # evaluation seeds are fixed: every evaluation is comparable
    if own_process:
        torch.set_num_threads(1)
    model = policy_from_checkpoint(cfg, paths.checkpoint)
    client = as_client(address)
    puller = ParamsPuller(address, expected_params(model), interval_s=cfg.actor.params_interval_s)
    puller.start()
    writer = SummaryWriter(paths.role_dir("evaluator"), purge_step=run_env_steps(address, spec))
    learner_step = -1
    next_eval = 0
    try:
        while not stop.is_set():
            newest = puller.poll()
            if newest is not None:
                learner_step, arrays = newest
                load_arrays(model, arrays)
            steps = env_steps(table_counts(client, EXPERIENCE_TABLE), spec.preload_items)
            if steps >= next_eval:
                evaluate_and_log(cfg, model, writer, steps, learner_step)
                next_eval = steps + cfg.finetune.eval_every_env_steps
            _sleep_until(stop, 0.5)
    finally:
        puller.stop()
        writer.close()


def worker_role_when_ready(role: Role, cfg, paths: RunPaths, env_info: dict, replay, stop,
                           incarnation: int = 0) -> None:
    """`worker_role` in a process started beside the replay server: waits until the
    launcher sets `replay` (`launch.supervisor.ReplayReady`) or `stop`."""
    ready = replay.wait(stop)
    if ready is None:
        return
    port, preload_items = ready
    worker_role(role, cfg, paths, f"localhost:{port}", replay_spec(cfg, env_info, preload_items),
                stop, incarnation)


def worker_role(role: Role, cfg, paths: RunPaths, address: str, spec: ReplaySpec, stop,
                incarnation: int = 0, own_process: bool = True) -> None:
    """The learner, an actor or the evaluator of `launch.program` (every role but the
    replay server), against the replay server at `address`, until `stop`.
    `incarnation` counts restarts of a restartable role; `own_process` is False for a
    role that shares its process with the others (a thread of the inline mode)."""
    if role.kind == "learner":
        learner_role(cfg, paths, address, spec, stop)
    elif role.kind == "actor":
        actor_role(role.actor_id, cfg, paths, address, spec, stop, incarnation, own_process)
    elif role.kind == "evaluator":
        evaluator_role(cfg, paths, address, spec, stop, incarnation, own_process)
    else:
        raise ValueError(f"worker_role runs the learner, actors and evaluator, not {role.kind!r}")
