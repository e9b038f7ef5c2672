"""The multi-game pipeline (`launch.main --preset=mgdt-atari3`, `launch.multigame`) end to
end at a tiny size: real envpool Atari for two games, the multi-game dataset, one MGDT
pretrained on both, per-game evaluation in both modes with human-normalized scores.
Whether the model plays well is a benchmark's question, not this test's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from launch.flags import apply_setting
from launch.presets import get_preset
from learner.tensorboard import read_scalars
from replay.atari_scores import human_normalized
from replay.multigame import load_multigame

REPO = Path(__file__).resolve().parents[1]
GAMES = ("Pong-v5", "Breakout-v5")

TINY = ["--set=pretrain.updates=4", "--set=pretrain.log_every=2",
        f"--set=multigame.games={','.join(GAMES)}", "--set=multigame.max_steps_per_episode=40",
        "--set=multigame.eval_episodes=2",
        '--set=multigame.episodes_per_policy={"random": 2, "noisy:0.3": 1}',
        "--set=model.n_layer=1", "--set=model.embed_dim=32", "--set=model.ffn_dim=64",
        "--set=optim.batch_size=4"]


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
