"""Env steps/s of the multi-game online actor: one actor per game against one actor
whose batch mixes every game (`multigame.mix_games`), side by side in rounds.

Both layouts are built with the online stage's `actors.multigame.online_player`
(`multigame.online_envs` envpool environments per game, seeded as the stage seeds them,
expert-action inference with sampled actions; each player's sampling generator seeded
with `seed`) around one model on one torch thread, as an actor process runs. Per
round, each layout plays for --seconds, the two in alternating order from round to
round: the per-game actors take turns, each playing 8 steps of its environments at a
time (an actor process's chunk), and the mixed actor plays chunks of 8 steps of all
its environments, one forward pass per step for all games. Nothing is written to a
replay table: this is acting alone. Prints one JSON line per round and layout
(transitions, seconds, env steps/s), then one JSON object with each layout's median
steps/s and mixed / per_game.

    python -m bench.multigame_actor [--preset=mgdt-atari3] [--seconds=5] [--rounds=2]
        [--checkpoint=runs/<run>/pretrain/checkpoint.pt] [--set=multigame.online_envs=8]

Without --checkpoint the model is freshly initialised (the preset's model config);
its episodes are then those of a near-uniform policy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import torch

from actors.multigame import online_player
from bench import pipeline_preset
from launch.multigame import actor_games, game_seed

LAYOUTS = ("per_game", "mixed")


def measure(cfg, model, layout: str, seconds: float) -> dict:
    """Build `layout`'s actors (one `GamePlayer` per game, or one for all), play each
    one step of its environments to warm up, then play them in turn for `seconds`; the
    transitions, the seconds and env steps/s."""
    layout_cfg = replace(cfg, multigame=replace(cfg.multigame, mix_games=layout == "mixed"))
    built = []
    try:
        for group in actor_games(layout_cfg):
            built.append(online_player(cfg, model, group, [game_seed(cfg, g) for g in group],
                                       torch.Generator().manual_seed(cfg.seed)))
        for player in built:
            player.play(player.env.num_envs)
        taken, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for player in built:
                taken += player.play(player.env.num_envs * 8)[1]
        elapsed = time.perf_counter() - start
    finally:
        for player in built:
            player.close()
    return {"layout": layout, "actors": len(built), "transitions": taken,
            "seconds": round(elapsed, 3), "env_steps_per_s": round(taken / elapsed, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mgdt-atari3", help="a multi-game preset")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="playing time per layout and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--checkpoint", default=None,
                        help="a multi-game checkpoint to act with (default: fresh weights)")
    parser.add_argument("--set", action="append", default=[],
                        help="config override, dotted field=value; repeatable")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1:
        raise SystemExit(f"error: --seconds={args.seconds} must be > 0 and "
                         f"--rounds={args.rounds} >= 1")
    try:
        cfg = pipeline_preset(args.preset, args.set, "multi_game", "bench.multigame_actor",
                              "mgdt-atari3")
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    torch.set_num_threads(1)  # as launch.roles.multigame_actor_role
    if args.checkpoint:
        from learner.checkpoint import load_policy

        model, _ = load_policy(args.checkpoint)
    else:
        from models import build_model

        model = build_model(cfg.model, head=cfg.objective.policy(cfg.model.action_kind))
    model.eval()
    rates = {layout: [] for layout in LAYOUTS}
    for round_ in range(args.rounds):
        for layout in LAYOUTS[::-1] if round_ % 2 else LAYOUTS:
            row = measure(cfg, model, layout, args.seconds)
            rates[layout].append(row["env_steps_per_s"])
            print(json.dumps({"round": round_, **row}), flush=True)
    medians = {layout: statistics.median(values) for layout, values in rates.items()}
    print(json.dumps({"games": list(cfg.multigame.games),
                      "envs_per_game": cfg.multigame.online_envs,
                      "env_steps_per_s": medians,
                      "mixed_over_per_game": round(medians["mixed"] / medians["per_game"], 3)}),
          flush=True)


if __name__ == "__main__":
    main()
