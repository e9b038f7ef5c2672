"""End to end on real envpool environments and real files: collect, pretrain, evaluate.

The learning test records a dataset with the noisy scripted controller for
InvertedPendulum-v4 and checks the pretrained policy lands at or above the dataset's
mean return, far above a random policy.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import portpicker
import pytest

from actors.collect import collect
from actors.envs import VectorEnv
from actors.evaluate import evaluate
from launch.pipeline import pretrain
from launch.presets import PretrainConfig, get_preset
from learner.checkpoint import load_policy
from learner.config import ObjectiveConfig
from learner.tensorboard import read_scalars, read_text
from replay.datasets import load_dataset

ENV = "InvertedPendulum-v4"
REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def sha256(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def scripted_dataset(tmp_path_factory) -> Path:
    path, _ = collect(ENV, "scripted", tmp_path_factory.mktemp("data") / "pd", episodes=60,
                      num_envs=20, seed=3, noise=0.3)
    return path


@pytest.fixture(scope="module")
def pretrained(scripted_dataset, tmp_path_factory):
    cfg = get_preset("quickstart")
    cfg = replace(cfg, objective=ObjectiveConfig(kind="odt"),
                  pretrain=PretrainConfig(updates=400, log_every=50, eval_every=200,
                                          checkpoint_every=200))
    logdir = tmp_path_factory.mktemp("run")
    result = pretrain(cfg, load_dataset(scripted_dataset), logdir)
    return cfg, logdir, result


def random_policy_return(episodes: int = 10) -> float:
    env = VectorEnv(ENV, episodes, seed=10_000)
    rng = np.random.default_rng(0)
    env.reset()
    returns, finished = np.zeros(episodes), np.zeros(episodes, bool)
    while not finished.all():
        result = env.step(rng.uniform(-1, 1, (episodes, 1)).astype(np.float32))
        live = ~finished & result.is_transition
        returns[live] += result.rewards[live]
        finished |= live & result.done
    return float(returns.mean())


def test_pretraining_learns_the_behaviour(scripted_dataset, pretrained):
    """The pretrained DT reaches the dataset's mean return and far exceeds random."""
    dataset = load_dataset(scripted_dataset)
    _, _, result = pretrained
    data_mean = float(dataset.returns.mean())
    random_mean = random_policy_return()
    assert data_mean > 5 * random_mean  # the behaviour policy is clearly better than random
    assert result.eval_return >= 0.8 * data_mean
    assert result.eval_return > 10 * random_mean


def test_tensorboard_holds_the_issue_tags(pretrained):
    """Event files, read back, hold the config table, losses, temperature, throughput, eval."""
    _, logdir, _ = pretrained
    scalars = read_scalars(logdir / "pretrain")
    for tag in ("loss/nll", "loss/entropy", "policy/temperature", "throughput/updates_per_s",
                "eval/return"):
        assert tag in scalars, tag
    assert [step for step, _ in scalars["eval/return"]] == [200, 400]
    assert all(np.isfinite(v) for _, v in scalars["loss/nll"])
    assert "| model.embed_dim | 64 |" in read_text(logdir / "pretrain")["config"]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_tensorboard_from_the_venv_serves_the_run(pretrained):
    """The `tensorboard` beside this interpreter (what `make tensorboard` and the printed
    command start) serves a finished run: eval/return and the config table come back
    over its HTTP API with the values the event files hold."""
    _, logdir, _ = pretrained
    tensorboard = Path(sys.executable).parent / "tensorboard"
    assert tensorboard.is_file(), f"{tensorboard}: no TensorBoard in this environment"
    port = portpicker.pick_unused_port()
    proc = subprocess.Popen([str(tensorboard), f"--logdir={logdir}", "--host=127.0.0.1",
                             f"--port={port}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        points = None
        while points is None:
            if proc.poll() is not None:
                pytest.fail(f"tensorboard exited with {proc.returncode}:\n{proc.stdout.read()}")
            assert time.monotonic() < deadline, "TensorBoard did not serve eval/return"
            try:
                tags = _get_json(f"{base}/data/plugin/scalars/tags")
                if "eval/return" in tags.get("pretrain", {}):
                    query = urllib.parse.urlencode({"run": "pretrain", "tag": "eval/return"})
                    points = _get_json(f"{base}/data/plugin/scalars/scalars?{query}")
            except (urllib.error.URLError, ConnectionError):
                pass
            if points is None:
                time.sleep(0.5)
        expected = read_scalars(logdir / "pretrain")["eval/return"]
        assert [step for _, step, _ in points] == [step for step, _ in expected]
        assert [value for _, _, value in points] == pytest.approx([v for _, v in expected])
        query = urllib.parse.urlencode({"run": "pretrain", "tag": "config"})
        texts = _get_json(f"{base}/data/plugin/text/text?{query}")
        assert texts and "model.embed_dim" in texts[-1]["text"]
    finally:
        proc.terminate()
        proc.wait(30)


def test_checkpoint_round_trip_gives_identical_actions(pretrained):
    """A saved policy reloads with weights_only and acts identically."""
    cfg, logdir, result = pretrained
    model, payload = load_policy(result.checkpoint)
    assert payload["updates"] == 400
    assert payload["run_config"]["env"]["env_id"] == ENV
    first = evaluate(model, ENV, episodes=3, target_return=cfg.eval.target_return, seed=7)
    again = evaluate(load_policy(result.checkpoint)[0], ENV, episodes=3,
                     target_return=cfg.eval.target_return, seed=7)
    np.testing.assert_array_equal(first.returns, again.returns)
    np.testing.assert_array_equal(first.lengths, again.lengths)


@pytest.mark.slow
def test_collect_cli_records_minari_with_provenance(tmp_path):
    out = tmp_path / "rand"
    proc = run_cli("-m", "actors.collect", f"--env_id={ENV}", "--policy=random",
                   "--episodes=5", "--num_envs=5", f"--out={out}", "--seed=4")
    assert proc.returncode == 0, proc.stderr
    dataset = load_dataset(out)
    assert len(dataset.episodes) == 5
    assert dataset.metadata["env_id"] == ENV
    assert dataset.metadata["policy"] == "random"
    assert dataset.metadata["seed"] == 4
    assert dataset.metadata["envpool_version"]
    assert all(ep.terminated != ep.truncated for ep in dataset.episodes)


@pytest.mark.slow
def test_collect_cli_writes_d4rl_file(tmp_path):
    out = tmp_path / "rand.hdf5"
    proc = run_cli("-m", "actors.collect", f"--env_id={ENV}", "--policy=scripted",
                   "--noise=0.3", "--episodes=4", "--num_envs=4", f"--out={out}",
                   "--format=d4rl")
    assert proc.returncode == 0, proc.stderr
    dataset = load_dataset(out)
    assert len(dataset.episodes) == 4 and dataset.metadata["format"] == "d4rl"


def test_collect_from_checkpoint_with_noise(pretrained, tmp_path):
    _, _, result = pretrained
    path, episodes = collect(ENV, str(result.checkpoint), tmp_path / "ckpt", episodes=4,
                             num_envs=4, noise=0.1, load_policy=load_policy)
    assert load_dataset(path).metadata["policy"].startswith("checkpoint:")
    assert len(episodes) == 4


@pytest.mark.slow
def test_pretrain_and_evaluate_cli(scripted_dataset, tmp_path):
    logdir = tmp_path / "run"
    proc = run_cli("-m", "learner.pretrain", f"--dataset={scripted_dataset}",
                   f"--logdir={logdir}", "--pretrain_updates=20", "--critic_pretrain_updates=20",
                   "--eval_episodes=2")
    assert proc.returncode == 0, proc.stderr
    assert (logdir / "pretrain" / "checkpoint.pt").is_file()
    assert (logdir / "config.json").is_file()
    proc = run_cli("-m", "actors.evaluate", f"--checkpoint={logdir / 'pretrain/checkpoint.pt'}",
                   "--episodes=2")
    assert proc.returncode == 0, proc.stderr
    assert "return  mean" in proc.stdout


@pytest.mark.slow
def test_main_job_runs_the_offline_pipeline(tmp_path):
    logdir = tmp_path / "main"
    proc = run_cli("-m", "launch.main", "--preset=quickstart", f"--logdir={logdir}",
                   "--collect_episodes=10", "--pretrain_updates=20",
                   "--critic_pretrain_updates=20", "--eval_episodes=2", "--online=false")
    assert proc.returncode == 0, proc.stderr
    for row in ("dataset return", "pretrained eval return", "wall time"):
        assert row in proc.stdout
    assert "fine-tuned eval return" not in proc.stdout
    assert (logdir / "dataset" / "metadata.json").is_file()
    assert "eval/return" in read_scalars(logdir / "pretrain")
    # --resume reuses the recorded dataset and the finished pretraining.
    checkpoint = logdir / "pretrain" / "checkpoint.pt"
    stamp = checkpoint.stat().st_mtime_ns
    proc = run_cli("-m", "launch.main", "--resume", f"--logdir={logdir}", "--online=false")
    assert proc.returncode == 0, proc.stderr
    assert "pretrained eval return" in proc.stdout and "pretraining" not in proc.stderr
    assert checkpoint.stat().st_mtime_ns == stamp
    proc = run_cli("-m", "launch.main", "--resume", f"--logdir={logdir}", "--seed=3")
    assert proc.returncode == 2 and "--seed cannot change it" in proc.stderr
    # The finished pretraining (critic included) is reused, so its budget cannot change.
    proc = run_cli("-m", "launch.main", "--resume", f"--logdir={logdir}",
                   "--critic_pretrain_updates=5")
    assert proc.returncode == 2 and "--critic_pretrain_updates cannot change it" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset=nope"], "unknown preset 'nope'"),
        (["--pretrain_updates=-3", "--eval_episodes=0"], "pretrain.updates=-3 must be >= 0"),
        (["--dataset=/nonexistent/x.hdf5"], "/nonexistent/x.hdf5: no such file"),
        (["--critic_pretrain_updates=-1"], "objective.critic_pretrain_updates=-1 must be >= 0"),
        (["--set=data.state_std_floor=-0.5"], "data.state_std_floor=-0.5 must be finite"),
        (['--set=env.options={"frame_skip": 2}'],
         "only the multi_game pipeline makes its envs with envpool options"),
    ],
)
@pytest.mark.slow
def test_bad_input_exits_nonzero_with_a_clear_message(args, message, tmp_path):
    proc = run_cli("-m", "launch.main", f"--logdir={tmp_path / 'run'}", *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_existing_run_directory_is_refused_and_kept(tmp_path):
    logdir = tmp_path / "run"
    logdir.mkdir()
    (logdir / "keep.txt").write_text("results")
    proc = run_cli("-m", "learner.pretrain", f"--logdir={logdir}")
    assert proc.returncode == 2
    assert "already exists" in proc.stderr
    assert sorted(p.name for p in logdir.iterdir()) == ["keep.txt"]


@pytest.mark.slow
def test_dataset_that_does_not_match_the_env_is_refused_untouched(scripted_dataset, tmp_path):
    before = sha256(scripted_dataset)
    proc = run_cli("-m", "learner.pretrain", "--preset=hopper-medium",
                   f"--dataset={scripted_dataset}", f"--logdir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert "observation shape (4,) does not match the environment's (11,)" in proc.stderr
    assert sha256(scripted_dataset) == before


@pytest.mark.slow
def test_corrupt_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(2000))
    proc = run_cli("-m", "actors.evaluate", f"--checkpoint={bad}")
    assert proc.returncode == 2
    assert "not a readable onramp checkpoint" in proc.stderr


def test_scripted_policy_for_unknown_env_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no controller for env_id='Hopper-v4'"):
        collect("Hopper-v4", "scripted", tmp_path / "x", episodes=1, num_envs=1)
