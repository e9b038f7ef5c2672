"""Actor env steps/s against its two limits, each measured alone on the same cores.

One actor (this process: envpool, batched policy inference on one torch thread as
`launch.roles.actor_role` runs it, Reverb writes) writes to a Reverb server in a
child process whose rate limiter never blocks. Beside it, in the same run and
interleaved with it in rounds, its two limits:
- env: raw envpool stepping with random actions, same environments and batch;
- inference: the batched policy forward alone (`BatchedPolicy.act`) at the same batch.
Reports the actor's steps/s over the slower limit, and inference, env-step and write
time per env step, and RSS at start and end.

Variants (how the actor steps and writes):
    lockstep_inline      all envs step together; episodes written in the actor loop
    lockstep_background  all envs step together; episodes written by a writer thread
    async_background     envpool send/recv with twice --batch_size envs: one batch
                         steps while the policy acts for the other; writer thread
Every variant acts for --batch_size envs per forward pass, the limits' batch.

    python -m bench.actor [--env_id=InvertedPendulum-v4] [--batch_size=8]
        [--variants=lockstep_inline,lockstep_background,async_background]
        [--seconds=3] [--rounds=2] [--checkpoint=runs/<run>/pretrain/checkpoint.pt]
        [--env_threads=0]

Without --checkpoint the policy is freshly initialised, so episodes are as short as
the task allows (InvertedPendulum: ~5 steps) and per-episode costs (K-1 padding
steps per written episode) weigh more than in a run; a pretrained checkpoint acts as
a run's actors do at the start of fine-tuning.
"""

from __future__ import annotations

# isort: off
from replay import _reverb  # noqa: F401  (reverb/TF before torch)
from replay.tables import ReplaySpec, start_server, table_counts
from replay.writer import EpisodeWriter

# isort: on
import argparse
import json
import multiprocessing as mp
import time
from dataclasses import replace

import numpy as np
import torch

from actors.actor import Actor, BackgroundSink
from actors.context import BatchedPolicy, ContextBuffer
from actors.envs import VectorEnv, env_spec
from bench import named
from bench.learner import peak_rss_mib
from launch.presets import get_preset
from launch.supervisor import rss_mib
from learner.objectives import get_objective
from models import build_model

VARIANTS = {
    # name: (environments per inference batch, writes in a thread)
    "lockstep_inline": (1, False),
    "lockstep_background": (1, True),
    "async_background": (2, True),
}


def serve(spec: ReplaySpec, ready, stop) -> None:
    """A Reverb server holding `spec`'s tables until `stop` (a child process)."""
    server = start_server(spec)
    ready.put(server.port)
    stop.wait()
    server.stop()


def unlimited_spec(observation_shape, action_shape, context_len: int) -> ReplaySpec:
    """Tables whose rate limiter never holds the actor back."""
    return ReplaySpec(observation_shape=tuple(observation_shape),
                      action_shape=tuple(action_shape), context_len=context_len,
                      capacity_items=200_000, samples_per_insert=1.0, tolerance_steps=1e12)


def env_limit(env_id: str, num_envs: int, batch_size: int, seconds: float, seed: int,
              options: dict | None = None):
    """(transitions, seconds) of envpool send/recv stepping with random actions."""
    env = VectorEnv(env_id, num_envs, seed, batch_size, options=options)
    rng = np.random.default_rng(seed)
    env.start()
    steps, start = 0, time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            ids, result = env.recv()
            steps += int(result.is_transition.sum())
            env.send(rng.uniform(-1, 1, (len(ids), env.spec.act_dim)).astype(np.float32), ids)
        return steps, time.perf_counter() - start
    finally:
        env.close()


def inference_limit(policy: BatchedPolicy, spec, context_len: int, batch_size: int,
                    seconds: float):
    """(actions, seconds) of `policy.act` alone on full contexts of `batch_size` envs."""
    rng = np.random.default_rng(0)
    ctx = ContextBuffer.for_env(batch_size, context_len, spec)
    ctx.states[:] = rng.normal(size=ctx.states.shape)
    ctx.returns_to_go[:] = 1000.0
    ctx.timesteps[:] = np.arange(context_len)
    ctx.mask[:] = 1.0
    rows = np.arange(batch_size)
    actions, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        policy.act(ctx, rows)
        actions += batch_size
    return actions, time.perf_counter() - start


class TimedSink:
    """Counts the time its inner sink spends writing (in whichever thread writes)."""

    def __init__(self, sink):
        self.sink = sink
        self.write_s = 0.0
        self.steps = 0

    def write(self, steps) -> int:
        t0 = time.perf_counter()
        n = self.sink.write(steps)
        self.write_s += time.perf_counter() - t0
        self.steps += n
        return n

    def close(self) -> None:
        self.sink.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quickstart",
                        help="model, objective and context length of the acting policy")
    parser.add_argument("--env_id", default=None, help="default: the preset's")
    parser.add_argument("--batch_size", type=int, default=8,
                        help="environments per forward pass")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="timed seconds per variant, and per limit")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--checkpoint", default=None,
                        help="act with this checkpoint's policy (objective's head) instead "
                             "of a freshly initialised one")
    parser.add_argument("--env_threads", type=int, default=0,
                        help="envpool's num_threads for the actor and the env limit; 0: "
                             "envpool's default (a worker thread per core: 2 on 2 cores)")
    parser.add_argument("--server", choices=("process", "thread"), default="process",
                        help="where the Reverb server runs: a child process (as in a run) "
                             "or a thread of this one (quicker to start, shares this CPU)")
    args = parser.parse_args(argv)
    names = named("variants", args.variants, VARIANTS)
    torch.set_num_threads(1)  # as launch.roles.actor_role
    cfg = get_preset(args.preset)
    env_id = args.env_id or cfg.env.env_id
    spec = env_spec(env_id)
    if args.checkpoint:
        from launch.roles import policy_from_checkpoint

        model = policy_from_checkpoint(cfg, args.checkpoint)
        if (model.cfg.state_dim, model.cfg.act_dim) != (spec.state_dim, spec.act_dim):
            raise SystemExit(f"error: --checkpoint={args.checkpoint} acts on "
                             f"{model.cfg.state_dim} states / {model.cfg.act_dim} actions; "
                             f"{env_id} has {spec.state_dim} / {spec.act_dim}")
    else:
        model = build_model(replace(cfg.model, state_dim=spec.state_dim, act_dim=spec.act_dim),
                            head=cfg.objective.policy(cfg.model.action_kind))
    mode = get_objective(cfg.objective.kind).exploration
    policy = BatchedPolicy(model.eval(), mode=mode, noise_std=cfg.actor.exploration_noise)
    replay_spec = unlimited_spec(spec.observation_shape, spec.action_shape,
                                 cfg.model.context_len)
    if args.server == "process":
        ctx = mp.get_context("spawn")
        ready, stop = ctx.Queue(), ctx.Event()
        server = ctx.Process(target=serve, args=(replay_spec, ready, stop), daemon=True)
        server.start()
        address = f"localhost:{ready.get(timeout=120)}"
    else:
        in_process = start_server(replay_spec)
        address = f"localhost:{in_process.port}"
    env_options = {"num_threads": args.env_threads} if args.env_threads else None
    chunk = args.seconds / args.rounds
    results = {name: {"actor": [0, 0.0], "env": [0, 0.0], "inference": [0, 0.0]}
               for name in names}
    sinks, stats, rss = {}, {}, {}
    try:
        for name in names:
            background = VARIANTS[name][1]
            timed = TimedSink(EpisodeWriter(address, replay_spec))
            sinks[name] = (timed, BackgroundSink(timed) if background else timed)
        for round_ in range(args.rounds):
            for i, name in enumerate(names):
                groups, _ = VARIANTS[name]
                batch, num_envs = args.batch_size, args.batch_size * groups
                seed = 1000 * round_ + 10 * i
                timed, sink = sinks[name]
                env = VectorEnv(env_id, num_envs, seed, batch, options=env_options)
                actor = Actor(env, policy, sink, target_return=cfg.online_target_return,
                              context_len=cfg.eval.context_len)
                if name in stats:
                    actor.stats = stats[name]
                rss.setdefault(name, rss_mib())
                deadline = time.perf_counter() + chunk
                start = time.perf_counter()
                actor.run(lambda d=deadline: time.perf_counter() >= d)
                elapsed = time.perf_counter() - start
                env.close()
                stats[name] = actor.stats
                results[name]["actor"][1] += elapsed
                n, s = env_limit(env_id, num_envs, batch, chunk, seed, env_options)
                results[name]["env"][0] += n
                results[name]["env"][1] += s
                n, s = inference_limit(policy, spec, cfg.eval.context_len, batch, chunk)
                results[name]["inference"][0] += n
                results[name]["inference"][1] += s
        rss_end = {}
        for name in names:
            timed, sink = sinks[name]
            sink.close()
            rss_end[name] = rss_mib()
        counts = table_counts(address)
    finally:
        if args.server == "process":
            stop.set()
            server.join(10)
        else:
            in_process.stop()
    for name in names:
        groups, background = VARIANTS[name]
        st, timed = stats[name], sinks[name][0]
        steps = max(st.env_steps, 1)
        actor_rate = st.env_steps / results[name]["actor"][1]
        env_rate = results[name]["env"][0] / results[name]["env"][1]
        inference_rate = results[name]["inference"][0] / results[name]["inference"][1]
        slower = min(env_rate, inference_rate)
        print(json.dumps({
            "benchmark": "actor",
            "variant": name,
            "env_id": env_id,
            "num_envs": args.batch_size * groups,
            "batch_size": args.batch_size,
            "background_writes": background,
            "torch_threads": torch.get_num_threads(),
            "env_steps": st.env_steps,
            "episodes": st.episodes,
            "mean_episode_length": round(st.env_steps / max(st.episodes, 1), 1),
            "seconds": round(results[name]["actor"][1], 2),
            "actor_steps_per_s": round(actor_rate, 1),
            "env_limit_steps_per_s": round(env_rate, 1),
            "inference_limit_steps_per_s": round(inference_rate, 1),
            "slower_limit": "env" if env_rate < inference_rate else "inference",
            "ratio_to_slower_limit": round(actor_rate / slower, 3),
            "inference_us_per_step": round(1e6 * st.inference_s / steps, 1),
            "env_us_per_step": round(1e6 * st.env_s / steps, 1),
            "write_wait_us_per_step": round(1e6 * st.write_s / steps, 1),
            "write_us_per_step": round(1e6 * timed.write_s / max(timed.steps, 1), 1),
            "windows_written": timed.steps,
            "rss_mib_start": round(rss[name], 1),
            "rss_mib_end": round(rss_end[name], 1),
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "replay_inserts": counts["inserts"],
            "server": args.server,
            "env_threads": args.env_threads,
            "policy": args.checkpoint or "untrained",
        }), flush=True)


if __name__ == "__main__":
    main()
