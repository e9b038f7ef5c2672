"""Episode logs written by actors, and `replay.export`'s Minari dataset of a run's online
episodes: the round trip from a real actor, restarts, damaged logs, bad input, and
one real run exported through the command line."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import warnings
from dataclasses import replace

import h5py
import minari
import numpy as np
import pytest
import torch
from common import ENV, REPO

from actors.actor import Actor, TeeSink
from actors.context import BatchedPolicy
from actors.envs import VectorEnv, env_spec
from launch.presets import get_preset
from models import build_model
from replay.datasets import DatasetError, Episode, load_dataset
from replay.episode_log import EpisodeLog, read_episode_log
from replay.export import export_run
from replay.windows import FlatSteps


class RecordingSink:
    def __init__(self):
        self.episodes: list[FlatSteps] = []

    def write(self, steps: FlatSteps) -> int:
        self.episodes.append(steps)
        return len(steps)


def tiny_model(preset: str, head: str):
    torch.manual_seed(0)
    cfg = replace(get_preset(preset).model, embed_dim=16, n_layer=1, n_head=1, ffn_dim=32,
                  context_len=5, dropout=0.0)
    return build_model(cfg, head=head).eval()


def run_logging_actor(env_id: str, model, run_dir, *, env_steps: int, seed: int = 0,
                      actor_id: int = 0, incarnation: int = 0) -> list[FlatSteps]:
    """A real actor on `env_id` teeing its episodes to a recorder and the episode log of
    `run_dir/actor_<actor_id>`; the episodes it wrote, in the order it wrote them."""
    recorder = RecordingSink()
    env = VectorEnv(env_id, 4, seed)
    log = EpisodeLog(run_dir / f"actor_{actor_id}", env_id, env.spec.info(), actor_id=actor_id,
                     incarnation=incarnation)
    actor = Actor(env, BatchedPolicy(model, mode="sample", seed=seed), TeeSink(recorder, log),
                  target_return=500.0, context_len=5)
    try:
        actor.run(lambda: False, max_env_steps=env_steps)
    finally:
        env.close()
        log.close()
    assert recorder.episodes, f"{env_id}: no episode finished in {env_steps} steps"
    assert log.steps_written == sum(len(s) for s in recorder.episodes)
    return recorder.episodes


def env_actions(steps: FlatSteps, spec) -> np.ndarray:
    """What the environment received for `steps`' actions (onramp's [-1, 1] or indices)."""
    if spec.discrete:
        return steps.actions.astype(np.int64)
    low, high = spec.action_low.astype(np.float64), spec.action_high.astype(np.float64)
    return low + 0.5 * (steps.actions.astype(np.float64) + 1.0) * (high - low)


def assert_same_episodes(exported: list[Episode], written: list[FlatSteps], spec) -> None:
    assert len(exported) == len(written)
    for episode, steps in zip(exported, written):
        np.testing.assert_array_equal(episode.observations[:-1], steps.observations)
        np.testing.assert_array_equal(episode.observations[1:], steps.next_observations)
        np.testing.assert_allclose(episode.actions, env_actions(steps, spec), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(episode.rewards, steps.rewards)
        assert episode.terminated == bool(steps.terminated[-1])
        assert episode.truncated == (not episode.terminated)


@pytest.mark.parametrize("env_id,preset,head", [(ENV, "quickstart", "gaussian"),
                                                ("CartPole-v1", "cartpole", "categorical")])
def test_exported_episodes_are_what_the_actor_wrote_in_order(tmp_path, env_id, preset, head):
    """Observations, actions in the environment's units, rewards and flags of every episode
    the actor wrote come back from the exported folder in the order written, through
    onramp's reader and through minari's."""
    run = tmp_path / "run"
    written = run_logging_actor(env_id, tiny_model(preset, head), run, env_steps=300)
    spec = env_spec(env_id)
    out = export_run(run, tmp_path / "out")
    dataset = load_dataset(out)
    assert_same_episodes(dataset.episodes, written, spec)
    assert dataset.discrete_actions == spec.discrete
    assert dataset.metadata["env_id"] == env_id
    assert dataset.metadata["num_actors"] == 1 and dataset.metadata["log_files"] == 1
    assert dataset.metadata["policy"] == "online"  # no config.json in this run directory
    opened = minari.MinariDataset(out)
    assert opened.total_steps == sum(len(s) for s in written)
    assert opened.total_episodes == len(written)
    first = next(opened.iterate_episodes())
    np.testing.assert_allclose(first.actions, env_actions(written[0], spec), atol=1e-6)


def synthetic_episode(steps: int, value: float, discrete: bool = False) -> Episode:
    return Episode(observations=np.full((steps + 1, 4), value, np.float32),
                   actions=(np.zeros(steps, np.int64) if discrete
                            else np.full((steps, 1), 0.5, np.float32)),
                   rewards=np.full(steps, value, np.float32), terminated=True, truncated=False)


PENDULUM = {"observation_shape": (4,), "observation_dtype": "float32", "action_shape": (1,),
            "action_low": [-3.0], "action_high": [3.0], "num_actions": 0}


def test_restarts_get_their_own_files_and_export_merges_them_in_finishing_order(tmp_path):
    """Actor 0's second incarnation writes a second file next to its first; actor 1
    writes meanwhile. The export holds every episode in the order they were finished."""
    run = tmp_path / "run"
    first = EpisodeLog(run / "actor_0", ENV, PENDULUM, actor_id=0, incarnation=0)
    other = EpisodeLog(run / "actor_1", ENV, PENDULUM, actor_id=1)
    first.append(synthetic_episode(3, 1.0))
    other.append(synthetic_episode(4, 2.0))
    first.append(synthetic_episode(5, 3.0))
    first.close()  # the process died; the launcher starts incarnation 1
    second = EpisodeLog(run / "actor_0", ENV, PENDULUM, actor_id=0, incarnation=1)
    second.append(synthetic_episode(6, 4.0))
    other.append(synthetic_episode(7, 5.0))
    second.append(synthetic_episode(8, 6.0))
    assert first.path.name == "episodes-0000.h5" and second.path.name == "episodes-0001.h5"
    assert read_episode_log(first.path).attrs["incarnation"] == 0
    assert read_episode_log(second.path).attrs["incarnation"] == 1
    assert len(read_episode_log(first.path).episodes) == 2  # the restart left it alone

    dataset = load_dataset(export_run(run, tmp_path / "out"))
    assert [e.rewards[0] for e in dataset.episodes] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert [e.length for e in dataset.episodes] == [3, 4, 5, 6, 7, 8]
    assert dataset.metadata["num_actors"] == 2 and dataset.metadata["log_files"] == 3
    with pytest.raises(RuntimeError, match="after close"):
        first.append(synthetic_episode(2, 0.0))


def test_a_new_log_never_reuses_a_file_name(tmp_path):
    """The next file is numbered after the highest one present (a resumed run's actor)."""
    directory = tmp_path / "actor_0"
    directory.mkdir()
    (directory / "episodes-0004.h5").write_bytes(b"taken")
    log = EpisodeLog(directory, ENV, PENDULUM, actor_id=0)
    assert log.path.name == "episodes-0005.h5"
    assert (directory / "episodes-0004.h5").read_bytes() == b"taken"


def test_an_episode_cut_by_a_killed_writer_is_skipped_with_a_warning(tmp_path):
    """A row left without its episode's data (the process died while writing it) is
    skipped with a warning naming the file; the episodes before it export."""
    run = tmp_path / "run"
    log = EpisodeLog(run / "actor_0", ENV, PENDULUM, actor_id=0)
    log.append(synthetic_episode(3, 1.0))
    log.append(synthetic_episode(4, 2.0))
    log.close()
    with h5py.File(log.path, "a", libver="latest") as file:  # data cut short, row resized
        file["observations"].resize(len(file["observations"]) + 2, axis=0)
        file["episodes"].resize(3, axis=0)
    with pytest.warns(UserWarning, match=r"episodes-0000\.h5: skipping episode row 2"):
        out = export_run(run, tmp_path / "out")
    dataset = load_dataset(out)
    assert [e.length for e in dataset.episodes] == [3, 4]
    assert dataset.metadata["skipped_episodes"] == 1


KILLED_WRITER = """
import sys
import numpy as np
from replay.datasets import Episode
from replay.episode_log import EpisodeLog
info = {"observation_shape": (11,), "observation_dtype": "float32", "action_shape": (3,),
        "action_low": [-1.0] * 3, "action_high": [1.0] * 3, "num_actions": 0}
log = EpisodeLog(sys.argv[1], "Hopper-v4", info, actor_id=0)
step = 0
while True:
    log.append(Episode(observations=np.full((1001, 11), step, np.float32),
                       actions=np.zeros((1000, 3), np.float32),
                       rewards=np.full(1000, step, np.float32), terminated=False,
                       truncated=True))
    step += 1
    if step == 3:
        print("written", flush=True)
"""


@pytest.mark.slow
def test_a_log_of_a_killed_process_reads_back(tmp_path):
    """SIGKILL at random moments of a writer of Hopper-size episodes: each time the file
    opens and every episode it holds is whole and in order."""
    rng = np.random.default_rng(0)
    for attempt in range(10):
        directory = tmp_path / f"actor_{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(directory)],
                                cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "written\n"
        time.sleep(rng.uniform(0.0, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the episode being written may be skipped
            found = read_episode_log(directory / "episodes-0000.h5")
        assert len(found.episodes) >= 3 and found.skipped <= 1
        for k, logged in enumerate(found.episodes):
            assert logged.sequence == k
            assert np.all(logged.episode.observations == k) and logged.episode.length == 1000


def test_uint8_frames_and_discrete_actions_export(tmp_path):
    """Frames are logged uint8 (gzip-compressed) and exported uint8 under Box(0, 255)."""
    info = {"observation_shape": (4, 84, 84), "observation_dtype": "uint8",
            "action_shape": (), "num_actions": 6}
    log = EpisodeLog(tmp_path / "run" / "actor_0", "Pong-v5", info, actor_id=0)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (11, 4, 84, 84), dtype=np.uint8)
    log.append(Episode(observations=frames, actions=rng.integers(0, 6, 10),
                       rewards=np.zeros(10, np.float32), terminated=False, truncated=True))
    log.close()
    with h5py.File(log.path, "r", libver="latest", swmr=True) as file:
        assert file["observations"].compression == "gzip"
    out = export_run(tmp_path / "run", tmp_path / "out")
    episode = load_dataset(out).episodes[0]
    assert episode.observations.dtype == np.uint8
    np.testing.assert_array_equal(episode.observations, frames)
    assert episode.truncated and not episode.terminated
    assert minari.MinariDataset(out).total_steps == 10


def test_bad_input_is_refused_and_nothing_is_written(tmp_path):
    empty_run = tmp_path / "empty_run"
    (empty_run / "actor_0").mkdir(parents=True)
    with pytest.raises(DatasetError, match=f"{empty_run}: no episode logs"):
        export_run(empty_run, tmp_path / "out")
    with pytest.raises(DatasetError, match="no such run directory"):
        export_run(tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()

    run = tmp_path / "run"
    EpisodeLog(run / "actor_0", ENV, PENDULUM, actor_id=0).append(synthetic_episode(3, 1.0))
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        export_run(run, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]

    EpisodeLog(run / "actor_1", "CartPole-v1",
               {"observation_shape": (4,), "observation_dtype": "float32", "action_shape": (),
                "num_actions": 2}, actor_id=1).append(synthetic_episode(2, 1.0, discrete=True))
    with pytest.raises(DatasetError, match="one run directory holds one environment"):
        export_run(run, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_a_run_with_no_finished_episode_yet_is_refused(tmp_path):
    EpisodeLog(tmp_path / "run" / "actor_0", ENV, PENDULUM, actor_id=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DatasetError, match="hold no finished episode"):
            export_run(tmp_path / "run", tmp_path / "out")


@pytest.mark.slow
def test_a_real_run_exports_its_online_steps(random_dataset, tiny_checkpoint, tmp_path):
    """`launch.local --mode=inline` fine-tunes for 300 steps, then `python -m replay.export`
    writes a dataset whose steps are the run's online environment steps (the learner's
    final checkpoint): each step entered the replay server as part of a finished
    episode, and each such episode is logged."""
    from learner.checkpoint import load_checkpoint

    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.local", "--mode=inline", "--preset=quickstart",
         f"--checkpoint={tiny_checkpoint}", f"--dataset={random_dataset}", "--env_steps=300",
         "--eval_episodes=2", f"--logdir={run}"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "online"
    proc = subprocess.run([sys.executable, "-m", "replay.export", f"--logdir={run}",
                           f"--out={out}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"to {out}" in proc.stdout
    run_steps = load_checkpoint(run / "learner" / "checkpoint.pt")["env_steps"]
    opened = minari.MinariDataset(out)
    assert run_steps >= 300 and opened.total_steps == run_steps
    dataset = load_dataset(out)
    assert dataset.metadata["policy"] == "online:odt_td3"
    assert dataset.metadata["env_id"] == ENV

    again = subprocess.run([sys.executable, "-m", "replay.export", f"--logdir={run}",
                            f"--out={out}"], cwd=REPO, capture_output=True, text=True,
                           timeout=300, check=False)
    assert again.returncode == 2 and again.stderr.startswith("error: ")
    assert str(out) in again.stderr
    missing = subprocess.run([sys.executable, "-m", "replay.export",
                              f"--logdir={tmp_path / 'nothing'}", f"--out={tmp_path / 'x'}"],
                             cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert missing.returncode == 2 and str(tmp_path / "nothing") in missing.stderr
