"""Learner updates/s from in-memory batches: no Reverb, so it also runs on GPU machines
without it.

For the quickstart model and ODT's standard model (width 512, 4 layers, K = 20,
batch 256), each objective: warm-up updates, then timed updates on fixed random
windows. Prints one JSON object per configuration, and the achieved model FLOP/s.

    python -m bench.learner [--configs=quickstart,standard] [--seconds=10] [--device=auto]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from learner.config import ObjectiveConfig, OptimConfig
from learner.learner import Learner
from models import ModelConfig

CONFIGS = {
    # The quickstart preset's model and batch (launch/presets.py).
    "quickstart": (ModelConfig(state_dim=4, act_dim=1, context_len=10, embed_dim=64, n_layer=2,
                               n_head=2, ffn_dim=256, dropout=0.0), 64),
    # ODT's model on Hopper (Zheng et al. 2022).
    "standard": (ModelConfig(state_dim=11, act_dim=3), 256),
}


def random_batch(cfg: ModelConfig, batch_size: int, device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    B, K, S, A = batch_size, cfg.context_len, cfg.state_dim, cfg.act_dim
    mask = torch.ones(B, K)
    mask[: B // 4, : K // 2] = 0  # some left padding, as near episode starts
    batch = {
        "observations": torch.randn(B, K, S, generator=g),
        "actions": torch.rand(B, K, A, generator=g) * 2 - 1,
        "rewards": torch.rand(B, K, generator=g),
        "returns_to_go": torch.rand(B, K, generator=g) * 1000,
        "timesteps": torch.randint(0, 1000, (B, K), generator=g),
        "mask": mask,
        "next_observations": torch.randn(B, K, S, generator=g),
        "terminated": torch.zeros(B, K),
    }
    return {k: v.to(device) for k, v in batch.items()}


def measure(name: str, kind: str, seconds: float, device) -> dict:
    model_cfg, batch_size = CONFIGS[name]
    learner = Learner(model_cfg, ObjectiveConfig(kind=kind),
                      OptimConfig(batch_size=batch_size, warmup_steps=10), device)
    batch = random_batch(learner.model_cfg, batch_size, device)
    for _ in range(3):
        learner.update(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    updates, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or updates < 3:
        learner.update(batch)
        updates += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    flops = learner.model.flops_per_window() * batch_size * updates / elapsed
    if kind == "odt_td3":
        # The actor (transformer backward) runs every 2nd batch; the target forward every batch.
        flops *= (1 / learner.objective.actor_update_interval + 1 / 3)
    return {
        "benchmark": "learner",
        "config": name,
        "objective": kind,
        "path": "eager_fp32",
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "context_len": model_cfg.context_len,
        "params": learner.model.num_params(),
        "updates": updates,
        "updates_per_s": round(updates / elapsed, 2),
        "model_tflops_per_s": round(flops / 1e12, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="quickstart,standard")
    parser.add_argument("--objectives", default="odt,odt_td3")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if args.device == "auto" else args.device)
    for name in args.configs.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"error: --configs names unknown config {name!r}; "
                             f"choose from {', '.join(CONFIGS)}")
        for kind in args.objectives.split(","):
            row = measure(name, kind, args.seconds, device)
            row["machine"] = platform.machine()
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
