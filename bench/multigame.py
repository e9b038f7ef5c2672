"""Multi-game runs over seeds: one Multi-Game Decision Transformer against single-game
models, offline and after online fine-tuning (`launch.multigame`).

Per seed, in `<out>/seed<s>`: the preset's whole multi-game pipeline (its own recording,
pretraining, evaluation in 'expert' and 'target' modes, online fine-tuning and the
evaluation again), then, unless `--single_game=false`, one single-game model per game:
the same model config trained for the same number of updates on that game's episodes
of the same recording alone (`single/<game>/`), evaluated the same way. Prints one JSON
line per seed, then one JSON object with the medians over seeds per game of each score
(dataset mean and best return; expert and target returns of the multi-game model before
and after fine-tuning, and of the single-game model; human-normalized alike), each
stage's median seconds, and the comparisons the issue asks for:

- `expert_beats_target` / `both_beat_dataset_mean`: per game, on the medians;
- `multi_vs_single`: the multi-game model's median expert return minus the single-game
  model's, with the seeds' spread (max - min) of the single-game model beside it;
- `online_raises`: per game, whether the median expert return after fine-tuning is
  above the one before.

    python -m bench.multigame --seeds=0,1,2 [--preset=mgdt-atari3] [--out=runs/multigame]
        [--single_game=true] [--set=multigame.online_env_steps=60000 ...]

With `--evaluate_only`, the seeds' runs already in `--out` are played again (the
evaluation stage only: the pretrained, fine-tuned and single-game checkpoints there)
with their saved configs and the `--set` overrides, such as the inference settings
`multigame.num_return_samples` or `multigame.kappa`; each seed's curves go to
`<out>/seed<s>/evaluation/`, and the rows and the report are printed as above, without
stage times.

With `--finetune_only=NAME`, the online stage runs again from each seed's pretrained
checkpoint in `--out`, with the saved config and the `--set` overrides (such as
`replay.updates_per_env_step` or `multigame.preload_top_episodes`), into
`<out>/seed<s>/NAME/` (checkpoint, TensorBoard, `multigame.json`), followed by its
evaluation; each row keeps the run's own scores before fine-tuning, so the report's
`online_raises` compares the new fine-tuning against the same pretrained models. Keep
the inference settings of the run, or its scores before fine-tuning are not
comparable.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path

from absl import flags

from bench import pipeline_preset
from launch.flags import run_main

flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds.")
flags.DEFINE_string("out", "runs/multigame", "Folder for the runs (must not exist).")
flags.DEFINE_string("preset", "mgdt-atari3", "A multi-game preset.")
flags.DEFINE_bool("single_game", True, "Also train and evaluate one model per game.")
flags.DEFINE_multi_string("set", [], "Config override, dotted field=value, "
                          "e.g. --set=multigame.online_env_steps=60000; repeatable.")
flags.DEFINE_bool("evaluate_only", False, "Play the runs already in --out again (the "
                  "evaluation stage only) with their saved configs and the --set "
                  "overrides; --preset and --single_game are not read.")

flags.DEFINE_string("finetune_only", "", "Fine-tune the pretrained checkpoints of the "
                    "runs already in --out again (the online stage and its evaluation "
                    "only), with their saved configs and the --set overrides, into "
                    "<out>/seed<s>/<this name>/; --preset and --single_game are not read.")

MODES = ("expert", "target")
RUN_FOLDERS = ("data", "pretrain", "finetune", "single", "evaluation")
"""The folders a seed's run holds, which `--finetune_only` may not be named."""


def single_game_scores(cfg, run_dir: Path, game: str, episodes) -> dict:
    """Train `cfg`'s model on `game`'s recorded episodes alone (`episodes`, its
    `TaggedEpisode`s of run_dir/data) for `pretrain.updates` updates in
    run_dir/single/<game>, and play it in both modes as the multi-game model is played
    (`launch.multigame.evaluate_games`); returns `<mode>_return` per mode and the
    training seconds."""
    from launch.multigame import evaluate_games, game_result
    from learner.checkpoint import load_policy
    from learner.pretrain import train_offline
    from replay.frame_window import FrameSampler, concat_games

    steps = concat_games({game: episodes}, games=(game,), num_actions=cfg.model.act_dim)
    sampler = FrameSampler(steps, cfg.model.context_len, cfg.optim.batch_size, seed=cfg.seed)
    role_dir = run_dir / "single" / game
    start = time.perf_counter()
    trained = train_offline(cfg, sampler, role_dir, evaluate_fn=None,
                            source=str(run_dir / "data"), desc=f"single {game}")
    seconds = time.perf_counter() - start
    model, _ = load_policy(trained.checkpoint)
    result = game_result(game, episodes)
    evaluate_games(cfg, model, {game: result}, "returns", role_dir, trained.updates)
    return {**{f"{mode}_return": float(values.mean()) for mode, values in result.returns.items()},
            "seconds": round(seconds, 1)}


def add_single(row: dict, game: str, single: dict) -> None:
    """Put a single-game model's returns per mode (and human-normalized) into `row`."""
    from replay.atari_scores import human_normalized

    for mode in MODES:
        value = single[f"{mode}_return"]
        row["games"][game][f"single_{mode}_return"] = value
        row["games"][game][f"single_{mode}_human_normalized"] = human_normalized(game, value)


def check_runs(out: Path, seeds: list[int], flag: str, into: str) -> None:
    """Refuse `flag` unless every seed's run in `out` has a pretrained checkpoint and no
    `into` folder yet."""
    missing = [s for s in seeds if not (out / f"seed{s}" / "pretrain" / "checkpoint.pt").is_file()]
    if missing:
        raise FileNotFoundError(f"{flag}: {out} has no pretrained run for seed(s) "
                                f"{', '.join(map(str, missing))}")
    done = [s for s in seeds if (out / f"seed{s}" / into).exists()]
    if done:
        raise FileExistsError(f"{flag}: {out}/seed{done[0]}/{into} already exists")


def saved_run(run_dir: Path, settings: list[str], flag: str):
    """A benchmark run's saved config with the `--set` overrides `settings`, its recorded
    data (game -> episodes) and a fresh `GameResult` per game. Sets this process's
    torch threads to `compute.cpu_threads` when that names a count, as the pipeline
    does."""
    from launch.flags import apply_setting, checked
    from launch.multigame import game_result
    from launch.presets import RunConfig
    from learner.device import resolve_device, set_cpu_threads_if_asked
    from replay.multigame import load_multigame

    cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    for item in settings:
        cfg = apply_setting(cfg, item)
    cfg = checked(cfg)
    set_cpu_threads_if_asked(resolve_device(cfg.device), cfg.compute)
    data = load_multigame(run_dir / "data")
    unknown = [game for game in cfg.multigame.games if game not in data]
    if unknown:
        raise ValueError(f"{flag}: {run_dir / 'data'} has no episodes of "
                         f"{', '.join(unknown)} (it holds {', '.join(data)})")
    return cfg, data, {game: game_result(game, data[game]) for game in cfg.multigame.games}


def evaluate_again(out: Path, seeds: list[int], settings: list[str]) -> list[dict]:
    """`--evaluate_only` (module docstring): one row per seed, as `main` prints."""
    from launch.multigame import evaluate_games, game_result
    from learner.checkpoint import load_policy

    check_runs(out, seeds, "--evaluate_only", "evaluation")
    rows = []
    for seed in seeds:
        run_dir = out / f"seed{seed}"
        cfg, data, results = saved_run(run_dir, settings, "--evaluate_only")
        # Written under a partial name and renamed when the seed is done, so a failed
        # evaluation leaves no `evaluation/` that refuses the next try.
        evaluation = run_dir / "evaluation.partial"
        shutil.rmtree(evaluation, ignore_errors=True)
        for stage, field_name in (("pretrain", "returns"), ("finetune", "online_returns")):
            checkpoint = run_dir / stage / "checkpoint.pt"
            if checkpoint.is_file():
                model, payload = load_policy(checkpoint)
                evaluate_games(cfg, model, results, field_name, evaluation / stage,
                               int(payload["learner"]["step"]))
        row = {"seed": seed, "seconds": {}, "settings": settings,
               "games": {game: result.figures() for game, result in results.items()}}
        for game in results:
            checkpoint = run_dir / "single" / game / "checkpoint.pt"
            if checkpoint.is_file():
                model, payload = load_policy(checkpoint)
                single = game_result(game, data[game])
                evaluate_games(cfg, model, {game: single}, "returns",
                               evaluation / "single" / game, int(payload["learner"]["step"]))
                add_single(row, game, {f"{mode}_return": float(values.mean())
                                       for mode, values in single.returns.items()})
        evaluation.rename(run_dir / "evaluation")
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


ONLINE_KEYS = ("online_", "actor_")
"""Prefixes of a row's per-game figures that the online stage produces."""


def finetune_again(out: Path, seeds: list[int], settings: list[str], name: str) -> list[dict]:
    """`--finetune_only=name` (module docstring): one row per seed, as `main` prints."""
    from launch.multigame import evaluate_games, finetune_online
    from learner.checkpoint import load_policy

    flag = f"--finetune_only={name}"
    if (not name or name in RUN_FOLDERS or Path(name).name != name or name.startswith(".")
            or name.endswith(".partial")):
        raise ValueError(f"{flag}: the name must be a plain folder name, none of "
                         f"{', '.join(RUN_FOLDERS)}, not starting with '.' or ending in "
                         ".partial")
    check_runs(out, seeds, flag, name)
    rows = []
    for seed in seeds:
        run_dir = out / f"seed{seed}"
        cfg, _, results = saved_run(run_dir, settings, flag)
        if not cfg.multigame.online_env_steps:
            raise ValueError(f"{flag}: multigame.online_env_steps is 0")
        before = json.loads((run_dir / "multigame.json").read_text())["games"]
        unknown = [game for game in results if game not in before]
        if unknown:
            raise ValueError(f"{flag}: {run_dir / 'multigame.json'} has no scores of "
                             f"{', '.join(unknown)} before fine-tuning")
        # Written under a partial name and renamed when the seed is done (as
        # `evaluate_again`).
        partial = run_dir / f"{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        start = time.perf_counter()
        online = finetune_online(cfg, run_dir, run_dir / "pretrain" / "checkpoint.pt",
                                 results, logdir=partial)
        seconds = {"finetuning": time.perf_counter() - start}
        start = time.perf_counter()
        model, _ = load_policy(partial / "checkpoint.pt")
        evaluate_games(cfg, model, results, "online_returns", partial, online["env_steps"])
        seconds["online_evaluation"] = time.perf_counter() - start
        games = {}
        for game, result in results.items():
            offline = {k: v for k, v in before[game].items() if not k.startswith(ONLINE_KEYS)}
            games[game] = offline | {k: v for k, v in result.figures().items()
                                     if k.startswith(ONLINE_KEYS)}
        row = {"seed": seed, "seconds": {k: round(v, 1) for k, v in seconds.items()},
               "settings": settings, "online": online, "games": games}
        (partial / "multigame.json").write_text(json.dumps(row, indent=1))
        partial.rename(run_dir / name)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv) -> None:
    del argv
    from launch.multigame import run_multi_game
    from launch.pipeline import save_config
    from replay.multigame import load_multigame

    FLAGS = flags.FLAGS
    out = Path(FLAGS.out)
    seeds = [int(s) for s in FLAGS.seeds.split(",")]
    if FLAGS.evaluate_only and FLAGS.finetune_only:
        raise ValueError("--evaluate_only and --finetune_only: give one of them")
    if FLAGS.evaluate_only:
        print(json.dumps(report(evaluate_again(out, seeds, FLAGS.set))))
        return
    if FLAGS.finetune_only:
        print(json.dumps(report(finetune_again(out, seeds, FLAGS.set, FLAGS.finetune_only))))
        return
    base = pipeline_preset(FLAGS.preset, FLAGS.set, "multi_game", "bench.multigame",
                           "mgdt-atari3")
    if out.exists():
        raise FileExistsError(f"--out={out} already exists")
    out.mkdir(parents=True)
    rows = []
    for seed in seeds:
        cfg = replace(base, seed=seed)
        run_dir = out / f"seed{seed}"
        run_dir.mkdir()
        save_config(run_dir, cfg)
        results, trained, seconds, online = run_multi_game(cfg, run_dir)
        row = {"seed": seed, "seconds": {k: round(v, 1) for k, v in seconds.items()},
               "pretraining_updates_per_s": trained.updates_per_s, "online": online,
               "games": {game: result.figures() for game, result in results.items()}}
        if FLAGS.single_game:
            data = load_multigame(run_dir / "data")
            for game in results:
                single = single_game_scores(cfg, run_dir, game, data[game])
                row["seconds"][f"single_{game}"] = single.pop("seconds")
                add_single(row, game, single)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(json.dumps(report(rows)))


def report(rows: list[dict]) -> dict:
    """Medians over the seeds' rows, per game and score, and the comparisons of the
    module docstring."""
    games = list(rows[0]["games"])
    # A key some seed lacks (no actor episode finished) has no median.
    medians = {game: {key: statistics.median(row["games"][game][key] for row in rows)
                      for key in rows[0]["games"][game]
                      if all(key in row["games"][game] for row in rows)} for game in games}
    checks = {}
    for game, m in medians.items():
        check = {"expert_beats_target": m["expert_return"] > m["target_return"],
                 "both_beat_dataset_mean": min(m["expert_return"], m["target_return"])
                 > m["dataset_mean_return"]}
        if "single_expert_return" in m:
            singles = [row["games"][game]["single_expert_return"] for row in rows]
            check["multi_vs_single"] = m["expert_return"] - m["single_expert_return"]
            check["single_seed_spread"] = max(singles) - min(singles)
        if "online_expert_return" in m:
            check["online_raises"] = m["online_expert_return"] > m["expert_return"]
        checks[game] = check
    stages = {stage: statistics.median(row["seconds"][stage] for row in rows)
              for stage in rows[0]["seconds"]}
    return {"seeds": [row["seed"] for row in rows], "medians": medians, "checks": checks,
            "seconds": stages,
            "online_games_raised": sum(bool(c.get("online_raises")) for c in checks.values())}


if __name__ == "__main__":
    run_main(main)
