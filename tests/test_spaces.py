"""Discrete actions and uint8 frames on real envpool tasks: CartPole-v1 (Discrete(2),
float observations) and Pong-v5 (Discrete(6), 4 stacked 84x84 uint8 frames), from the
env spec through acting, recording, and the whole pipeline."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from actors.collect import collect
from actors.context import BatchedPolicy, ContextBuffer
from actors.envs import VectorEnv, env_spec
from launch.pipeline import check_dataset_fits
from launch.presets import get_preset
from learner.objectives import get_objective
from learner.tensorboard import read_scalars
from models import build_model
from replay.datasets import DatasetError, load_dataset
from tests.common import REPO


def tiny(model_cfg):
    return replace(model_cfg, embed_dim=16, n_layer=1, n_head=1, ffn_dim=32, context_len=4)


def test_env_specs_describe_discrete_actions_and_uint8_frames():
    cartpole, pong = env_spec("CartPole-v1"), env_spec("Pong-v5")
    assert cartpole.discrete and cartpole.num_actions == 2 and cartpole.action_shape == ()
    assert cartpole.observation_dtype == "float32" and cartpole.observation_shape == (4,)
    assert cartpole.action_space == "Discrete(2)" and cartpole.action_kind == "discrete"
    assert pong.num_actions == 6 and pong.observation_dtype == "uint8"
    assert pong.observation_shape == (4, 84, 84)
    hopper = env_spec("Hopper-v4")
    assert not hopper.discrete and hopper.action_kind == "continuous" and hopper.act_dim == 3


def test_frames_stay_uint8_from_the_env_to_the_model_input():
    spec = env_spec("Pong-v5")
    env = VectorEnv("Pong-v5", 2, seed=0)
    try:
        first = env.reset()
        result = env.step(np.array([2, 3], np.int32))
    finally:
        env.close()
    assert first.dtype == np.uint8 and result.observations.dtype == np.uint8
    ctx = ContextBuffer.for_env(2, 4, spec)
    ctx.start(np.ones(2, bool), first, 21.0)
    ctx.record_actions(np.array([2, 3], np.int32))
    ctx.advance(np.ones(2, bool), result.observations, result.rewards)
    assert ctx.states.dtype == np.uint8 and ctx.actions.dtype == np.int64
    np.testing.assert_array_equal(ctx.states[:, -1], result.observations)
    np.testing.assert_array_equal(ctx.actions[:, -2], [2, 3])
    model = build_model(tiny(get_preset("pong").model), head="categorical")
    for mode in ("mean", "sample"):
        actions = BatchedPolicy(model, mode=mode, seed=1).act(ctx)
        assert actions.dtype == np.int32 and actions.shape == (2,)
        assert ((actions >= 0) & (actions < 6)).all()


def test_the_greedy_action_is_the_most_likely_one_and_samples_follow_the_policy():
    spec = env_spec("CartPole-v1")
    torch.manual_seed(0)
    model = build_model(tiny(get_preset("cartpole").model), head="categorical").eval()
    ctx = ContextBuffer.for_env(1, 4, spec)
    ctx.start(np.ones(1, bool), np.array([[0.01, 0.2, -0.03, 0.1]], np.float32), 500.0)
    with torch.no_grad():
        logits = model(*(torch.from_numpy(a) for a in (
            ctx.states, ctx.actions, ctx.returns_to_go, ctx.timesteps, ctx.mask))).logits[0, -1]
    probs = logits.softmax(-1).numpy()
    assert BatchedPolicy(model, mode="mean").act(ctx)[0] == int(np.argmax(probs))
    sampler = BatchedPolicy(model, mode="sample", seed=4)
    draws = np.array([sampler.act(ctx)[0] for _ in range(2000)])
    # Two actions: the sampled share of action 1 within 4 binomial standard deviations.
    assert abs(draws.mean() - probs[1]) < 4 * np.sqrt(probs[1] * probs[0] / 2000) + 1e-3


def test_recording_cartpole_writes_discrete_actions_that_fit_the_env(tmp_path):
    spec = env_spec("CartPole-v1")
    path, episodes = collect("CartPole-v1", "random", tmp_path / "cp", episodes=6,
                             num_envs=3, seed=2)
    dataset = load_dataset(path)
    assert dataset.discrete_actions and len(dataset.episodes) == 6
    assert {int(a) for ep in dataset.episodes for a in ep.actions} <= {0, 1}
    for read, recorded in zip(dataset.episodes, episodes):
        np.testing.assert_array_equal(read.actions, recorded.actions)
    check_dataset_fits(dataset, spec)
    with pytest.raises(DatasetError, match="actions are discrete"):
        check_dataset_fits(dataset, env_spec("InvertedPendulum-v4"))


def test_td3_refuses_discrete_actions_naming_itself_and_the_space():
    with pytest.raises(ValueError, match=r"'odt_td3' trains continuous actions; the "
                                         r"environment's action space is Discrete\(2\)"):
        get_objective("odt_td3").head_for("discrete", "Discrete(2)")
    assert get_objective("odt").head_for("discrete") == "categorical"
    assert get_objective("rcbc").head_for("discrete") == "categorical"


def run_main(*args):
    return subprocess.run([sys.executable, "-m", "launch.main", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_td3_on_cartpole_exits_2_before_anything_starts(tmp_path):
    proc = run_main("--preset=cartpole", "--objective=odt_td3", f"--logdir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr
    assert ("objective.kind='odt_td3' trains continuous actions; the environment's action "
            "space is Discrete(2) (CartPole-v1)") in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cartpole_runs_the_whole_pipeline_with_two_actor_processes(tmp_path):
    logdir = tmp_path / "cartpole"
    proc = run_main("--preset=cartpole", f"--logdir={logdir}", "--collect_episodes=30",
                    "--pretrain_updates=30", "--env_steps=400", "--eval_episodes=2",
                    "--num_actors=2", "--envs_per_actor=2", "--set=finetune.log_every=1",
                    # The actors wait for the learner's updates within 50 steps, so a
                    # 400-step run trains however slowly the learner starts.
                    "--set=replay.tolerance_steps=50")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in ("dataset return", "pretrained eval return", "fine-tuned eval return"):
        assert row in proc.stdout
    assert (logdir / "actor_0").is_dir() and (logdir / "actor_1").is_dir()
    learner = read_scalars(logdir / "learner")
    assert "loss/nll" in learner and "policy/entropy" in learner
    assert "eval/return" in read_scalars(logdir / "evaluator")


@pytest.mark.slow
def test_pong_runs_collect_pretrain_and_fine_tune_on_frames(tmp_path):
    logdir = tmp_path / "pong"
    proc = run_main("--preset=pong", f"--logdir={logdir}", "--collect_episodes=1",
                    "--pretrain_updates=4", "--env_steps=150", "--eval_episodes=1",
                    "--mode=inline", "--set=finetune.log_every=1",
                    "--set=replay.tolerance_steps=20")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fine-tuned eval return" in proc.stdout
    dataset = load_dataset(logdir / "dataset")
    assert dataset.observation_dtype == np.uint8 and dataset.discrete_actions
    assert "loss/nll" in read_scalars(logdir / "learner")
