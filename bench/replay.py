"""Windows/s the learner's Reverb stream delivers against what the learner consumes.

A Reverb server in a child process (as in a fine-tuning run) holds `--episodes`
random 1000-step episodes as K-step windows, with a rate limiter that never blocks.
Then, in this process:
- delivery: `replay.stream.window_batches` (the learner role's stream settings)
  iterated alone: windows/s;
- consumption: the learner's updates/s on one in-memory batch, times the batch size;
- the learner on the stream: `learner.finetune.finetune_loop` fed by the stream,
  which reports the share of its wall time spent waiting for the next batch
  (sample_wait_fraction; target < 0.05).
One JSON object per configuration (bench.learner's CONFIGS; the standard one is
ODT's batch 256, K = 20).

    python -m bench.replay [--configs=standard] [--objective=odt_td3] [--seconds=5]
"""

from __future__ import annotations

# isort: off
from replay import _reverb  # noqa: F401  (reverb/TF before torch)
from replay.stream import window_batches
from replay.tables import ReplaySpec, start_server
from replay.writer import EpisodeWriter

# isort: on
import argparse
import json
import multiprocessing as mp
import os
import time

import numpy as np
import torch

from bench import named
from bench.learner import CONFIGS, peak_rss_mib, random_batch
from launch.supervisor import rss_mib
from learner.config import ObjectiveConfig, OptimConfig
from learner.finetune import finetune_loop
from learner.learner import Learner
from learner.tensorboard import NullWriter
from replay.windows import flatten_episode


def serve(spec: ReplaySpec, episodes: int, seed: int, ready, stop) -> None:
    """Serve `spec`'s tables holding `episodes` random 1000-step episodes, until `stop`."""
    server = filled_server(spec, episodes, seed)
    ready.put(server.port)
    stop.wait()
    server.stop()


def filled_server(spec: ReplaySpec, episodes: int, seed: int):
    """A server holding `episodes` random 1000-step episodes as windows."""
    server = start_server(spec)
    rng = np.random.default_rng(seed)
    T = 1000
    with EpisodeWriter(server.localhost_client(), spec) as writer:
        for _ in range(episodes):
            writer.write(flatten_episode(
                rng.normal(size=(T + 1, *spec.observation_shape)).astype(np.float32),
                rng.uniform(-1, 1, (T, *spec.action_shape)).astype(np.float32),
                rng.uniform(0, 1, T).astype(np.float32), terminated=False))
    return server


def measure(name: str, kind: str, seconds: float, episodes: int,
            server_process: bool = True) -> dict:
    model_cfg, batch_size = CONFIGS[name]
    spec = ReplaySpec(observation_shape=(model_cfg.state_dim,), action_shape=(model_cfg.act_dim,),
                      context_len=model_cfg.context_len, capacity_items=episodes * 1000,
                      samples_per_insert=1.0, tolerance_steps=1e12)
    if server_process:
        ctx = mp.get_context("spawn")
        ready, stop = ctx.Queue(), ctx.Event()
        server = ctx.Process(target=serve, args=(spec, episodes, 0, ready, stop), daemon=True)
        server.start()
        port, pid = ready.get(timeout=300), server.pid
    else:
        server = filled_server(spec, episodes, 0)
        port, pid = server.port, os.getpid()
    try:
        address = f"localhost:{port}"
        # Delivery alone, after the first batch (stream start-up).
        stream = window_batches(address, spec, batch_size, rate_limiter_timeout_ms=1000)
        next(stream)
        batches, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            next(stream)
            batches += 1
        delivered = batches * batch_size / (time.perf_counter() - start)
        stream.close()
        # Consumption: the learner alone on one in-memory batch.
        device = torch.device("cpu")
        learner = Learner(model_cfg, ObjectiveConfig(kind=kind),
                          OptimConfig(batch_size=batch_size, warmup_steps=10), device)
        batch = random_batch(learner.model_cfg, batch_size, device)
        for _ in range(2):
            learner.update(batch)
        updates, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or updates < 2:
            learner.update(batch)
            updates += 1
        consumed = updates * batch_size / (time.perf_counter() - start)
        # The learner on the stream, as in learner_role.
        stream = window_batches(address, spec, batch_size, rate_limiter_timeout_ms=1000)
        deadline = time.perf_counter() + seconds
        stats = finetune_loop(
            learner, stream, publish=lambda step, arrays: None, counters=dict,
            writer=NullWriter(), should_stop=lambda: time.perf_counter() >= deadline,
            publish_every=10**9, log_every=10**9, checkpoint_every=10**9,
            checkpoint=lambda: None)
        stream.close()
        server_rss = rss_mib(pid)
    finally:
        if server_process:
            stop.set()
            server.join(10)
        else:
            server.stop()
    return {
        "benchmark": "replay",
        "config": name,
        "objective": kind,
        "batch_size": batch_size,
        "context_len": model_cfg.context_len,
        "table_windows": episodes * 1000,
        "delivered_windows_per_s": round(delivered, 1),
        "consumed_windows_per_s": round(consumed, 1),
        "delivery_over_consumption": round(delivered / consumed, 2),
        "stream_updates": stats.updates,
        "stream_updates_per_s": round(stats.updates_per_s, 3),
        "sample_wait_fraction": round(stats.sample_wait_fraction, 4),
        "sample_wait_target_met": stats.sample_wait_fraction < 0.05,
        "torch_threads": torch.get_num_threads(),
        "learner_rss_mib": round(rss_mib(), 1),
        "learner_peak_rss_mib": round(peak_rss_mib(), 1),
        "server_rss_mib": round(server_rss, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="standard")
    parser.add_argument("--objective", default="odt_td3")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="timed seconds of each of the three measurements")
    parser.add_argument("--episodes", type=int, default=20, help="1000-step episodes in the table")
    parser.add_argument("--server", choices=("process", "thread"), default="process",
                        help="where the Reverb server runs; 'thread' (this process) takes "
                             "Reverb's in-process sampling path, unlike a real run")
    args = parser.parse_args(argv)
    for name in named("configs", args.configs, CONFIGS):
        row = measure(name, args.objective, args.seconds, args.episodes,
                      server_process=args.server == "process")
        row["server"] = args.server
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
