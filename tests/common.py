"""Constants and configs the test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from launch.presets import FinetuneConfig, PretrainConfig, get_preset

ENV = "InvertedPendulum-v4"
REPO = Path(__file__).resolve().parents[1]


def tiny_config(**finetune):
    """The quickstart preset with a model small enough to pretrain in seconds, 2
    evaluation episodes and a 300-step fine-tuning budget (override any
    `FinetuneConfig` field by keyword)."""
    cfg = get_preset("quickstart")
    return replace(
        cfg,
        model=replace(cfg.model, embed_dim=16, n_layer=1, n_head=1, ffn_dim=32),
        optim=replace(cfg.optim, batch_size=16, warmup_steps=10),
        pretrain=PretrainConfig(updates=20, log_every=10, eval_every=0, checkpoint_every=20),
        eval=replace(cfg.eval, episodes=2),
        replay=replace(cfg.replay, tolerance_steps=20),
        finetune=FinetuneConfig(**{"env_steps": 300, "publish_every": 5, "log_every": 5,
                                   "checkpoint_every": 50, "eval_every_env_steps": 150,
                                   **finetune}),
    )


def wait_until(condition: Callable[[], bool], timeout_s: float = 60.0, what: str = "") -> None:
    """Poll `condition` until it holds; fail the test after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what or condition}")
        time.sleep(0.005)
