"""Checkpoints: one file of tensors and plain values, loaded with weights_only=True.

A checkpoint holds the learner state (model, optimizers, scheduler, temperature,
critic and targets under ODT+TD3), the model, objective and optimiser configs, the
counters, and the resolved run config. Writes go to a temp file in the same folder
and are renamed into place, so a crash mid-write never breaks the latest checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from learner.config import ObjectiveConfig, OptimConfig
from models import RETIRED_MODEL_FIELDS, CriticConfig, ModelConfig, build_model

FORMAT = "onramp-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit what it is loaded into."""


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Atomically write `payload` (plain values and tensors) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def learner_payload(learner, **extra) -> dict:
    """What a checkpoint of `learner` holds; `extra` adds counters and the run config."""
    return {
        "model_config": asdict(learner.model_cfg),
        "objective": asdict(learner.objective),
        "optim": asdict(learner.optim),
        "learner": learner.state_dict(),
        **extra,
    }


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(
            f"{path}: not a readable onramp checkpoint (corrupt or truncated, or it holds "
            f"objects other than tensors and plain values, which are never unpickled)"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an onramp checkpoint (format {FORMAT!r} expected)")
    return payload


def model_config_from(payload: dict) -> ModelConfig:
    values = {k: v for k, v in payload["model_config"].items() if k not in RETIRED_MODEL_FIELDS}
    return ModelConfig(**values)


def head_of(model_state: dict) -> str:
    """The action head a model state dict holds: 'gaussian', 'categorical' or
    'deterministic'."""
    if "action_head.mu.weight" in model_state:
        return "gaussian"
    return "categorical" if "action_head.logits.weight" in model_state else "deterministic"


def objective_from(payload: dict) -> ObjectiveConfig:
    values = dict(payload["objective"])
    values["critic"] = CriticConfig(**values["critic"])
    return ObjectiveConfig(**values)


def optim_from(payload: dict) -> OptimConfig:
    return OptimConfig(**payload["optim"])


def convert_policy_head(model_state: dict, policy: str) -> dict:
    """Make a model state dict fit the `policy` head.

    A Gaussian head's mode is tanh(mu), which is exactly a deterministic head with
    mu's weights, so one pretrained checkpoint serves both objectives.
    """
    state = dict(model_state)
    has_gaussian = "action_head.mu.weight" in state
    if policy == "deterministic" and has_gaussian:
        for kind in ("weight", "bias"):
            state[f"action_head.linear.{kind}"] = state.pop(f"action_head.mu.{kind}")
            state.pop(f"action_head.log_std.{kind}")
    elif policy == "gaussian" and not has_gaussian:
        raise CheckpointError(
            "a deterministic-head checkpoint cannot start the 'odt' objective, which needs "
            "the Gaussian head's log-std; pretrain with --objective=odt"
        )
    return state


def load_policy(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """The model of a checkpoint, in eval mode, and the checkpoint payload."""
    payload = load_checkpoint(path, map_location=device)
    cfg = model_config_from(payload)
    model = build_model(cfg, head=head_of(payload["learner"]["model"]))
    try:
        model.load_state_dict(payload["learner"]["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit its model config ({exc})") from exc
    return model.to(device).eval(), payload
