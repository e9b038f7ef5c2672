"""Faults a fine-tuning run must survive: NaN losses, killed processes, signals, restarts.

The process tests start the real launcher (`python -m launch.local`) with a real
Reverb server, envpool actors and a tiny model, then kill or signal its processes.
"""

from __future__ import annotations

# isort: off
from replay import _reverb  # noqa: F401  (reverb/TF before torch)
from replay.stream import window_batches
from replay.tables import (
    ReplaySpec,
    check_restored,
    checkpoint_replay,
    has_checkpoint,
    start_server,
    table_counts,
)
from replay.writer import EpisodeWriter

# isort: on
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from common import REPO, tiny_config

from bench.learner import random_batch
from launch.flags import apply_setting
from launch.presets import RunConfig, get_preset
from learner.checkpoint import load_checkpoint, save_checkpoint
from learner.config import ObjectiveConfig
from learner.finetune import finetune_loop, learner_from_checkpoint, save_learner
from learner.learner import Learner, NonFiniteLoss
from learner.tensorboard import SummaryWriter, read_events, read_scalars
from replay.windows import flatten_episode


def tiny_learner(kind: str) -> Learner:
    cfg = tiny_config()
    return Learner(cfg.model, ObjectiveConfig(kind=kind), cfg.optim)


# ---- NaN / inf losses ------------------------------------------------------------


# (learner steps, skipped updates) at the stop. Under odt_td3 the lone bad batch falls on
# a critic-only batch: the critic skips it on the device, the step counts, and it is not
# among the skipped updates (which need a host read); the run of bad batches then falls
# on actor batches, each skipped whole.
EXPECTED = {"odt": (8, 4), "odt_td3": (9, 3)}


@pytest.mark.parametrize("kind", ["odt", "odt_td3"])
def test_nonfinite_updates_are_skipped_counted_logged_and_stop_the_run(tmp_path, kind):
    learner = tiny_learner(kind)
    steps, skipped_updates = EXPECTED[kind]
    good = [{k: v.numpy() for k, v in random_batch(learner.model_cfg, 8, "cpu", seed=i).items()}
            for i in range(4)]
    bad = dict(good[0])
    bad["observations"] = np.full_like(bad["observations"], np.nan)
    checkpoint = tmp_path / "checkpoint.pt"
    saved_steps = []

    def save():
        save_learner(checkpoint, learner)
        saved_steps.append(learner.step)

    def batches():
        yield from good
        yield bad  # one bad batch between good ones is skipped, the run goes on
        yield from good
        while True:
            yield bad

    writer = SummaryWriter(tmp_path / "tb")
    weights_before_bad = {}

    def publish(step, arrays):
        weights_before_bad.update(arrays)

    with pytest.raises(NonFiniteLoss, match="3 updates in a row"):
        finetune_loop(learner, batches(), publish=publish, counters=dict, writer=writer,
                      should_stop=lambda: False, publish_every=1, log_every=100,
                      checkpoint_every=1, checkpoint=save, max_nonfinite_updates=3)
    writer.close()
    assert learner.step == steps and learner.skipped == skipped_updates
    # Every parameter is finite and is what the last good update left.
    for name, value in learner.model.state_dict().items():
        assert torch.isfinite(value).all(), name
        np.testing.assert_array_equal(value.numpy(), weights_before_bad[name])
    if learner.critic is not None:
        for name, value in learner.critic.state_dict().items():
            assert torch.isfinite(value).all(), name
        for state in learner.critic_optimizer.state.values():
            assert all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v))
    # The last checkpoint written is the last good one, and it loads.
    assert saved_steps[-1] == steps
    assert load_checkpoint(checkpoint)["learner"]["step"] == steps
    skipped = read_scalars(tmp_path / "tb")["loss/nonfinite_skipped"]
    assert [v for _, v in skipped] == list(range(1, skipped_updates + 1))


def test_resumed_learner_continues_exactly_like_the_original(tmp_path):
    """Weights, optimizers, targets, counters and the RNG all come back: the updates
    after a resume equal the updates the original learner made."""
    learner = tiny_learner("odt_td3")  # target policy noise draws from torch's RNG
    batches = [random_batch(learner.model_cfg, 8, "cpu", seed=i) for i in range(6)]
    for batch in batches[:3]:
        learner.update(batch)
    save_learner(tmp_path / "c.pt", learner, env_steps=123)
    for batch in batches[3:]:
        learner.update(batch)
    torch.manual_seed(999)  # a resumed process starts from another RNG state
    payload = load_checkpoint(tmp_path / "c.pt")
    resumed = learner_from_checkpoint(payload, learner.objective, learner.optim, "cpu")
    assert resumed.step == 3 and payload["env_steps"] == 123
    for batch in batches[3:]:
        resumed.update(batch)
    for a, b in zip(learner.state_dict()["model"].values(),
                    resumed.state_dict()["model"].values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(learner.critic.parameters(), resumed.critic.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---- TensorBoard across restarts ----------------------------------------------------


def test_purge_step_keeps_resumed_curves_monotonic_like_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with SummaryWriter(tmp_path) as first:
        for step in range(0, 60, 10):
            first.scalar("loss", float(step), step)
    # A resumed process whose last checkpoint was at step 30.
    with SummaryWriter(tmp_path, purge_step=30) as second:
        for step in range(30, 80, 10):
            second.scalar("loss", step + 0.5, step)
    ours = read_scalars(tmp_path)["loss"]
    assert [s for s, _ in ours] == [0, 10, 20, 30, 40, 50, 60, 70]
    assert [v for _, v in ours][3:] == [30.5, 40.5, 50.5, 60.5, 70.5]
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == ours


# ---- config overrides and saved configs -----------------------------------------------


def test_set_overrides_parse_to_the_field_type_and_name_bad_input():
    cfg = get_preset("quickstart")
    cfg = apply_setting(cfg, "finetune.checkpoint_every=20")
    cfg = apply_setting(cfg, "objective.rl_coeff=0.5")
    cfg = apply_setting(cfg, "objective.mask_entropy=false")
    cfg = apply_setting(cfg, "data.path=/data/x.hdf5")
    assert cfg.finetune.checkpoint_every == 20 and cfg.objective.rl_coeff == 0.5
    assert cfg.objective.mask_entropy is False and cfg.data.path == "/data/x.hdf5"
    for item, message in [
        ("finetune.nope=1", "not a config field"),
        ("finetune=1", "a section"),
        ("finetune.checkpoint_every=ten", "not a int"),
        ("objective.mask_entropy=maybe", "not a bool"),
        ("no_equals_sign", "expected dotted.field=value"),
    ]:
        with pytest.raises(ValueError, match=message):
            apply_setting(cfg, item)


def test_saved_config_round_trips_and_unknown_fields_are_named():
    cfg = get_preset("hopper-medium")
    values = json.loads(json.dumps(cfg.to_dict()))
    assert RunConfig.from_dict(values) == cfg
    values["finetune"]["typo_field"] = 1
    with pytest.raises(ValueError, match=r"config\.finetune: unknown field\(s\) typo_field"):
        RunConfig.from_dict(values)


# ---- checkpoint writes -------------------------------------------------------------

_WRITER = """
import sys, torch
from learner.checkpoint import save_checkpoint
big = torch.zeros(48 * 2**20 // 4)
i = 0
while True:
    i += 1
    save_checkpoint(sys.argv[1], {"counter": i, "big": big})
    print(i, flush=True)
"""


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    path = tmp_path / "checkpoint.pt"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"  # one complete checkpoint
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".checkpoint.pt.*")):  # the next write is under way
            assert time.monotonic() < deadline, "no write in progress seen"
            time.sleep(0.001)
        proc.kill()
        proc.wait(10)
    finally:
        proc.kill()
    payload = load_checkpoint(path)
    assert payload["counter"] >= 1 and payload["big"].numel() == 48 * 2**20 // 4
    # The next save replaces it cleanly despite the torn temp file left behind.
    save_checkpoint(path, {"counter": -1})
    assert load_checkpoint(path)["counter"] == -1


# ---- replay restore ------------------------------------------------------------------


def _episode(T, seed):
    rng = np.random.default_rng(seed)
    return flatten_episode(rng.normal(size=(T + 1, 4)), rng.uniform(-1, 1, (T, 1)),
                           np.ones(T), True)


def test_restored_replay_keeps_its_counters_and_serves_the_learner(tmp_path):
    """Reverb restores the rate limiter's counters with the items; the learner must
    be able to sample straight away, and actors to go on inserting."""
    spec = ReplaySpec(observation_shape=(4,), action_shape=(1,), context_len=5,
                      capacity_items=1000, samples_per_insert=2.0, tolerance_steps=10,
                      preload_items=30)
    folder = str(tmp_path / "replay")
    assert not has_checkpoint(folder)
    server = start_server(spec, checkpoint_dir=folder)
    address = f"localhost:{server.port}"
    writer = EpisodeWriter(address, spec)
    for i, T in enumerate((30, 7, 3)):  # a 30-step preload, then 10 online steps
        writer.write(_episode(T, i))
    batches = window_batches(address, spec, 4, rate_limiter_timeout_ms=1000)
    for _ in range(3):
        next(batches)
    del batches
    before = table_counts(address)
    checkpoint_replay(address)
    writer.close()
    server.stop()
    assert has_checkpoint(folder)

    server = start_server(spec, checkpoint_dir=folder)
    address = f"localhost:{server.port}"
    try:
        assert check_restored(address, spec) == before
        # A restored limiter that held the learner back would time out this sample.
        batch = next(window_batches(address, spec, 4, rate_limiter_timeout_ms=30_000))
        assert batch["observations"].shape == (4, 5, 4)
        EpisodeWriter(address, spec).write(_episode(5, 9))
        assert table_counts(address)["inserts"] == before["inserts"] + 5
        # A run directory of another configuration is refused, naming the difference.
        with pytest.raises(ValueError, match="samples_per_insert"):
            check_restored(address, replace(spec, samples_per_insert=4.0))
    finally:
        server.stop()


# ---- the launcher's processes ------------------------------------------------------------

_SETTINGS = [
    "--set=optim.batch_size=16", "--set=replay.tolerance_steps=20",
    "--set=replay.updates_per_env_step=0.25",
    "--set=finetune.publish_every=5", "--set=finetune.log_every=5",
    "--set=finetune.checkpoint_every=20", "--set=finetune.eval_every_env_steps=1000000",
    "--set=finetune.restart_backoff_s=0.5",
]


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


def launch(checkpoint, run_dir, *args, resume=False):
    cmd = [sys.executable, "-m", "launch.local", f"--logdir={run_dir}"]
    cmd += ["--resume"] if resume else [f"--checkpoint={checkpoint}", "--num_actors=2",
                                        "--envs_per_actor=2", "--eval_episodes=1", *_SETTINGS]
    return subprocess.Popen(cmd + list(args), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(predicate, proc, timeout_s=120.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"launcher exited ({proc.returncode}) before {what}:\n{err[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def processes(run_dir):
    try:
        return json.loads((Path(run_dir) / "processes.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def finish(proc, timeout_s=300):
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc.returncode, out, err


def learner_checkpointed(run_dir):
    return lambda: (Path(run_dir) / "learner" / "checkpoint.pt").exists()


def _event_files(role_dir):
    return sorted(Path(role_dir).glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_a_killed_actor_is_restarted_and_logs_on_from_the_run(checkpoint, tmp_path):
    """A SIGKILLed actor is restarted by the launcher; the new process writes an event
    file of its own and logs episodes from the run's environment steps on, while the
    other actor goes on untouched. The run has no budget it could reach first: the
    test waits for each state it asserts and then stops the run with Ctrl-C."""
    run_dir = tmp_path / "run"
    proc = launch(checkpoint, run_dir, "--env_steps=1000000")
    try:
        wait_for(learner_checkpointed(run_dir), proc, what="the learner's first checkpoint")
        victim = processes(run_dir)["actor_0"]["pid"]
        wait_for(lambda: len(_event_files(run_dir / "actor_0")) == 1, proc,
                 what="actor_0's event file")
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: processes(run_dir).get("actor_0", {}).get("restarts") == 1, proc,
                 what="actor_0's restart")
        # The restarted actor's file starts with a SessionLog.START at the run's env
        # steps; an episode it finished is logged at or past that step.
        wait_for(lambda: len(_event_files(run_dir / "actor_0")) == 2, proc,
                 what="the restarted actor's event file")
        restarted = _event_files(run_dir / "actor_0")[-1]
        wait_for(lambda: any(v.tag == "actor/episode_return" for event in read_events(restarted)
                             for v in event.summary.value),
                 proc, timeout_s=180, what="an episode logged by the restarted actor")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 128 + signal.SIGINT, err[-3000:]
    table = processes(run_dir)
    assert table["actor_0"]["restarts"] == 1 and table["actor_0"]["exit_codes"] == [-9]
    assert table["actor_0"]["pid"] != victim and table["actor_1"]["restarts"] == 0
    assert "actor_0 exited with code -9; restarting it" in err
    steps = [s for s, _ in read_scalars(run_dir / "actor_0").get("actor/episode_return", [])]
    assert steps and steps == sorted(steps)


@pytest.mark.slow
def test_a_killed_learner_stops_the_run_and_resume_restores_counters_and_replay(
        checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    proc = launch(checkpoint, run_dir, "--env_steps=1000000")
    wait_for(learner_checkpointed(run_dir), proc, what="the learner's first checkpoint")
    children = psutil.Process(proc.pid).children(recursive=True)
    os.kill(processes(run_dir)["learner"]["pid"], signal.SIGKILL)
    code, _, err = finish(proc, timeout_s=60)
    assert code == 1, err[-3000:]
    assert "learner exited with code -9" in err
    assert f"resume with: python -m launch.local --resume --logdir={run_dir}" in err
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    saved = load_checkpoint(run_dir / "learner" / "checkpoint.pt")
    step, env_steps = saved["learner"]["step"], saved["env_steps"]
    replay = json.loads((run_dir / "replay" / "checkpoint.json").read_text())
    assert replay["env_steps"] >= env_steps > 0

    budget = replay["env_steps"] + 200
    code, out, err = finish(launch(checkpoint, run_dir, f"--env_steps={budget}", resume=True))
    assert code == 0, err[-3000:]
    restored = read_scalars(run_dir / "replay")
    assert restored["replay/restored_size"] == [(replay["env_steps"], replay["size"])]
    assert restored["replay/restored_inserts"][0][1] == replay["inserts"]
    assert restored["replay/restored_samples"][0][1] == replay["samples"]
    final = load_checkpoint(run_dir / "learner" / "checkpoint.pt")
    assert final["learner"]["step"] > step and final["env_steps"] >= budget
    # Counters go on from the checkpoint: learner steps and env steps never go back.
    learner = read_scalars(run_dir / "learner")
    steps = [s for s, _ in learner["replay/env_steps"]]
    assert steps == sorted(set(steps))
    env = [v for _, v in learner["replay/env_steps"]]
    assert env == sorted(env) and env[-1] >= replay["env_steps"]


def _listening_ports(pid):
    return {c.laddr.port for c in psutil.Process(pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN}


def _answers(port):
    try:
        with socket.create_connection(("localhost", port), timeout=1.0):
            return True
    except OSError:
        return False


def _file_identity(path):
    """(inode, size, mtime in ns): checkpoints are renamed into place, so a new write
    gives a new inode."""
    stat = Path(path).stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.slow
def test_a_signal_stops_every_child_after_final_checkpoints(checkpoint, tmp_path, signum):
    """SIGINT (to the process group, as Ctrl-C) or SIGTERM (to the launcher) ends every
    child and the replay's ports, after the learner and the replay wrote final
    checkpoints. The launcher bounds its own stop (`launch.local.SIGNAL_STOP_S`); the
    test only guards against a hang, since a loaded machine stretches any wall time."""
    run_dir = tmp_path / "run"
    proc = launch(checkpoint, run_dir, "--env_steps=1000000")
    wait_for(learner_checkpointed(run_dir), proc, what="the learner's first checkpoint")
    wait_for(lambda: (run_dir / "replay" / "checkpoint.json").is_file(), proc,
             what="the replay's first checkpoint")
    launcher = psutil.Process(proc.pid)
    children = launcher.children(recursive=True)
    roles = processes(run_dir)
    assert {c.pid for c in children} >= {r["pid"] for r in roles.values()}
    ports = _listening_ports(roles["replay"]["pid"])
    assert ports and all(_answers(p) for p in ports)
    learner_before = _file_identity(run_dir / "learner" / "checkpoint.pt")
    replay_before = _file_identity(run_dir / "replay" / "checkpoint.json")
    if signum == signal.SIGINT:  # Ctrl-C: the whole process group gets it
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)
    code, _, err = finish(proc, timeout_s=120)
    assert code == 128 + signum, err[-3000:]
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert not any(_answers(p) for p in ports)
    assert "resume with: python -m launch.local --resume" in err
    # The final checkpoints were written after the signal: new files renamed into place.
    assert _file_identity(run_dir / "learner" / "checkpoint.pt") != learner_before
    assert _file_identity(run_dir / "replay" / "checkpoint.json") != replay_before
    assert json.loads((run_dir / "replay" / "checkpoint.json").read_text())["env_steps"] > 0


# ---- bad input ----------------------------------------------------------------------------


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "launch.local", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow
def test_resume_refuses_what_it_cannot_continue(checkpoint, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("--resume", f"--logdir={empty}")
    assert result.returncode == 2 and "nothing to resume" in result.stderr
    result = run_cli("--resume")
    assert result.returncode == 2 and "--resume needs --logdir" in result.stderr
    result = run_cli("--resume", f"--logdir={empty}", "--objective=odt")
    assert result.returncode == 2 and "--objective cannot change it" in result.stderr
    assert list(empty.iterdir()) == []


@pytest.mark.slow
def test_a_checkpoint_for_another_environment_is_refused_before_anything_starts(
        checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    before = checkpoint.read_bytes()
    result = run_cli(f"--checkpoint={checkpoint}", "--preset=hopper-random",
                     f"--logdir={run_dir}")
    assert result.returncode == 2
    assert "observations of shape (4,)" in result.stderr and "Hopper" in result.stderr
    assert not run_dir.exists() and checkpoint.read_bytes() == before


@pytest.mark.slow
def test_an_existing_run_directory_is_refused_without_resume(checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("results")
    result = run_cli(f"--checkpoint={checkpoint}", f"--logdir={run_dir}")
    assert result.returncode == 2 and "pass --resume" in result.stderr
    assert [p.name for p in run_dir.iterdir()] == ["keep.txt"]
