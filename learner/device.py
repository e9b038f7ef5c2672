"""Where the learner runs, and moving numpy windows there."""

from __future__ import annotations

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when present, else the CPU; any other name is torch's own."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
