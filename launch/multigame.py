"""The multi-game pipeline (`RunConfig.pipeline = "multi_game"`): one Multi-Game Decision
Transformer (Lee et al. 2022) for several Atari games, offline.

Stages, each writing under the run directory:

1. `data/`: mixed-quality episodes of every game of `multigame.games`, recorded with
   onramp's envpool actors (`actors.multigame.record_games`: uniform random and sticky
   random play), one frame per step, the full 18-action set; a Minari folder with each
   episode's game and policy (`replay.multigame`).
2. `pretrain/`: one model on every game's windows (`replay.frame_window`, games drawn
   equally often with `multigame.balance_games`), the 'mgdt' objective (action, return
   bucket and reward class cross-entropies).
3. Per game, `multigame.eval_episodes` episodes with expert-action inference
   (`models.mgdt.MultiGamePolicy` 'expert', kappa `multigame.kappa`) and with plain
   conditioning on the dataset's best return ('target'); raw and human-normalized
   returns (`replay.atari_scores`), written to `multigame.json` and TensorBoard
   (`eval/<game>/{expert,target}_return`, `..._human_normalized` in `pretrain/`).

    python -m launch.main --preset=mgdt-atari3 [--set=multigame.games=...]
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from actors.envs import MGDT_OPTIONS, VectorEnv
from actors.multigame import record_games
from learner.pretrain import PretrainResult, train_offline
from learner.tensorboard import SummaryWriter
from replay.atari_scores import human_normalized
from replay.frame_window import FrameSampler, concat_games
from replay.multigame import write_multigame

CLIP = 1.0
"""Rewards are clipped to [-CLIP, CLIP] for returns-to-go and the reward classes."""


@dataclass
class GameResult:
    """One game: its dataset's returns (raw, and of clipped rewards) and the evaluation
    returns per mode ('expert', 'target')."""

    game: str
    dataset_returns: np.ndarray
    dataset_clipped_returns: np.ndarray
    returns: dict[str, np.ndarray]

    def figures(self) -> dict:
        out = {"dataset_mean_return": float(self.dataset_returns.mean()),
               "dataset_best_return": float(self.dataset_returns.max()),
               "dataset_episodes": len(self.dataset_returns)}
        for mode, values in self.returns.items():
            out[f"{mode}_return"] = float(values.mean())
            out[f"{mode}_human_normalized"] = human_normalized(self.game, float(values.mean()))
        out["dataset_mean_human_normalized"] = human_normalized(self.game,
                                                                out["dataset_mean_return"])
        return out


def env_options(cfg) -> dict:
    """The MGDT's envpool options, with the preset's episode limit."""
    options = dict(MGDT_OPTIONS)
    if cfg.multigame.max_steps_per_episode:
        options["max_episode_steps"] = cfg.multigame.max_steps_per_episode
    return options


def play(model, game: str, episodes: int, seed: int, options: dict, mode: str,
         kappa: float = 0.0, target_return: float | None = None) -> np.ndarray:
    """Raw returns of `episodes` episodes of `game`, one env each, played with the model
    through `MultiGamePolicy` in `mode`; each env plays one episode."""
    from models.mgdt import MultiGamePolicy

    model.eval()
    device = next(model.parameters()).device
    policy = MultiGamePolicy(model, episodes, mode=mode, kappa=kappa,
                             target_return=target_return)
    generator = torch.Generator(device=device).manual_seed(seed)
    env = VectorEnv(game, episodes, seed, options=options)
    returns = np.zeros(episodes)
    done = np.zeros(episodes, bool)
    try:
        frames = env.reset()
        policy.reset()
        while not done.all():
            actions = policy.act(frames, generator=generator)
            result = env.step(actions)
            policy.record(actions, result.rewards, result.terminated)
            live = result.is_transition & ~done
            returns[live] += result.rewards[live]
            done |= live & result.done
            frames = result.observations
    finally:
        env.close()
    return returns


def run_multi_game(cfg, run_dir: Path) -> tuple[dict[str, GameResult], PretrainResult, dict]:
    """The three stages for `cfg` (pipeline 'multi_game') in `run_dir`: per game its
    result, the pretraining result, and seconds per stage."""
    from learner.checkpoint import load_policy

    mg, seconds = cfg.multigame, {}
    options = env_options(cfg)
    start = time.perf_counter()
    data = record_games(mg.games, dict(mg.episodes_per_policy), cfg.seed, options,
                        num_envs=mg.record_envs)
    write_multigame(run_dir / "data", data, num_actions=cfg.model.act_dim)
    seconds["recording"] = time.perf_counter() - start
    steps = concat_games(data, num_actions=cfg.model.act_dim)
    per_game = steps.steps_per_game
    print("data: " + ", ".join(f"{game} {len(data[game])} episodes / {per_game[game]} steps"
                               for game in mg.games), flush=True)
    results = {}
    for game in mg.games:
        raw = np.array([tagged.episode.ret for tagged in data[game]])
        clipped = np.array([float(np.clip(tagged.episode.rewards, -CLIP, CLIP).sum())
                            for tagged in data[game]])
        results[game] = GameResult(game, raw, clipped, {})
    del data

    start = time.perf_counter()
    sampler = FrameSampler(steps, cfg.model.context_len, cfg.optim.batch_size, seed=cfg.seed,
                           balance_games=mg.balance_games)
    trained = train_offline(
        cfg, sampler, run_dir / "pretrain", evaluate_fn=None, source=str(run_dir / "data"),
        desc="MGDT", progress=True,
        dataset_scalars={"dataset/steps": len(steps), "dataset/games": len(mg.games)})
    seconds["pretraining"] = time.perf_counter() - start
    del steps, sampler

    start = time.perf_counter()
    model, _ = load_policy(trained.checkpoint)
    with SummaryWriter(run_dir / "pretrain") as writer:
        for game, result in results.items():
            best = float(result.dataset_clipped_returns.max())
            result.returns["expert"] = play(model, game, mg.eval_episodes, cfg.eval.seed,
                                            options, "expert", kappa=mg.kappa)
            result.returns["target"] = play(model, game, mg.eval_episodes, cfg.eval.seed,
                                            options, "target", target_return=best)
            for mode, values in result.returns.items():
                writer.scalars({f"eval/{game}/{mode}_return": float(values.mean()),
                                f"eval/{game}/{mode}_human_normalized":
                                    human_normalized(game, float(values.mean()))},
                               trained.updates)
    seconds["evaluation"] = time.perf_counter() - start
    (run_dir / "multigame.json").write_text(json.dumps(
        {"games": {game: result.figures() for game, result in results.items()},
         "seconds": {k: round(v, 1) for k, v in seconds.items()},
         "pretraining_updates_per_s": trained.updates_per_s}, indent=1))
    return results, trained, seconds
