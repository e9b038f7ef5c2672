"""Multi-node runs on one host: each role a separate `python -m launch.node` process,
talking to the replay server over gRPC on 127.0.0.1; and the SLURM job script."""

from __future__ import annotations

# isort: off
from replay import _reverb  # noqa: F401  (reverb/TF before torch)
from replay._reverb import reverb
from replay.params import decode_params
from replay.tables import (
    EXPERIENCE_TABLE,
    PARAMS_TABLE,
    ReplaySpec,
    check_server_spec,
    preload_items_from_server,
    start_server,
    table_counts,
)

# isort: on
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from launch.node import stop_at_budget
from launch.slurm import SlurmJob, sbatch_script, write_script
from learner.checkpoint import load_checkpoint
from learner.tensorboard import read_scalars
from replay.datasets import load_dataset

ENV = "InvertedPendulum-v4"
REPO = Path(__file__).resolve().parents[1]
STOP_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pretrained(random_dataset, tiny_checkpoint):
    return random_dataset, tiny_checkpoint


class Node:
    """One `python -m launch.node` process; its output goes to files, never to a pipe
    that could fill up and block it."""

    def __init__(self, name: str, args: list[str], logs: Path):
        self.name = name
        self.stdout_path, self.stderr_path = logs / f"{name}.out", logs / f"{name}.err"
        # One torch thread each: five processes share a small machine.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "launch.node", *args],
                                         cwd=REPO, stdout=out, stderr=err, env=env)

    def output(self) -> str:
        return self.stdout_path.read_text() + self.stderr_path.read_text()



def stop(signals: dict[Node, signal.Signals]) -> None:
    """Signal the processes together; fail unless each exits within STOP_TIMEOUT_S
    (a hang guard: a role stops on its own well before, or is forced out after its
    --stop_grace_s with exit status 3, which the caller then sees)."""
    for node, signum in signals.items():
        node.proc.send_signal(signum)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for node, signum in signals.items():
        try:
            node.proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{node.name} still running {STOP_TIMEOUT_S} s after "
                        f"{signum.name}:\n{node.output()[-3000:]}")


def published_step(address: str) -> int | None:
    """The learner step of the weights in the params table, None while it is empty."""
    client = reverb.Client(address)
    if client.server_info(timeout=5)[PARAMS_TABLE].current_size == 0:
        return None
    [[timestep]] = list(client.sample(PARAMS_TABLE, num_samples=1, emit_timesteps=True))
    step, _ = decode_params(timestep.data, None)
    return step


@pytest.mark.slow
def test_every_role_runs_in_its_own_process_over_grpc(pretrained, tmp_path):
    """Replay, learner, actor and evaluator as four OS processes: the preload is read
    back from the server, episodes arrive, the learner publishes new weights, and
    SIGTERM/SIGINT stop each role cleanly (exit 0) within 15 s, leaving no process."""
    data, checkpoint = pretrained
    initial_step = load_checkpoint(checkpoint)["learner"]["step"]
    port = free_port()
    address = f"127.0.0.1:{port}"
    run = tmp_path / "run"
    common = ["--preset=quickstart", "--objective=odt", f"--checkpoint={checkpoint}",
              f"--logdir={run}", "--device=cpu", "--envs_per_actor=2", "--eval_episodes=2",
              "--env_steps=1000000", "--replay_wait_s=240",
              # Losses logged every 5 updates, so that the learner has written them by
              # its first publish of new weights, which the wait below waits for.
              "--set=finetune.log_every=5", "--set=finetune.publish_every=25"]
    worker = [f"--replay_address={address}", *common]
    nodes: dict[str, Node] = {}
    try:
        # All at once: the others retry until the replay server answers.
        nodes["replay"] = Node("replay", ["--role=replay", f"--port={port}", *common], tmp_path)
        nodes["learner"] = Node("learner", ["--role=learner", *worker], tmp_path)
        nodes["actor_0"] = Node("actor_0", ["--role=actor", "--actor_id=0", *worker], tmp_path)
        nodes["evaluator"] = Node("evaluator", ["--role=evaluator", *worker], tmp_path)

        # Generous: on a loaded 2-core machine, importing torch and TF in four
        # processes at once can take a minute.
        timeout_s = 240
        deadline = time.monotonic() + timeout_s
        env_steps, step, preload = 0, None, None
        while not (env_steps >= 100 and step is not None and step > initial_step):
            for node in nodes.values():
                if node.proc.poll() is not None:
                    pytest.fail(f"{node.name} exited with {node.proc.returncode}:\n"
                                f"{node.output()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"after {timeout_s} s: {env_steps} env steps, published step {step}")
            time.sleep(0.5)
            if "replay server listening on" not in nodes["replay"].output():
                continue
            preload = preload_items_from_server(address)
            env_steps = table_counts(address)["inserts"] - preload
            step = published_step(address)

        assert preload == load_dataset(data).num_steps  # every offline window preloaded
        assert f"replay server listening on {socket.gethostname()}:{port}" in \
            nodes["replay"].output()
        # The documented order: actors and evaluator, then the learner, the replay last.
        stop({nodes["actor_0"]: signal.SIGTERM, nodes["evaluator"]: signal.SIGINT})
        stop({nodes["learner"]: signal.SIGTERM})
        stop({nodes["replay"]: signal.SIGTERM})
        for node in nodes.values():
            assert node.proc.returncode == 0, f"{node.name}:\n{node.output()[-3000:]}"
    finally:
        for node in nodes.values():
            if node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait(10)
    assert not [p for p in psutil.Process().children(recursive=True)
                if "launch.node" in " ".join(p.cmdline())]

    actor = read_scalars(run / "actor_0")
    assert "actor/episode_return" in actor
    assert actor["actor/params_rejected"][-1][1] == 0
    assert "eval/return" in read_scalars(run / "evaluator")
    learner = read_scalars(run / "learner")
    assert "loss/nll" in learner and "replay/env_steps" in learner
    final = load_checkpoint(run / "learner" / "checkpoint.pt")
    assert final["learner"]["step"] > initial_step and final["env_steps"] >= 100
    assert (run / "config.json").is_file()


@pytest.mark.slow
def test_the_replay_role_takes_the_checkpoints_context_length(pretrained, tmp_path):
    """As in launch.local, the checkpoint defines the network: a preset whose context
    length differs still gets replay windows of the checkpoint's length."""
    data, checkpoint = pretrained
    checkpoint_len = load_checkpoint(checkpoint)["model_config"]["context_len"]
    port = free_port()
    node = Node("replay", ["--role=replay", f"--port={port}", f"--checkpoint={checkpoint}",
                           f"--dataset={data}", f"--set=model.context_len={checkpoint_len + 3}"],
                tmp_path)
    try:
        deadline = time.monotonic() + 240
        while "replay server listening on" not in node.output():
            assert node.proc.poll() is None, node.output()[-3000:]
            assert time.monotonic() < deadline, "the replay role did not start"
            time.sleep(0.5)
        address = f"127.0.0.1:{port}"
        signature = reverb.Client(address).server_info()[EXPERIENCE_TABLE].signature
        lengths = {spec.shape[0] for spec in reverb_specs(signature)}
        assert lengths == {checkpoint_len}, signature
    finally:
        stop({node: signal.SIGTERM})


def reverb_specs(signature):
    """The TensorSpecs of a (nested) Reverb table signature."""
    if isinstance(signature, dict):
        return [spec for value in signature.values() for spec in reverb_specs(value)]
    if isinstance(signature, (list, tuple)):
        return [spec for value in signature for spec in reverb_specs(value)]
    return [signature]


@pytest.mark.slow
def test_a_role_without_a_replay_server_fails_naming_the_address(pretrained, tmp_path):
    _, checkpoint = pretrained
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    proc = subprocess.run(
        [sys.executable, "-m", "launch.node", "--role=actor", f"--replay_address={address}",
         f"--checkpoint={checkpoint}", f"--logdir={tmp_path / 'run'}", "--replay_wait_s=2"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: replay server at {address} did not answer within 2 s" in proc.stderr
    assert "not answering" in proc.stderr  # the retries are logged


@pytest.mark.slow
def test_node_refuses_bad_flags(pretrained, tmp_path):
    _, checkpoint = pretrained
    cases = {
        "--port=0": (["--role=replay", "--port=0"], "needs a fixed --port in 1..65535"),
        "--port=70000": (["--role=replay", "--port=70000"], "needs a fixed --port in 1..65535"),
        "no port": (["--role=learner", "--replay_address=nohost"], "must be HOST:PORT"),
    }
    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "launch.node", *flags, f"--checkpoint={checkpoint}",
         f"--logdir={tmp_path}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for name, (flags, _) in cases.items()}
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 2, name
        assert cases[name][1] in stderr, (name, stderr)


def test_preload_items_and_spec_are_read_back_from_the_server():
    spec = ReplaySpec(observation_shape=(4,), action_shape=(1,), context_len=10,
                      capacity_items=5000, samples_per_insert=19.2, tolerance_steps=1000,
                      preload_items=2137)
    server = start_server(spec)
    try:
        client = server.localhost_client()
        assert preload_items_from_server(client) == 2137
        check_server_spec(client, spec)
        for other, field in [(replace(spec, context_len=5), "window columns"),
                             (replace(spec, samples_per_insert=12.8), "samples_per_insert"),
                             (replace(spec, tolerance_steps=20), "rate limiter window"),
                             (replace(spec, capacity_items=4000), "capacity_items")]:
            with pytest.raises(ValueError, match=f"another configuration.*{field}"):
                check_server_spec(client, other)
    finally:
        server.stop()


def test_a_busy_port_is_refused_naming_it():
    spec = ReplaySpec(observation_shape=(4,), action_shape=(1,), context_len=5,
                      capacity_items=100, samples_per_insert=1.0, tolerance_steps=10)
    server = start_server(spec)
    try:
        with pytest.raises(ValueError, match=f"cannot listen on port {server.port}: another process"):
            start_server(spec, port=server.port)
    finally:
        server.stop()


STUCK_ROLE = """
import sys, threading, time
from launch.node import StopOnSignal
stop = threading.Event()
StopOnSignal(stop, grace_s=float(sys.argv[1]), log=lambda message: print(message, flush=True)).install()
print("ready", flush=True)
time.sleep(600)  # a role stuck where it never looks at `stop` (as in a blocked insert)
"""


@pytest.mark.parametrize("grace_s, signals, code", [
    # Not finished 1 s after the signal: forced, EXIT_FORCED.
    (1.0, [signal.SIGTERM], 3),
    # A second signal exits at once: with 300 s of grace, nothing else ends it first.
    (300.0, [signal.SIGTERM, signal.SIGINT], 128 + signal.SIGINT),
])
@pytest.mark.slow
def test_a_signal_is_seen_even_while_the_main_thread_is_stuck(grace_s, signals, code):
    proc = subprocess.Popen([sys.executable, "-c", STUCK_ROLE, str(grace_s)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        lines = []
        for signum, following in zip(signals, signals[1:] + [None]):
            proc.send_signal(signum)
            if following is None:
                break
            # The role has taken this signal before the next is sent: two pending
            # signals would be delivered lowest number first.
            name = signal.Signals(signum).name
            while not any(name in line for line in lines):
                line = proc.stdout.readline()
                assert line, f"the role exited before reporting {name}: {lines}"
                lines.append(line)
        assert proc.wait(120) == code
        output = "".join(lines) + proc.stdout.read()
        assert "SIGTERM: stopping" in output
        if code == 3:
            assert "still running 1 s after SIGTERM" in output
    finally:
        proc.kill()
        proc.wait()


def test_roles_stop_themselves_at_the_budget():
    stop = threading.Event()
    counts = iter([10, 50, 99, 100, 200])
    messages = []
    stop_at_budget(lambda: next(counts), 100, stop, messages.append, interval_s=0.001)
    assert stop.is_set() and "budget reached (100 >= 100)" in messages[-1]


def test_the_learner_stops_past_the_budget_once_it_has_taken_the_samples_owed():
    stop = threading.Event()
    owed = iter([300.0, 120.0, 0.0, -5.0])
    calls = []

    def remaining():
        calls.append(1)
        return next(owed)

    messages = []
    stop_at_budget(lambda: 100, 100, stop, messages.append, interval_s=0.001, owed=remaining)
    assert stop.is_set() and len(calls) == 3  # stopped at the first count with nothing owed
    assert "300 samples these steps still owe" in messages[0]
    assert "stopping" in messages[-1] and len(messages) == 2


# ---- SLURM -----------------------------------------------------------------------


@pytest.mark.slow
def test_slurm_dry_run_prints_a_heterogeneous_job_and_writes_nothing(tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    checkpoint.write_bytes(b"")
    before = set(tmp_path.rglob("*"))
    proc = subprocess.run(
        [sys.executable, "-m", "launch.slurm", "--preset=quickstart", "--actor_nodes=3",
         "--actors_per_node=2", "--port=8123", "--gpus=2", "--partition=gpu", "--actor_partition=cpu",
         f"--checkpoint={checkpoint}", f"--logdir={tmp_path / 'run'}", "--dry_run",
         f"--out={tmp_path / 'job.sbatch'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    assert script.startswith("#!/bin/bash")
    component0, separator, component1 = script.partition("#SBATCH hetjob\n")
    assert separator
    assert "#SBATCH --gres=gpu:2" in component0 and "#SBATCH --partition=gpu" in component0
    assert "--nproc_per_node=2 -m launch.node --role=learner" in script  # data-parallel
    assert "#SBATCH --nodes=3" in component1 and "#SBATCH --ntasks-per-node=2" in component1
    assert "#SBATCH --partition=cpu" in component1 and "--gres" not in component1
    assert "PORT=8123" in script
    for text in ("--role=replay", "--role=learner", "--role=evaluator", "--role=actor",
                 "--replay_address=", "srun --het-group=1",
                 "scontrol show hostnames \"$SLURM_JOB_NODELIST_HET_GROUP_0\" | head -n1"):
        assert text in script, text
    assert set(tmp_path.rglob("*")) == before  # no script, no run directory


@pytest.mark.slow
def test_slurm_forwards_set_overrides_to_every_node_command(tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    checkpoint.write_bytes(b"")
    proc = subprocess.run(
        [sys.executable, "-m", "launch.slurm", "--preset=quickstart", "--actor_nodes=1",
         f"--checkpoint={checkpoint}", f"--logdir={tmp_path / 'run'}", "--dry_run",
         "--set=objective.rl_coeff=0.5", "--set=finetune.log_every=7"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    run_flags = next(line for line in proc.stdout.splitlines()
                     if line.startswith("RUN_FLAGS=("))
    assert "--set=objective.rl_coeff=0.5" in run_flags
    assert "--set=finetune.log_every=7" in run_flags


@pytest.mark.slow
def test_slurm_script_forwards_overrides_and_is_written_once(tmp_path):
    job = SlurmJob(node_flags=("--preset=hopper-medium", "--objective=odt",
                               "--checkpoint=/runs/c.pt", "--logdir=/runs/ft"),
                   logdir="/runs/ft", actor_nodes=1, gpus=0, python="/venv/bin/python",
                   workdir="/src/onramp")
    script = sbatch_script(job)
    assert "--gres" not in script and "#SBATCH --nodes=1" in script
    assert "RUN_FLAGS=(--preset=hopper-medium --objective=odt --checkpoint=/runs/c.pt " \
        "--logdir=/runs/ft)" in script
    assert "cd /src/onramp" in script and "PYTHON=/venv/bin/python" in script
    syntax = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True,
                            check=False)
    assert syntax.returncode == 0, syntax.stderr
    out = tmp_path / "job.sbatch"
    write_script(out, script)
    assert out.read_text() == script and os.access(out, os.X_OK)
    with pytest.raises(FileExistsError, match="job.sbatch"):
        write_script(out, script)
