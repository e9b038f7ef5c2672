"""Bad input leaves nothing behind: every entry point reads and checks its dataset (and
its checkpoint and config) before it makes a run directory, exits with status 2 and one
`error:` line naming the file, and the same command with a good file then succeeds.

The corrupt files are the cases of tests/test_datasets.py, written as real HDF5 files.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import portpicker
import pytest
from common import ENV, REPO

from replay.datasets import load_dataset

OBS_DIM, ACT_DIM = 4, 1  # InvertedPendulum-v4's spaces


def d4rl_arrays(rows: int = 2000, obs_dim: int = OBS_DIM, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    timeouts = np.zeros(rows, dtype=bool)
    timeouts[99::100] = True
    return {"observations": rng.normal(size=(rows, obs_dim)),
            "actions": rng.uniform(-1, 1, size=(rows, ACT_DIM)),
            "rewards": np.ones(rows), "terminals": np.zeros(rows, dtype=bool),
            "timeouts": timeouts}


def write_h5(path: Path, arrays: dict) -> Path:
    with h5py.File(path, "w") as file:
        for key, array in arrays.items():
            file.create_dataset(key, data=array)
    return path


def random_bytes(folder: Path) -> Path:
    path = folder / "noise.hdf5"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def truncated(folder: Path) -> Path:
    whole = write_h5(folder / "whole.hdf5", d4rl_arrays())
    path = folder / "cut.hdf5"
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    whole.unlink()
    return path


def with_nan(folder: Path) -> Path:
    arrays = d4rl_arrays()
    arrays["rewards"][5] = np.nan
    return write_h5(folder / "nan.hdf5", arrays)


def another_env(folder: Path) -> Path:
    return write_h5(folder / "hopper-like.hdf5", d4rl_arrays(obs_dim=11))


BAD = {
    "random-bytes": (random_bytes, "noise.hdf5: not an HDF5 file"),
    "truncated": (truncated, "cut.hdf5: "),
    "nan": (with_nan, "nan.hdf5: 'rewards' has a non-finite value (nan) at row 5"),
    "another-env": (another_env, "hopper-like.hdf5: observation shape (11,) does not match"),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, check=False)


def assert_refused(proc, path: Path, digest: str, message: str, *left_out: Path) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: {path.parent}" in proc.stderr and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sha256(path) == digest, "the bad file was modified"
    for out in left_out:
        assert not out.exists(), f"{out} was left behind"


@pytest.fixture(scope="module")
def good(tiny_checkpoint, tmp_path_factory):
    """(a good D4RL file, the session's tiny checkpoint)."""
    return write_h5(tmp_path_factory.mktemp("good") / "good.hdf5", d4rl_arrays()), tiny_checkpoint


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.slow
def test_pretrain_refuses_a_bad_dataset_before_making_the_run_directory(case, tmp_path):
    make, message = BAD[case]
    path = make(tmp_path)
    digest = sha256(path)
    logdir = tmp_path / "run"
    proc = run("learner.pretrain", f"--dataset={path}", f"--logdir={logdir}",
               "--pretrain_updates=10")
    assert_refused(proc, path, digest, message, logdir)


@pytest.mark.slow
def test_pretrain_with_the_dataset_fixed_then_succeeds_in_the_same_logdir(good, tmp_path):
    data, _ = good
    bad = with_nan(tmp_path)
    logdir = tmp_path / "run"
    args = [f"--logdir={logdir}", "--pretrain_updates=10", "--critic_pretrain_updates=10",
            "--eval_episodes=1", "--set=pretrain.eval_every=0"]
    assert_refused(run("learner.pretrain", f"--dataset={bad}", *args), bad, sha256(bad),
                   "non-finite", logdir)
    proc = run("learner.pretrain", f"--dataset={data}", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (logdir / "pretrain" / "checkpoint.pt").is_file()


@pytest.mark.slow
def test_main_refuses_a_bad_dataset_then_runs_with_a_good_one(good, tmp_path):
    data, _ = good
    bad = truncated(tmp_path)
    digest = sha256(bad)
    logdir = tmp_path / "run"
    args = [f"--logdir={logdir}", "--pretrain_updates=10", "--critic_pretrain_updates=10",
            "--eval_episodes=1", "--online=false"]
    assert_refused(run("launch.main", f"--dataset={bad}", *args), bad, digest, "cut.hdf5",
                   logdir)
    proc = run("launch.main", f"--dataset={data}", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pretrained eval return" in proc.stdout


FINETUNE = ["--num_actors=1", "--envs_per_actor=2", "--eval_episodes=1",
            "--set=optim.batch_size=16", "--set=replay.tolerance_steps=20",
            "--set=replay.updates_per_env_step=0.25", "--set=finetune.publish_every=5",
            "--set=finetune.log_every=5", "--set=finetune.checkpoint_every=20",
            "--set=finetune.eval_every_env_steps=1000000"]


@pytest.mark.slow
def test_local_refuses_a_bad_preload_dataset_then_runs_with_a_good_one(good, tmp_path):
    data, checkpoint = good
    bad = another_env(tmp_path)
    digest = sha256(bad)
    logdir = tmp_path / "run"
    args = [f"--checkpoint={checkpoint}", f"--logdir={logdir}", "--env_steps=100", *FINETUNE]
    assert_refused(run("launch.local", f"--dataset={bad}", *args), bad, digest,
                   "observation shape (11,)", logdir)
    proc = run("launch.local", f"--dataset={data}", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fine-tuned eval return" in proc.stdout


@pytest.mark.slow
def test_ray_refuses_a_bad_preload_dataset_before_anything_starts(good, tmp_path):
    _, checkpoint = good
    bad = random_bytes(tmp_path)
    digest = sha256(bad)
    logdir = tmp_path / "run"
    proc = run("launch.ray", f"--dataset={bad}", f"--checkpoint={checkpoint}",
               f"--logdir={logdir}")
    assert_refused(proc, bad, digest, "not an HDF5 file", logdir)


@pytest.mark.slow
def test_node_replay_role_refuses_a_bad_preload_dataset(good, tmp_path):
    _, checkpoint = good
    bad = with_nan(tmp_path)
    digest = sha256(bad)
    logdir = tmp_path / "run"
    port = portpicker.pick_unused_port()
    proc = run("launch.node", "--role=replay", f"--port={port}", f"--dataset={bad}",
               f"--checkpoint={checkpoint}", f"--logdir={logdir}")
    assert_refused(proc, bad, digest, "non-finite value (nan)", logdir)


@pytest.mark.slow
def test_collect_refuses_a_corrupt_policy_checkpoint_then_records_with_a_good_one(
        good, tmp_path):
    _, checkpoint = good
    corrupt = tmp_path / "policy.pt"
    corrupt.write_bytes(checkpoint.read_bytes()[:1000])
    digest = sha256(corrupt)
    out = tmp_path / "recorded"
    args = [f"--env_id={ENV}", "--episodes=2", "--num_envs=2", f"--out={out}"]
    proc = run("actors.collect", f"--policy={corrupt}", *args)
    assert proc.returncode == 2 and "policy.pt" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and sha256(corrupt) == digest
    assert not out.exists()
    proc = run("actors.collect", f"--policy={checkpoint}", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(load_dataset(out).episodes) == 2
