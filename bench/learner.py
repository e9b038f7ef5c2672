"""Learner updates/s from in-memory batches, eager fp32 against the faster compute paths.

No Reverb here, so it also runs on GPU machines without it (Python 3.12, no dm-reverb).
For the quickstart model and ODT's standard model (width 512, 4 layers, K = 20,
batch 256), each objective and each compute path (learner.config.ComputeConfig):
warm-up updates (compilation included), then timed updates on one fixed batch of
random windows. Prints one JSON object per (config, objective, path) with updates/s,
the speed-up over eager fp32 measured in the same run, achieved model FLOP/s and MFU,
and memory.

Paths:
    eager_fp32   the reference: fp32, no compilation, per-tensor optimizer steps
    fused        + fused Adam/AdamW and LAMB's multi-tensor step
    bf16         + bf16 autocast of the transformer
    compiled     + torch.compile of the transformer's encoder (fp32)
    compiled_bf16  both
    auto         what ComputeConfig() picks on this device (the default of every run)

MFU is achieved model FLOP/s over the device's peak. On CUDA the peak is the
datasheet's dense figure for the path's precision on known devices (null otherwise).
On CPU there is no datasheet figure to trust (clock and vector units vary by SKU and
by what else runs), so the peak is measured: the best FLOP/s of a 2048 x 2048 fp32
matmul on the same threads, right after the timed updates. The bf16 matmul peak
(256 x 256) is reported beside it; on CPUs without bf16 vector units it is far
lower, and bf16 paths are held to the fp32 peak all the same.

    python -m bench.learner [--configs=quickstart,standard] [--objectives=odt,odt_td3]
        [--paths=eager_fp32,fused,bf16,compiled,auto] [--seconds=2] [--rounds=2]
        [--device=auto]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch

from bench import named
from launch.supervisor import rss_mib
from learner.config import (
    EAGER_FP32,
    ComputeConfig,
    ObjectiveConfig,
    OptimConfig,
)
from learner.learner import Learner
from learner.objectives import OBJECTIVES
from models import ModelConfig

CONFIGS = {
    # The quickstart preset's model and batch (launch/presets.py).
    "quickstart": (ModelConfig(state_dim=4, act_dim=1, context_len=10, embed_dim=64, n_layer=2,
                               n_head=2, ffn_dim=256, dropout=0.0), 64),
    # ODT's model on Hopper (Zheng et al. 2022).
    "standard": (ModelConfig(state_dim=11, act_dim=3), 256),
    # The locomotion CPU presets' model and batch on Hopper (launch/presets.py).
    "locomotion-cpu": (ModelConfig(state_dim=11, act_dim=3, context_len=5, embed_dim=128,
                                   n_layer=3, n_head=1, ffn_dim=512, dropout=0.1), 64),
}

PATHS = {
    "eager_fp32": EAGER_FP32,
    "fused": ComputeConfig(precision="fp32", compile="off", fused_optimizers="on"),
    "bf16": ComputeConfig(precision="bf16", compile="off", fused_optimizers="on"),
    "compiled": ComputeConfig(precision="fp32", compile="on", fused_optimizers="on"),
    "compiled_bf16": ComputeConfig(precision="bf16", compile="on", fused_optimizers="on"),
    "auto": ComputeConfig(),
}

# Dense (no sparsity) datasheet peaks in TFLOP/s: (fp32 without TF32, bf16).
CUDA_PEAK_TFLOPS = {
    "H100 SXM": (67.0, 989.0),
    "H100 PCIe": (51.0, 756.0),
    "H100 NVL": (60.0, 835.0),
    "H100": (67.0, 989.0),
    "H200": (67.0, 989.0),
    "A100": (19.5, 312.0),
    "L40S": (91.6, 362.0),
    "L4": (30.3, 121.0),
}


def random_batch(cfg: ModelConfig, batch_size: int, device, seed: int = 0
                 ) -> dict[str, torch.Tensor]:
    """Random windows of `cfg`'s shapes, a quarter of them left-padded."""
    g = torch.Generator().manual_seed(seed)
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def device_peak_flops(device: torch.device, bf16: bool) -> tuple[float | None, str]:
    """(peak FLOP/s at the given matmul precision, how it was obtained)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (fp32, bf) in CUDA_PEAK_TFLOPS.items():
            if key in name:
                return (bf if bf16 else fp32) * 1e12, f"datasheet dense peak for {key}"
        return None, f"no datasheet peak known for {name!r}"
    dtype = torch.bfloat16 if bf16 else torch.float32
    # bf16 matmuls on CPUs without bf16 vector units run ~100x slower: a smaller size.
    n = 256 if bf16 else 2048
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = 0.0
    deadline = time.perf_counter() + 0.5
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best, (f"measured: best torch.mm {n}x{n} {str(dtype).removeprefix('torch.')} "
                  f"on {torch.get_num_threads()} threads")


def host_sync_free(learner: Learner, batch) -> bool | None:
    """Whether one update runs without a device-to-host sync (CUDA only; None on CPU)."""
    if learner.device.type != "cuda":
        return None
    torch.cuda.synchronize(learner.device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        learner.update(batch)
        return True
    except RuntimeError:
        return False
    finally:
        torch.cuda.set_sync_debug_mode("default")


def model_flops_per_update(learner: Learner, batch_size: int) -> float:
    """Transformer FLOPs of one update (6N per token + attention; critic MLP left out).

    Under odt_td3 the transformer's forward+backward runs on every
    actor_update_interval-th batch and the target transformer's forward (1/3 of it) on
    every batch.
    """
    flops = learner.model.flops_per_window() * batch_size
    if learner.objective.kind == "odt_td3":
        flops *= 1 / learner.objective.actor_update_interval + 1 / 3
    return flops


def _timed_updates(learner: Learner, batch, seconds: float, device) -> tuple[int, float]:
    updates, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or updates < 1:
        learner.update(batch)
        updates += 1
    _sync(device)
    return updates, time.perf_counter() - start


def measure(name: str, kind: str, paths: list[str], seconds: float, rounds: int,
            device) -> list[dict]:
    """One row per path. The paths' learners are built and warmed up first, then timed
    in `rounds` interleaved turns of seconds / rounds each, so load that comes and goes
    on a shared machine falls on every path alike."""
    model_cfg, batch_size = CONFIGS[name]
    learners, rows = {}, {}
    for path in paths:
        compute = PATHS[path]
        rss_before = rss_mib()
        learner = Learner(model_cfg, ObjectiveConfig(kind=kind),
                          OptimConfig(batch_size=batch_size, warmup_steps=10), device, compute)
        batch = random_batch(learner.model_cfg, batch_size, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        # Under odt_td3 a full actor cycle, so both branches are warm (compiled: two).
        for _ in range(4 if learner.compiled else 2):
            learner.update(batch)
        _sync(device)
        warmup_s = time.perf_counter() - t0
        learners[path] = (learner, batch)
        rows[path] = {
            "benchmark": "learner",
            "config": name,
            "objective": kind,
            "path": path,
            "bf16": learner.bf16,
            "compiled": learner.compiled,
            "fused_optimizers": learner.fused,
            "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "threads": torch.get_num_threads(),
            "batch_size": batch_size,
            "context_len": model_cfg.context_len,
            "params": learner.model.num_params(),
            "warmup_s": round(warmup_s, 2),
            "host_sync_free": host_sync_free(learner, batch),
            # Filled in after the timed rounds: the NaN/inf guard's reads per update.
            "host_reads_per_update": None,
            "learner_rss_mib": round(rss_mib() - rss_before, 1),
        }
        if device.type == "cuda":
            rows[path]["peak_device_memory_mib"] = round(
                torch.cuda.max_memory_allocated(device) / 2**20, 1)
    totals = {path: [0, 0.0] for path in paths}
    rss_start = rss_mib()
    for _ in range(rounds):
        for path in paths:
            learner, batch = learners[path]
            updates, elapsed = _timed_updates(learner, batch, seconds / rounds, device)
            totals[path][0] += updates
            totals[path][1] += elapsed
    rss_end = rss_mib()
    peak, peak_source = device_peak_flops(device, bf16=False)
    peak_bf16, _ = device_peak_flops(device, bf16=True)
    eager = None
    for path in paths:
        learner, _ = learners[path]
        updates, elapsed = totals[path]
        achieved = model_flops_per_update(learner, batch_size) * updates / elapsed
        # CPU: the fp32 matmul peak (bf16 matmuls are no faster here, see peak_bf16);
        # CUDA: the datasheet peak of the path's precision.
        path_peak = peak_bf16 if learner.bf16 and device.type == "cuda" else peak
        row = rows[path]
        row.update({
            "updates": updates,
            "seconds": round(elapsed, 2),
            "updates_per_s": round(updates / elapsed, 3),
            "host_reads_per_update": round(
                learner.host_reads / max(learner.step + learner.skipped, 1), 3),
            "model_tflops_per_s": round(achieved / 1e12, 5),
            "peak_tflops_per_s": None if path_peak is None else round(path_peak / 1e12, 4),
            "peak_bf16_tflops_per_s": None if peak_bf16 is None else round(peak_bf16 / 1e12, 4),
            "peak_source": peak_source,
            "mfu": None if path_peak is None else round(achieved / path_peak, 4),
            "rss_mib_start": round(rss_start, 1),
            "rss_mib_end": round(rss_end, 1),
            "peak_rss_mib": round(peak_rss_mib(), 1),
        })
        if path == "eager_fp32":
            eager = row["updates_per_s"]
        row["speedup_vs_eager_fp32"] = None if eager is None else round(
            row["updates_per_s"] / eager, 3)
    return [rows[path] for path in paths]


def default_paths(device: torch.device) -> str:
    """CUDA: all of them. CPU: neither compiled paths (compiling took about a minute per
    model and made no update faster) nor bf16 (without bf16 vector units its matmuls
    run ~100x below fp32: minutes per update of the standard model); ask for them
    with --paths."""
    if device.type == "cuda":
        return "eager_fp32,fused,bf16,compiled,compiled_bf16,auto"
    return "eager_fp32,fused,auto"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="quickstart,standard")
    parser.add_argument("--objectives", default="odt,odt_td3")
    parser.add_argument("--paths", default=None, help="default: per device, see default_paths")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per path")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if args.device == "auto" else args.device)
    args.paths = args.paths or default_paths(device)
    configs = named("configs", args.configs, CONFIGS)
    paths = named("paths", args.paths, PATHS)
    objectives = named("objectives", args.objectives, OBJECTIVES)
    for name in configs:
        for kind in objectives:
            for row in measure(name, kind, paths, args.seconds, args.rounds, device):
                row["machine"] = platform.machine()
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
