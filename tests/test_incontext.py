"""The in-context pipeline (`launch.main --preset=ad-darkroom`, `launch.incontext`) end to
end at a tiny size: real Dark Room environments, the Q-learning source, a Minari-layout
histories folder, AD and ED trained and evaluated in context, TensorBoard events read
back. Whether AD learns in context is measured by `bench.incontext`, not here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from launch.incontext import episodes_to_reach, last_episodes, subsample
from learner.tensorboard import read_scalars
from replay.histories import load_histories

REPO = Path(__file__).resolve().parents[1]

TINY = ["--set=pretrain.updates=6", "--set=pretrain.eval_every=3", "--set=pretrain.log_every=3",
        "--set=incontext.histories_per_task=1", "--set=incontext.source_episodes=8",
        "--set=incontext.keep_every=2", "--set=incontext.expert_episodes=2",
        "--set=incontext.eval_episodes=3", "--set=optim.batch_size=4",
        "--set=model.context_len=20", "--set=model.n_layer=1", "--set=model.embed_dim=16",
        "--set=model.ffn_dim=32"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny ad-darkroom run: (run directory, its stdout)."""
    run_dir = tmp_path_factory.mktemp("ad") / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.main", "--preset=ad-darkroom", f"--logdir={run_dir}",
         *TINY], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc.stdout


def test_the_histories_are_a_dataset_in_episode_order_with_their_tasks(run):
    run_dir, _ = run
    histories = load_histories(run_dir / "histories")
    held_out = json.loads((run_dir / "incontext.json").read_text())["held_out_tasks"]
    assert len(histories) == 81 - len(held_out)  # one per training task
    assert not {h.task_id for h in histories} & set(held_out)
    for h in histories:
        assert h.num_episodes == 4  # 8 source episodes, every 2nd kept
        assert np.all(np.diff(h.source_updates) == 2 * 20)  # two 20-step episodes apart
    import minari

    assert minari.MinariDataset(run_dir / "histories").total_episodes == 4 * len(histories)


def test_each_method_logs_its_return_against_the_episode_in_context(run):
    run_dir, stdout = run
    figures = json.loads((run_dir / "incontext.json").read_text())
    tasks = figures["held_out_tasks"]
    # AD and ED for eval_episodes, the source learning the tasks over its whole history.
    for name, folder, episodes in (("AD", "ad", 3), ("ED", "ed", 3), ("source", "source", 8)):
        scalars = read_scalars(run_dir / folder)
        curve = scalars["incontext/return"]
        assert [step for step, _ in curve] == list(range(1, episodes + 1))
        per_task = np.array([[v for _, v in scalars[f"incontext/return/task_{t}"]]
                             for t in tasks])
        np.testing.assert_allclose([v for _, v in curve], per_task.mean(0), rtol=1e-6)
        np.testing.assert_allclose(figures[name]["curve"], per_task.mean(0), atol=1e-3)
        assert 0 <= figures[name]["first_episode"] <= figures["optimal_return"]
    for folder in ("ad", "ed"):  # trained, evaluated in context while training
        scalars = read_scalars(run_dir / folder)
        assert [step for step, _ in scalars["eval/return"]] == [3, 6]
        assert (run_dir / folder / "checkpoint.pt").is_file()
    assert (run_dir / "incontext.png").stat().st_size > 10_000
    assert "AD return" in stdout and "time: AD training" in stdout


def test_history_helpers_keep_order_and_updates():
    from actors.qlearning import record_histories

    (history,) = record_histories("DarkRoom-v0", np.array([10]), 9, seed=0)
    kept = subsample(history, 4)
    assert kept.num_episodes == 3
    np.testing.assert_array_equal(kept.source_updates, history.source_updates[[0, 4, 8]])
    assert kept.episodes[1] is history.episodes[4]
    tail = last_episodes(kept, 2)
    assert tail.episodes == kept.episodes[1:]
    assert episodes_to_reach(np.array([0.0, 3.0, 9.0, 10.0]), 9.0) == 3
    assert episodes_to_reach(np.array([0.0, 3.0]), 9.0) is None


def test_an_online_objective_or_a_non_grid_env_is_refused_for_the_in_context_preset():
    for override, expected in (
        ("--objective=odt", "objective.kind='odt' fine-tunes online; pipeline='in_context'"),
        ("--set=env.env_id=Hopper-v4", "env.env_id='Hopper-v4': the in-context pipeline runs "
                                       "on the grid tasks"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "launch.main", "--preset=ad-darkroom", override,
             "--logdir=/nonexistent/never-made"], cwd=REPO, capture_output=True, text=True,
            timeout=300)
        assert proc.returncode != 0
        assert expected in proc.stderr, proc.stderr[-2000:]


def test_the_benchmark_evaluates_trained_runs_again_with_other_inference_settings(run,
                                                                               tmp_path):
    import shutil

    run_dir, _ = run
    out = tmp_path / "bench"
    shutil.copytree(run_dir, out / "seed0")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.incontext", "--seeds=0", f"--out={out}",
         "--evaluate_only", "--set=incontext.action_temperature=0.25"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    again = json.loads((out / "seed0" / "evaluation" / "incontext.json").read_text())
    assert report["median"]["AD"]["first_episode"] == again["AD"]["first_episode"]
    assert again["seconds"]["AD training"] == json.loads(
        (run_dir / "incontext.json").read_text())["seconds"]["AD training"]
    assert (out / "evaluation" / "incontext.png").is_file()
    # The source does not depend on AD's inference settings.
    assert again["source"]["curve"] == json.loads(
        (run_dir / "incontext.json").read_text())["source"]["curve"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.incontext", "--seeds=0,1", f"--out={out}",
         "--evaluate_only"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "no trained run for seed(s) 1" in proc.stderr
