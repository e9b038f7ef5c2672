"""launch.ray on a two-node Ray cluster started on this machine."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
import ray  # the [ray] extra, which `make test` installs
from common import tiny_config
from ray.cluster_utils import Cluster

from launch.presets import ActorConfig
from launch.program import run_roles
from launch.ray import run_ray
from learner.checkpoint import load_checkpoint
from learner.config import ObjectiveConfig
from learner.tensorboard import read_scalars


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    cluster.add_node(num_cpus=3)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_actors_spread_over_nodes_and_a_killed_actor_is_restarted(
        cluster, random_dataset, tiny_checkpoint, tmp_path):
    data, checkpoint = random_dataset, tiny_checkpoint
    # A preset whose context length differs from the checkpoint's: the run takes the
    # checkpoint's network, as launch.local does.
    cfg = replace(tiny_config(env_steps=600), objective=ObjectiveConfig(kind="odt_td3"),
                  actor=ActorConfig(num_actors=2, envs_per_actor=2))
    checkpoint_len = load_checkpoint(checkpoint)["model_config"]["context_len"]
    cfg = replace(cfg, model=replace(cfg.model, context_len=checkpoint_len + 3))
    placed = {}

    def on_started(handles):
        nodes = ray.get([handles[f"actor_{i}"].node.remote() for i in range(2)], timeout=300)
        placed["nodes"] = {node_id for node_id, _ in nodes}
        # Let actor_0 write some experience, then kill its process without warning.
        deadline = time.monotonic() + 300
        while not read_scalars(tmp_path / "actor_0").get("actor/episode_return"):
            assert time.monotonic() < deadline, "actor_0 wrote no episode"
            time.sleep(1.0)
        ray.kill(handles["actor_0"], no_restart=False)

    summary = run_ray(cfg, checkpoint, tmp_path, address=cluster.address,
                      dataset_path=str(data), status=False, on_started=on_started)
    assert len(placed["nodes"]) == 2, "actors were not spread over both nodes"
    starts = (tmp_path / "actor_0" / "starts.log").read_text().splitlines()
    assert len(starts) >= 2, "the killed actor was not restarted"
    assert summary.env_steps >= cfg.finetune.env_steps
    assert summary.learner_checkpoint.is_file()
    assert "eval/return" in read_scalars(tmp_path / "evaluator")
    # launch.ray started the run program's roles (each writes its starts.log).
    started = {path.parent.name for path in tmp_path.glob("*/starts.log")}
    assert started == {role.name for role in run_roles(cfg.actor.num_actors)}
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"]["context_len"] == checkpoint_len
