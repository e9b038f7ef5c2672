"""The multi-game pipeline (`launch.main --preset=mgdt-atari3`, `launch.multigame`) end to
end at a tiny size: real envpool Atari for two games, the multi-game dataset, one MGDT
pretrained on both, per-game evaluation in both modes with human-normalized scores,
then online fine-tuning through a real Reverb server with one actor per game (or one
for both), and the evaluation again. Whether the model plays well is a benchmark's
question, not this test's."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from launch.flags import apply_setting, atari_game_ids
from launch.presets import get_preset
from learner.tensorboard import read_scalars
from replay.atari_scores import human_normalized
from replay.multigame import load_multigame

REPO = Path(__file__).resolve().parents[1]
GAMES = ("Pong-v5", "Breakout-v5")

TINY = ["--set=pretrain.updates=4", "--set=pretrain.log_every=2",
        "--games=Pong,Breakout-v5", "--set=multigame.max_steps_per_episode=40",
        "--set=multigame.eval_episodes=2",
        '--set=multigame.episodes_per_policy={"random": 2, "noisy:0.3": 1}',
        "--set=model.n_layer=1", "--set=model.embed_dim=32", "--set=model.ffn_dim=64",
        "--set=optim.batch_size=4", "--set=multigame.online_env_steps=400",
        "--set=multigame.online_round_steps=20", "--set=multigame.online_envs=2",
        "--set=replay.updates_per_env_step=0.05", "--set=finetune.log_every=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mg") / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.main", "--preset=mgdt-atari3", f"--logdir={run_dir}",
         *TINY], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc.stdout


def test_every_game_is_recorded_trained_on_and_scored_in_both_modes(run):
    run_dir, stdout = run
    data = load_multigame(run_dir / "data")
    assert sorted(data) == sorted(GAMES)
    for game in GAMES:
        tags = [tagged.policy for tagged in data[game]]
        assert tags == ["random", "random", "noisy:0.3"]
        assert all(t.episode.observations.shape[1:] == (1, 84, 84) for t in data[game])
        assert all(t.episode.length <= 40 for t in data[game])
    figures = json.loads((run_dir / "multigame.json").read_text())["games"]
    scalars = read_scalars(run_dir / "pretrain")
    for game in GAMES:
        f = figures[game]
        returns = [t.episode.ret for t in data[game]]
        assert f["dataset_mean_return"] == pytest.approx(np.mean(returns), rel=1e-6)
        for mode in ("expert", "target"):
            assert f[f"{mode}_human_normalized"] == pytest.approx(
                human_normalized(game, f[f"{mode}_return"]))
            (step, value), = scalars[f"eval/{game}/{mode}_return"]
            assert step == 4 and value == pytest.approx(f[f"{mode}_return"], rel=1e-5)
        assert game in stdout
    assert (run_dir / "pretrain" / "checkpoint.pt").is_file()


def test_online_fine_tuning_plays_every_game_and_trains_on_their_windows(run):
    run_dir, stdout = run
    report = json.loads((run_dir / "multigame.json").read_text())
    online, figures = report["online"], report["games"]
    # Each round plays 20 steps of each game (21 when an env's auto-reset step falls in
    # the last one), until the 400-step budget is reached. Rounds are shorter than the
    # 40-step episodes: the learner's turns run ahead of the finished episodes.
    assert 400 <= online["env_steps"] < 400 + 2 * 21
    assert online["updates"] == int(online["env_steps"] * 0.05)
    assert online["actors"] == 2 and "an actor per game, taking turns" in stdout
    data_steps = sum(t.episode.length for episodes in load_multigame(run_dir / "data").values()
                     for t in episodes)
    assert online["preloaded_steps"] == data_steps
    # Every step played went into the replay table, next to the preloaded ones; a step
    # still in an unfinished episode is not written yet.
    assert data_steps < online["replay_size"] <= data_steps + online["env_steps"]
    scalars = read_scalars(run_dir / "finetune")
    learner_step = 4 + online["updates"]
    assert scalars["loss/entropy"], "the online updates log ODT's entropy term"
    assert max(step for step, _ in scalars["loss/total"]) == learner_step
    for game in GAMES:
        returns = [value for _, value in scalars[f"online/{game}/episode_return"]]
        assert len(returns) == figures[game]["actor_episodes"] >= 2
        assert np.mean(returns) == pytest.approx(figures[game]["actor_mean_return"])
        for mode in ("expert", "target"):
            # Before (the offline model, at step 0) and after fine-tuning.
            (start, before), (step, value) = scalars[f"eval/{game}/{mode}_return"]
            assert start == 0 and before == pytest.approx(figures[game][f"{mode}_return"],
                                                          rel=1e-5)
            assert step == online["env_steps"]
            assert value == pytest.approx(figures[game][f"online_{mode}_return"], rel=1e-5)
        assert f"{game} online" in stdout
    assert (run_dir / "finetune" / "checkpoint.pt").is_file()


def test_set_parses_tuples_and_dicts_and_refuses_bad_ones():
    cfg = get_preset("mgdt-atari3")
    cfg = apply_setting(cfg, "multigame.games=Pong-v5, Qbert-v5")
    assert cfg.multigame.games == ("Pong-v5", "Qbert-v5")
    cfg = apply_setting(cfg, 'multigame.games=["Boxing-v5"]')
    assert cfg.multigame.games == ("Boxing-v5",)
    cfg = apply_setting(cfg, 'multigame.episodes_per_policy={"random": 3}')
    assert cfg.multigame.episodes_per_policy == {"random": 3}
    with pytest.raises(ValueError, match="is not JSON"):
        apply_setting(cfg, "multigame.episodes_per_policy=random:3")
    with pytest.raises(ValueError, match="expected a JSON dict, got list"):
        apply_setting(cfg, "multigame.episodes_per_policy=[1]")


def test_games_flag_names_envpool_ids_and_only_for_the_multi_game_pipeline():
    assert atari_game_ids(["Pong", " Breakout-v5", "Freeway"]) == (
        "Pong-v5", "Breakout-v5", "Freeway-v5")
    proc = subprocess.run(
        [sys.executable, "-m", "launch.main", "--preset=quickstart", "--games=Pong",
         "--logdir=/nonexistent/never-made"], cwd=REPO, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode != 0
    assert "--games: preset 'quickstart' runs pipeline 'offline_online'" in proc.stderr
    assert not Path("/nonexistent/never-made").exists()


def test_online_fine_tuning_with_an_actor_process_per_game(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.main", "--preset=mgdt-atari3", f"--logdir={run_dir}",
         *TINY, "--set=multigame.actor_processes=true", "--set=finetune.publish_every=2"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run_dir / "multigame.json").read_text())
    online = report["online"]
    assert online["actor_processes"] is True and online["actors"] == 2
    assert "an actor per game, in processes" in proc.stdout
    # Each game's actor plays its half of the 400 steps, in chunks of 2 envs x 8 steps.
    assert 400 <= online["env_steps"] < 400 + 2 * 16
    assert online["updates"] == int(online["env_steps"] * 0.05)
    assert online["replay_size"] > online["preloaded_steps"]
    scalars = read_scalars(run_dir / "finetune")
    for game in GAMES:
        assert report["games"][game]["actor_episodes"] >= 1
        assert len(scalars[f"online/{game}/episode_return"]) == \
            report["games"][game]["actor_episodes"]
        assert f"eval/{game}/expert_return" in scalars
        # Every episode was played with weights the learner published (from its step 4,
        # pretraining's last), none with the checkpoint's own (-1).
        assert min(v for _, v in scalars[f"online/{game}/weights_step"]) >= 4
    assert (run_dir / "finetune" / "checkpoint.pt").is_file()


@pytest.mark.parametrize("processes", [False, True])
def test_one_actor_mixing_every_game_fine_tunes_the_model(run, tmp_path, processes):
    """With multigame.mix_games one actor plays both games in one batch, taking turns
    with the learner or in a process of its own; each game's episodes reach the table
    and TensorBoard under its own name."""
    from launch.multigame import finetune_online, game_result
    from launch.presets import RunConfig

    run_dir, _ = run
    cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    cfg = apply_setting(cfg, "multigame.mix_games=true")
    cfg = apply_setting(cfg, f"multigame.actor_processes={str(processes).lower()}")
    data = load_multigame(run_dir / "data")
    results = {game: game_result(game, data[game]) for game in GAMES}
    online = finetune_online(cfg, run_dir, run_dir / "pretrain" / "checkpoint.pt", results,
                             logdir=tmp_path / "ft")
    # Turn-taking: rounds of 2 games x 20 steps, each passing it by up to one step of
    # the 4 environments. A process: the whole budget in chunks of 4 envs x 8 steps.
    assert online["actors"] == 1
    assert 400 <= online["env_steps"] < (400 + 4 if processes else 400 + 40 + 4)
    assert online["updates"] == int(online["env_steps"] * 0.05)
    assert online["replay_size"] > online["preloaded_steps"]
    scalars = read_scalars(tmp_path / "ft")
    for game in GAMES:
        assert len(results[game].actor_returns) >= 2
        assert len(scalars[f"online/{game}/episode_return"]) == len(results[game].actor_returns)
        if processes:
            assert min(v for _, v in scalars[f"online/{game}/weights_step"]) >= 4
    assert (tmp_path / "ft" / "checkpoint.pt").is_file()


@pytest.mark.parametrize("counts, message", [
    ('{"cem:2": 9}', r"2 rounds of multigame.record_envs=4 environments play 8 episodes"),
    ('{"cem:x": 1}', "needs a whole number of rounds"),
    ('{"online-best": 1}', "policy 'online-best' is none of"),
])
def test_the_preset_refuses_data_policies_it_cannot_record(counts, message):
    from launch.presets import validate

    cfg = apply_setting(get_preset("mgdt-atari3"), f"multigame.episodes_per_policy={counts}")
    assert any(re.search(message, problem) for problem in validate(cfg)), validate(cfg)


def bench(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.multigame", "--seeds=0", f"--out={out}",
                           *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def json_lines(proc: subprocess.CompletedProcess) -> list[dict]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One seed of bench.multigame at the tiny size, single-game models included: its
    --out folder and its row."""
    out = tmp_path_factory.mktemp("bench") / "out"
    tiny = [t.replace("--games=Pong,Breakout-v5", f"--set=multigame.games={','.join(GAMES)}")
            for t in TINY]
    first, _ = json_lines(bench(out, *tiny))
    return out, first


def test_bench_plays_its_runs_again_with_other_inference_settings(bench_run):
    """bench.multigame's --evaluate_only plays the seeds' checkpoints again: with the
    saved settings it reproduces the run's own scores exactly (the evaluation is
    seeded), and with others it writes its curves beside the run's."""
    out, first = bench_run
    again, report = json_lines(bench(out, "--evaluate_only"))
    for game in GAMES:
        for key in ("expert_return", "target_return", "online_expert_return",
                    "single_expert_return", "single_target_return"):
            assert again["games"][game][key] == first["games"][game][key], (game, key)
        assert set(report["checks"][game]) >= {"expert_beats_target", "online_raises",
                                               "multi_vs_single"}
    scalars = read_scalars(out / "seed0" / "evaluation")
    assert {f"eval/{game}/expert_return" for game in GAMES} <= set(scalars)
    proc = bench(out, "--evaluate_only", "--set=multigame.num_return_samples=1")
    assert proc.returncode != 0 and "seed0/evaluation already exists" in proc.stderr
    (out / "seed0" / "evaluation").rename(out / "seed0" / "first_evaluation")
    proc = bench(out, "--evaluate_only", "--set=multigame.games=Pong-v5,Qbert-v5")
    assert proc.returncode != 0 and "has no episodes of Qbert-v5" in proc.stderr
    assert not (out / "seed0" / "evaluation").exists()


def test_bench_fine_tunes_its_runs_again_from_the_pretrained_checkpoints(bench_run):
    """bench.multigame's --finetune_only runs the online stage again from each seed's
    pretrained checkpoint with other settings, into a folder of its own; the row keeps
    the run's scores before fine-tuning. `multigame.preload_top_episodes` preloads each
    game's best recorded episodes only."""
    out, first = bench_run
    before = sorted(p.name for p in (out / "seed0").iterdir())
    again, report = json_lines(bench(out, "--finetune_only=top1",
                                     "--set=multigame.preload_top_episodes=1"))
    data = load_multigame(out / "seed0" / "data")
    # Each game's best episode (any of them, where returns tie).
    best = [[t.episode.length for t in data[game]
             if t.episode.ret == max(u.episode.ret for u in data[game])] for game in GAMES]
    assert again["online"]["preloaded_steps"] in {sum(c) for c in itertools.product(*best)}
    assert first["online"]["preloaded_steps"] == sum(
        t.episode.length for game in GAMES for t in data[game])
    assert again["online"]["env_steps"] >= 400
    for game in GAMES:
        for key in ("expert_return", "target_return", "dataset_mean_return"):
            assert again["games"][game][key] == first["games"][game][key], (game, key)
        assert "online_expert_return" in again["games"][game]
        assert "online_raises" in report["checks"][game]
    folder = out / "seed0" / "top1"
    assert (folder / "checkpoint.pt").is_file()
    assert json.loads((folder / "multigame.json").read_text())["online"] == again["online"]
    assert f"eval/{GAMES[0]}/expert_return" in read_scalars(folder)
    # The run's own fine-tuning is untouched, and taken names are refused.
    assert (out / "seed0" / "finetune" / "checkpoint.pt").is_file()
    for name, message in (("top1", "seed0/top1 already exists"),
                          ("pretrain", "must be a plain folder name"),
                          ("..", "must be a plain folder name")):
        proc = bench(out, f"--finetune_only={name}")
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert sorted(p.name for p in (out / "seed0").iterdir()) == sorted([*before, "top1"])


def test_a_failing_actor_process_stops_the_online_stage(run, tmp_path):
    """An actor process that dies (here: its checkpoint cannot be read) stops the stage
    with RuntimeError naming it, and every actor process is joined."""
    import multiprocessing

    from launch.multigame import (
        _learn_beside_actor_processes,
        _Online,
        game_result,
        online_spec,
    )
    from launch.presets import RunConfig
    from learner.checkpoint import load_checkpoint
    from learner.finetune import learner_from_checkpoint
    from learner.tensorboard import SummaryWriter
    from replay.tables import start_server

    run_dir, _ = run
    cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    cfg = apply_setting(cfg, "multigame.actor_processes=true")
    learner = learner_from_checkpoint(load_checkpoint(run_dir / "pretrain" / "checkpoint.pt"),
                                      cfg.objective, cfg.optim, torch.device("cpu"), cfg.compute)
    spec = online_spec(cfg, 0)
    server = start_server(spec)
    data = load_multigame(run_dir / "data")
    results = {game: game_result(game, data[game]) for game in GAMES}
    writer = SummaryWriter(tmp_path / "tb")
    online = _Online(cfg, learner, f"127.0.0.1:{server.port}", spec, writer, results)
    try:
        with pytest.raises(RuntimeError, match=r"actor-(Pong|Breakout)-v5 exited with code 1"):
            _learn_beside_actor_processes(online, tmp_path / "missing.pt")
        assert multiprocessing.active_children() == []
        assert online.updates == 0
    finally:
        online.close()
        writer.close()
        server.stop()
