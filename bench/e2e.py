"""Quickstart fine-tuning wall time against its floor and against a serial schedule.

From one pretrained quickstart checkpoint (recorded dataset + short pretraining),
these ways to reach the same environment-step budget (`--modes`, run in the order
given):
- distributed: `launch.local.run_local`, the replay server, learner, actors and
  evaluator as processes (wall time from the call to its return, the learner's own
  update-loop time, read from its TensorBoard events, and each role's CPU seconds,
  read from /proc while it runs);
- inline: `launch.local.run_inline`, the same roles as threads of this process (one
  actor);
- serial: ODT's own schedule in one process: one episode with batch-1 inference,
  then updates_per_env_step x its length updates on the in-memory buffer (offline
  preload + every online episode so far), in turn;
and always the floor: the learner alone making the first run's number of updates on
batches from an in-memory buffer (the preloaded offline windows).
Each ends with the same deterministic evaluation. Prints one JSON object, with each
run's wall time over the floor's.

Targets: distributed (or inline) within 1.2x of the floor, faster than serial, with an
evaluation return at least the serial one's.

    python -m bench.e2e [--env_steps=200] [--pretrain_updates=100] [--tolerance_steps=50]
        [--modes=distributed,inline,serial] [--objective=odt_td3]
        [--set=compute.cpu_threads=2 ...]
"""

from __future__ import annotations

# isort: off
from replay import _reverb  # noqa: F401  (reverb/TF before torch)

# isort: on
import argparse
import json
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from actors.context import BatchedPolicy, ContextBuffer
from actors.envs import VectorEnv, env_spec
from actors.evaluate import evaluate
from bench.learner import peak_rss_mib
from bench.memory import read_pids
from launch.flags import apply_setting
from launch.local import run_inline, run_local
from launch.pipeline import obtain_dataset, pretrain, save_config
from launch.presets import get_preset
from launch.supervisor import cpu_seconds, rss_mib
from learner.checkpoint import load_checkpoint
from learner.device import to_device
from learner.finetune import learner_from_checkpoint
from learner.objectives import get_objective
from learner.tensorboard import read_scalars
from replay.offline import OfflineSampler, flatten_episodes, top_episodes
from replay.windows import concatenate, flatten_episode

MODES = ("distributed", "inline", "serial")


def preload_steps(cfg, dataset):
    """The offline windows a run starts from: the top trajectories, as replay preloads them."""
    box = env_spec(cfg.env.env_id).action_box
    n = min(cfg.replay.preload_trajectories, cfg.replay.capacity_trajectories)
    return [flatten_episodes([ep], box) for ep in top_episodes(dataset.episodes, n)
            if ep.length > 0]


def final_eval(cfg, model) -> float:
    return evaluate(model, cfg.env.env_id, episodes=cfg.eval.episodes,
                    target_return=cfg.eval.target_return, context_len=cfg.eval.context_len,
                    seed=cfg.eval.seed).mean_return


def floor(cfg, checkpoint, preload, updates: int) -> dict:
    """The learner alone: `updates` updates on in-memory batches."""
    device = torch.device("cpu")
    learner = learner_from_checkpoint(load_checkpoint(checkpoint), cfg.objective, cfg.optim,
                                      device)
    sampler = OfflineSampler(concatenate(preload), cfg.model.context_len, cfg.optim.batch_size,
                             seed=cfg.seed)
    start = time.perf_counter()
    for _ in range(updates):
        learner.update(to_device(sampler.sample(), device))
    return {"seconds": time.perf_counter() - start, "updates": updates}


def play_episode(env: VectorEnv, policy: BatchedPolicy, ctx: ContextBuffer,
                 target_return: float):
    """One episode of a one-env VectorEnv, acting with batch-1 inference."""
    obs = env.reset()
    ctx.start(np.ones(1, bool), obs, target_return)
    observations, actions, rewards = [obs[0]], [], []
    while True:
        action = policy.act(ctx)
        ctx.record_actions(action)
        result = env.step(action)
        observations.append(result.observations[0])
        actions.append(action[0])
        rewards.append(result.rewards[0])
        if result.done[0]:
            return flatten_episode(np.stack(observations), np.stack(actions),
                                   np.asarray(rewards, np.float32), bool(result.terminated[0]))
        ctx.advance(np.ones(1, bool), result.observations, result.rewards)


def serial(cfg, checkpoint, preload) -> dict:
    """ODT's schedule: collect one episode, then its updates, until the budget."""
    device = torch.device("cpu")
    learner = learner_from_checkpoint(load_checkpoint(checkpoint), cfg.objective, cfg.optim,
                                      device)
    mode = get_objective(cfg.objective.kind).exploration
    policy = BatchedPolicy(learner.model, mode=mode, noise_std=cfg.actor.exploration_noise,
                           seed=cfg.seed)
    env = VectorEnv(cfg.env.env_id, 1, cfg.seed * 10_000 + 100)
    ctx = ContextBuffer.for_env(1, cfg.eval.context_len, env.spec)
    parts = list(preload)
    capacity = cfg.replay.capacity_trajectories
    env_steps = updates = 0
    collect_s = train_s = 0.0
    start = time.perf_counter()
    try:
        while env_steps < cfg.finetune.env_steps:
            t0 = time.perf_counter()
            episode = play_episode(env, policy, ctx, cfg.online_target_return)
            t1 = time.perf_counter()
            parts = (parts + [episode])[-capacity:]
            env_steps += len(episode)
            sampler = OfflineSampler(concatenate(parts), cfg.model.context_len,
                                     cfg.optim.batch_size, seed=cfg.seed + env_steps)
            n = round(cfg.replay.updates_per_env_step * len(episode))
            for _ in range(n):
                learner.update(to_device(sampler.sample(), device))
            updates += n
            collect_s += t1 - t0
            train_s += time.perf_counter() - t1
    finally:
        env.close()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "env_steps": env_steps, "updates": updates,
            "collect_seconds": collect_s, "train_seconds": train_s,
            "eval_return": final_eval(cfg, learner.model)}


class RoleCpu:
    """CPU seconds of each role process of a run in `run_dir`, while it runs.

    A thread reads the pids from the run's processes.json and each one's CPU time
    (`launch.supervisor.cpu_seconds`) every `interval_s`; `stop` returns role -> CPU
    seconds, summed over the pids a restarted role had. A process's figure is its
    last reading before it exited, so up to `interval_s` of its CPU time is missed.
    A run without role processes (`run_inline`) gives {}. Linux only (/proc).
    """

    def __init__(self, run_dir: Path, interval_s: float = 0.5):
        self.run_dir = run_dir
        self.interval_s = interval_s
        self.seconds: dict[tuple[str, int], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="role-cpu", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.read()
            self._stop.wait(self.interval_s)

    def read(self) -> None:
        for role, pid in read_pids(self.run_dir).items():
            try:
                self.seconds[role, pid] = cpu_seconds(pid)
            except (FileNotFoundError, ProcessLookupError):
                pass  # exited (or not started yet): its last reading stands

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        totals: dict[str, float] = {}
        for (role, _), seconds in self.seconds.items():
            totals[role] = totals.get(role, 0.0) + seconds
        return totals


def distributed(cfg, checkpoint, dataset_path, run_dir: Path, run=run_local) -> dict:
    """A fine-tuning run through `run` (`launch.local.run_local`: every role a process;
    `run_inline`: every role a thread of this process). `role_cpu_seconds`: CPU time
    of each role process (`RoleCpu`; empty for `run_inline`)."""
    save_config(run_dir, cfg)
    role_cpu = RoleCpu(run_dir)
    start = time.perf_counter()
    try:
        summary = run(cfg, checkpoint, run_dir, dataset_path=dataset_path, status=False)
    finally:
        role_seconds = role_cpu.stop()
    seconds = time.perf_counter() - start
    learner_scalars = read_scalars(run_dir / "learner")
    rate = learner_scalars.get("throughput/run_updates_per_s")
    wait = learner_scalars.get("throughput/run_sample_wait_fraction")
    loop_s = summary.updates / rate[-1][1] if rate else None
    return {"seconds": seconds, "env_steps": summary.env_steps, "updates": summary.updates,
            "learner_loop_seconds": loop_s,
            "sample_wait_fraction": wait[-1][1] if wait else None,
            "eval_return": summary.final_return,
            "role_cpu_seconds": {role: round(s, 2) for role, s in sorted(role_seconds.items())}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quickstart")
    parser.add_argument("--objective", default=None, help="default: the preset's")
    parser.add_argument("--env_steps", type=int, default=200)
    parser.add_argument("--pretrain_updates", type=int, default=100)
    parser.add_argument("--tolerance_steps", type=float, default=50.0,
                        help="replay.tolerance_steps of the distributed and inline runs: "
                             "how far actors may run ahead of the learner (which makes "
                             "the updates owed after the actors stop at the budget)")
    parser.add_argument("--eval_episodes", type=int, default=5)
    parser.add_argument("--modes", default="distributed,inline,serial",
                        help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="run folder; default: a temporary one")
    parser.add_argument("--set", action="append", default=[],
                        help="config override, dotted field=value (repeatable), e.g. "
                             "--set=compute.cpu_threads=2")
    args = parser.parse_args(argv)
    modes = list(dict.fromkeys(m for m in args.modes.split(",") if m))
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes:
        parser.error(f"--modes={args.modes!r}: {', '.join(unknown) or 'none given'}; "
                     f"pick from {', '.join(MODES)}")
    cfg = get_preset(args.preset)
    for item in args.set:
        cfg = apply_setting(cfg, item)
    cfg = replace(
        cfg, seed=args.seed,
        objective=replace(cfg.objective, kind=args.objective or cfg.objective.kind),
        pretrain=replace(cfg.pretrain, updates=args.pretrain_updates,
                         eval_every=0, checkpoint_every=max(args.pretrain_updates, 1)),
        eval=replace(cfg.eval, episodes=args.eval_episodes),
        replay=replace(cfg.replay, tolerance_steps=args.tolerance_steps),
        finetune=replace(cfg.finetune, env_steps=args.env_steps,
                         eval_every_env_steps=max(args.env_steps, 1)),
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        dataset = obtain_dataset(cfg, out, progress=False)
        pre_dir = out / "pretrain"
        pre_dir.mkdir()
        pre = pretrain(replace(cfg, objective=replace(cfg.objective, kind="odt")), dataset,
                       pre_dir)
        preload = preload_steps(cfg, dataset)
        rss_start = rss_mib()
        runs = {}
        for mode in modes:
            if mode == "serial":
                runs[mode] = serial(cfg, pre.checkpoint, preload)
                continue
            run_dir = out / mode
            run_dir.mkdir()
            runs[mode] = distributed(cfg, pre.checkpoint, dataset.source, run_dir,
                                     run=run_local if mode == "distributed" else run_inline)
        first = next(iter(runs.values()))
        flo = floor(cfg, pre.checkpoint, preload, first["updates"])
        rss_end = rss_mib()
    dist, ser = runs.get("distributed"), runs.get("serial")
    floor_per_update = flo["seconds"] / max(flo["updates"], 1)
    ratios, targets = {}, {}
    for mode, r in runs.items():
        ratios[f"{mode}_over_floor"] = round(r["seconds"] / flo["seconds"], 3)
        if mode == "serial":
            continue
        ratios[f"{mode}_seconds_per_update_over_floor"] = round(
            r["seconds"] / max(r["updates"], 1) / floor_per_update, 3)
        targets[f"{mode}_within_1.2x_of_floor"] = r["seconds"] <= 1.2 * flo["seconds"]
        if ser is not None:
            ratios[f"{mode}_over_serial"] = round(r["seconds"] / ser["seconds"], 3)
            targets[f"{mode}_faster_than_serial"] = r["seconds"] < ser["seconds"]
            targets[f"{mode}_return_at_least_serial"] = r["eval_return"] >= ser["eval_return"]
    if dist is not None and dist["learner_loop_seconds"] is not None:
        ratios["learner_loop_over_floor"] = round(dist["learner_loop_seconds"]
                                                  / flo["seconds"], 3)
    print(json.dumps({
        "benchmark": "e2e",
        "preset": cfg.name,
        "objective": cfg.objective.kind,
        "env_steps_budget": cfg.finetune.env_steps,
        "updates_per_env_step": cfg.replay.updates_per_env_step,
        "num_actors": cfg.actor.num_actors,
        "envs_per_actor": cfg.actor.envs_per_actor,
        "torch_threads": torch.get_num_threads(),
        "pretrained_return": pre.eval_return,
        **{mode: {k: _round(v) for k, v in r.items()} for mode, r in runs.items()},
        "floor": {k: _round(v) for k, v in flo.items()},
        **ratios,
        "targets": targets,
        "bench_rss_mib_start": round(rss_start, 1),
        "bench_rss_mib_end": round(rss_end, 1),
        "bench_peak_rss_mib": round(peak_rss_mib(), 1),
    }), flush=True)


def _round(value):
    return round(value, 3) if isinstance(value, float) else value


if __name__ == "__main__":
    main()
