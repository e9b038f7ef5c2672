"""Shared pytest set-up: one thread for torch, and the session's recorded dataset and
tiny pretrained checkpoint, made once for every test module that needs them."""

from dataclasses import replace

import pytest
import torch

# The tests use tiny models; one intra-op thread is faster for them than several, and
# avoids OpenMP threads spinning against other processes on small CI machines.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def random_dataset(tmp_path_factory):
    """30 episodes of a uniform-random policy on InvertedPendulum-v4 (Minari folder)."""
    from common import ENV

    from actors.collect import collect

    path, _ = collect(ENV, "random", tmp_path_factory.mktemp("random") / "data", episodes=30,
                      num_envs=10)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(random_dataset, tmp_path_factory):
    """A Gaussian-head (odt) checkpoint of `common.tiny_config`'s model, pretrained for 20
    updates on `random_dataset`."""
    from common import tiny_config

    from launch.pipeline import pretrain
    from learner.config import ObjectiveConfig
    from replay.datasets import load_dataset

    cfg = replace(tiny_config(), objective=ObjectiveConfig(kind="odt"))
    return pretrain(cfg, load_dataset(random_dataset), tmp_path_factory.mktemp("tiny")).checkpoint
