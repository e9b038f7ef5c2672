"""Online fine-tuning with real processes, a real Reverb server on 127.0.0.1 and envpool."""

from __future__ import annotations

# isort: off
from replay import _reverb  # noqa: F401  (reverb/TF before torch)
from replay.params import ParamsPuller, publish_params
from replay.tables import ReplaySpec, start_server

# isort: on
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import psutil
import pytest
import torch
from common import ENV, REPO, tiny_config

from actors.actor import Actor
from actors.context import BatchedPolicy
from actors.envs import VectorEnv
from launch.local import run_inline, run_local
from launch.pipeline import pretrain, pretrain_critic
from launch.program import run_roles
from learner.checkpoint import load_checkpoint
from learner.config import ObjectiveConfig, OptimConfig
from learner.finetune import learner_from_checkpoint
from learner.objectives import OBJECTIVES, get_objective
from learner.tensorboard import read_scalars
from models import ModelConfig
from replay.datasets import load_dataset

ONLINE_OBJECTIVES = [kind for kind in OBJECTIVES if get_objective(kind).online
                     and "decision_transformer" in get_objective(kind).model_kinds]
"""The objectives a Decision Transformer fine-tunes with (the runs here use one)."""


def role_processes(parent: psutil.Process) -> list[psutil.Process]:
    """Role processes started by the launcher: the children of the forkserver they fork
    from (`launch.supervisor.role_context`), which is itself a child of `parent`."""
    roles = []
    for process in parent.children(recursive=True):
        try:
            if process.ppid() != parent.pid and "forkserver" in " ".join(process.cmdline()):
                roles.append(process)
        except psutil.NoSuchProcess:
            pass
    return roles


STREAM_AHEAD_BATCHES = 8
"""Batches a learner's stream may have sampled beyond its updates when it stops: Reverb's
in-flight samples (2 batches), tf.data's prefetch (2), the reader's queue (2), the batch
the reader holds while that queue is full, and the batch being handed over. The stop
comes at least 0.5 s after the samples are owed, in which the learner uses some."""


def assert_owed_updates_made(cfg, summary) -> None:
    """The run made `updates_per_env_step` updates per environment step, although the
    actors ran up to `tolerance_steps` ahead of the learner (`wait_for_owed_updates`)."""
    owed = summary.env_steps * cfg.replay.updates_per_env_step
    assert cfg.replay.tolerance_steps > STREAM_AHEAD_BATCHES  # so a run that stops short fails
    assert owed - STREAM_AHEAD_BATCHES <= summary.updates <= owed + cfg.replay.tolerance_steps


@pytest.fixture(scope="module")
def pretrained(random_dataset, tiny_checkpoint, tmp_path_factory):
    """(dataset, checkpoint, a folder of this module's own)."""
    return random_dataset, tiny_checkpoint, tmp_path_factory.mktemp("ft")


@pytest.fixture(scope="module")
def local_runs(pretrained, tmp_path_factory):
    """One short local fine-tuning run per objective, from the same checkpoint."""
    data, checkpoint, _ = pretrained
    me = psutil.Process()
    runs = {}
    for kind in ONLINE_OBJECTIVES:
        cfg = replace(tiny_config(), objective=ObjectiveConfig(kind=kind))
        run_dir = tmp_path_factory.mktemp(kind)
        summary = run_local(cfg, checkpoint, run_dir, dataset_path=str(data), status=False)
        runs[kind] = (cfg, run_dir, summary, role_processes(me))
    return runs


@pytest.mark.parametrize("kind", ONLINE_OBJECTIVES)
@pytest.mark.slow
def test_local_run_with_two_actors_finishes_and_logs(local_runs, kind):
    """Every role runs as its own process; the run stops at the budget, leaves no child
    behind, and its event files hold the evaluation, actor and loss tags."""
    cfg, tmp_path, summary, left_behind = local_runs[kind]
    assert not left_behind
    # launch.local started the run program's roles, no more and no fewer.
    started = json.loads((tmp_path / "processes.json").read_text())
    assert set(started) == {role.name for role in run_roles(cfg.actor.num_actors)}
    assert not [name for name, role in started.items() if psutil.pid_exists(role["pid"])]
    assert summary.env_steps >= cfg.finetune.env_steps
    assert_owed_updates_made(cfg, summary)
    assert np.isfinite(summary.final_return)
    evaluator = read_scalars(tmp_path / "evaluator")
    assert "eval/return" in evaluator
    steps = [s for s, _ in evaluator["eval/return"]]
    assert steps == sorted(steps) and steps[-1] >= cfg.finetune.env_steps
    for i in range(2):
        assert "actor/episode_return" in read_scalars(tmp_path / f"actor_{i}")
    learner = read_scalars(tmp_path / "learner")
    loss_tags = {"odt": "loss/nll", "odt_td3": "loss/critic", "rcbc": "loss/supervised"}[kind]
    for tag in (loss_tags, "throughput/updates_per_s", "throughput/sample_wait_fraction",
                "replay/size", "replay/env_steps"):
        assert tag in learner, tag
    # The learner's samples per env step stay within the configured ratio and tolerance.
    spi = cfg.replay.updates_per_env_step * cfg.optim.batch_size
    tolerance = cfg.replay.tolerance_steps * spi
    for (_, samples), (_, env_steps) in zip(learner["replay/samples"], learner["replay/env_steps"]):
        assert samples <= env_steps * spi + tolerance + cfg.optim.batch_size * 4


@pytest.mark.slow
def test_inline_mode_runs_the_same_program_in_one_process(local_runs, tmp_path):
    """launch.local's inline mode (every role a thread of this process, one actor) stops
    at the budget with learner updates, starts no process, and logs the same tags as
    the process mode's run of the same config."""
    cfg, process_dir, _, _ = local_runs["odt"]
    started = json.loads((process_dir / "finetune.json").read_text())
    me = psutil.Process()
    summary = run_inline(cfg, started["checkpoint"], tmp_path, dataset_path=started["dataset"],
                         status=False)
    assert not role_processes(me)
    assert summary.env_steps >= cfg.finetune.env_steps
    assert_owed_updates_made(cfg, summary)
    # An actor writes its timing summary when it stops cleanly. Inline, the actors stop
    # before the learner, so they always do; a process-mode actor held by the rate
    # limiter once the learner has stopped is killed instead, and then writes none.
    summary_tags = {"actor/inference_ms_per_step", "actor/env_ms_per_step",
                    "actor/write_ms_per_step", "actor/busy_fraction"}
    assert summary_tags <= set(read_scalars(tmp_path / "actor_0"))
    for role in ("learner", "actor_0", "evaluator"):
        inline_tags = set(read_scalars(tmp_path / role)) - summary_tags
        process_tags = set(read_scalars(process_dir / role)) - summary_tags
        assert inline_tags == process_tags, (role, inline_tags ^ process_tags)
    assert not (tmp_path / "actor_1").exists()


@pytest.mark.slow
def test_weights_published_to_reverb_reach_an_actor_and_change_its_actions():
    spec = ReplaySpec(observation_shape=(4,), action_shape=(1,), context_len=5,
                      capacity_items=100, samples_per_insert=1.0, tolerance_steps=10)
    server = start_server(spec)
    address = f"localhost:{server.port}"
    try:
        torch.manual_seed(0)
        cfg = ModelConfig(state_dim=4, act_dim=1, context_len=5, embed_dim=16, n_layer=1,
                          n_head=1, ffn_dim=32, dropout=0.0)
        from models import DecisionTransformer

        acting = DecisionTransformer(cfg, head="deterministic").eval()
        published = DecisionTransformer(cfg, head="deterministic").eval()
        arrays = {k: v.numpy().copy() for k, v in published.state_dict().items()}
        expected = {k: (v.shape, np.dtype(np.float32)) for k, v in arrays.items()}
        publish_params(server.localhost_client(), arrays, step=42)
        puller = ParamsPuller(address, expected, interval_s=0.05)
        puller.start()

        class Sink:
            def write(self, steps):
                return len(steps)

        env = VectorEnv(ENV, 2, 0)
        load = (lambda a: acting.load_state_dict({k: torch.from_numpy(v) for k, v in a.items()}))
        actor = Actor(env, BatchedPolicy(acting, mode="mean"), Sink(), target_return=1000.0,
                      context_len=5, params=puller, load_weights=load)
        before = actor.policy.act(actor.ctx).copy()
        import time

        deadline = time.monotonic() + 120  # a hang guard
        while actor.stats.weights_step != 42 and time.monotonic() < deadline:
            actor.run(lambda: False, max_env_steps=actor.stats.env_steps + 2)
        puller.stop()
        env.close()
        assert actor.stats.weights_step == 42
        after = BatchedPolicy(acting, mode="mean").act(actor.ctx)
        reference = BatchedPolicy(published, mode="mean").act(actor.ctx)
        np.testing.assert_allclose(after, reference, atol=1e-6)
        assert not np.allclose(before, after, atol=1e-4)
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["odt_td3", "rcbc"])
def test_odt_checkpoint_starts_a_deterministic_objective_with_its_policy(pretrained, kind):
    """A Gaussian checkpoint starts ODT+TD3 or return-conditioned BC: tanh(mu) becomes the
    deterministic action, the update counter and the warm-up position carry over."""
    _, checkpoint, _ = pretrained
    payload = load_checkpoint(checkpoint)
    optim = OptimConfig(lr=1e-3, warmup_steps=100, batch_size=16)
    learner = learner_from_checkpoint(payload, ObjectiveConfig(kind=kind), optim, "cpu")
    assert learner.step == payload["learner"]["step"] == 20
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 21 / 100)
    gaussian = learner_from_checkpoint(payload, ObjectiveConfig(kind="odt"), optim, "cpu")
    x = (torch.randn(2, 3, 4), torch.rand(2, 3, 1) * 2 - 1, torch.full((2, 3), 500.0),
         torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3))
    with torch.no_grad():
        torch.testing.assert_close(learner.model(*x).mode, gaussian.model(*x).mode)


def test_pretrain_critic_gives_an_odt_td3_checkpoint_with_a_fitted_critic(pretrained):
    """pretrain_critic keeps the checkpoint's policy (tanh(mu)), adds a critic trained on
    the offline data (its TD loss falls) and target networks equal to the trained ones;
    fine-tuning loads it as a whole odt_td3 learner."""
    data, checkpoint, root = pretrained
    cfg = replace(tiny_config(), objective=ObjectiveConfig(kind="odt_td3",
                                                           critic_pretrain_updates=200))
    out = pretrain_critic(cfg, load_dataset(data), checkpoint, root / "critic")
    payload = load_checkpoint(out)
    assert payload["objective"]["kind"] == "odt_td3"
    loss = [v for _, v in read_scalars(root / "critic" / "pretrain_critic")["critic_pretrain/loss"]]
    assert len(loss) == 20 and loss[-1] < 0.5 * loss[0]
    learner = learner_from_checkpoint(payload, cfg.objective, cfg.optim, "cpu")
    start = learner_from_checkpoint(load_checkpoint(checkpoint), cfg.objective, cfg.optim, "cpu")
    for name, value in start.model.state_dict().items():
        torch.testing.assert_close(learner.model.state_dict()[name], value)
        torch.testing.assert_close(learner.model_target.state_dict()[name], value)
    assert any(not torch.equal(a, b) for a, b in
               zip(learner.critic.parameters(), start.critic.parameters()))


def test_pretraining_runs_on_compute_cpu_threads(pretrained, tmp_path):
    """Pretraining and critic pretraining run `compute.cpu_threads` torch threads on the
    CPU when it is set, as fine-tuning does: benchmarks that pretrain side by side would
    otherwise each spin a thread on every core. At 0 they keep the caller's count."""
    data, checkpoint, _ = pretrained
    base = tiny_config()
    cfg = replace(base, objective=ObjectiveConfig(kind="odt_td3", critic_pretrain_updates=10),
                  pretrain=replace(base.pretrain, updates=10, eval_every=0),
                  compute=replace(base.compute, cpu_threads=1))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        pretrain(cfg, load_dataset(data), tmp_path / "offline")
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        pretrain_critic(cfg, load_dataset(data), checkpoint, tmp_path / "critic")
        assert torch.get_num_threads() == 1
        # At 0 the caller's count stays (conftest runs the tests on one thread).
        torch.set_num_threads(2)
        pretrain(replace(cfg, compute=base.compute), load_dataset(data), tmp_path / "default")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_odt_td3_pretraining_syncs_targets_and_pretrains_the_critic(pretrained, tmp_path):
    """Pretraining under odt_td3 ends with the target transformer equal to the trained one
    (TD targets must not come from the untrained network) and a pretrained critic."""
    data, _, _ = pretrained
    cfg = replace(tiny_config(), objective=ObjectiveConfig(kind="odt_td3",
                                                           critic_pretrain_updates=30))
    result = pretrain(cfg, load_dataset(data), tmp_path)
    state = load_checkpoint(result.checkpoint)["learner"]
    for name, value in state["model"].items():
        torch.testing.assert_close(state["model_target"][name], value)
    assert "critic_pretrain/loss" in read_scalars(tmp_path / "pretrain")


@pytest.mark.slow
def test_local_cli_refuses_a_missing_checkpoint(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "launch.local", "--checkpoint=/nope.pt",
                           f"--logdir={tmp_path / 'r'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "--checkpoint=/nope.pt: no such file" in proc.stderr


@pytest.mark.slow
def test_report_cli_compares_runs(local_runs, tmp_path):
    """launch.report over the two objectives' runs: one PNG, one row per run."""
    dirs = ",".join(str(local_runs[k][1]) for k in ("odt", "odt_td3"))
    proc = subprocess.run([sys.executable, "-m", "launch.report", f"--logdir={dirs}",
                           f"--out={tmp_path / 'rep'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "rep" / "curves.png").stat().st_size > 1000
    table = (tmp_path / "rep" / "summary.md").read_text()
    assert "| run | objective |" in table
    assert "| odt |" in table and "| odt_td3 |" in table


@pytest.mark.slow
def test_main_job_runs_collect_pretrain_finetune(tmp_path):
    """`make run`'s command end to end, tiny: every stage leaves its logs and a summary."""
    run = tmp_path / "main"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.main", "--preset=quickstart", f"--logdir={run}",
         "--collect_episodes=20", "--pretrain_updates=20", "--critic_pretrain_updates=20",
         "--eval_episodes=2",
         "--env_steps=200", "--envs_per_actor=2"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in ("pretrained eval return", "fine-tuned eval return", "online env steps",
                "online updates", "wall time"):
        assert row in proc.stdout, row
    for role in ("dataset", "pretrain", "learner", "actor_0", "actor_1", "evaluator"):
        assert (run / role).is_dir(), role
    assert "eval/return" in read_scalars(run / "evaluator")
