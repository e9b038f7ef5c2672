"""Where the learner runs, and moving numpy windows there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU lists a bf16 instruction set (AVX512_BF16 or AMX-BF16) among its
    flags in `cpuinfo`; False where the file is missing (not Linux) or lists neither."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return any(flag in line.split() for flag in CPU_BF16_FLAGS)
    return False


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when present, else the CPU; any other name is torch's own."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_cpu_threads(device: torch.device, compute, learners: int = 1) -> None:
    """On a CPU `device`, sets torch's intra-op threads to
    `compute.learner_cpu_threads(learners=learners)` (`compute.cpu_threads`, or the
    host's cores shared by `learners` processes); on any other device, nothing."""
    if device.type == "cpu":
        torch.set_num_threads(compute.learner_cpu_threads(learners=learners))


def set_cpu_threads_if_asked(device: torch.device, compute) -> None:
    """For work that runs in its caller's process (pretraining, the multi-game pipeline,
    a benchmark's seed, a test): on a CPU `device`, sets torch's intra-op threads to
    `compute.cpu_threads` when that names a count; at 0 the process keeps its own
    (torch's default: every core)."""
    if compute.cpu_threads > 0:
        set_cpu_threads(device, compute)


def to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """numpy windows -> tensors on `device`; integer timesteps become int64 for the
    embedding. Read-only arrays (Reverb hands those out) are copied first."""
    out = {}
    for key, value in batch.items():
        if not value.flags.writeable:
            value = value.copy()
        tensor = torch.from_numpy(value)
        if key == "timesteps":
            tensor = tensor.long()
        out[key] = tensor.to(device, non_blocking=True)
    return out
