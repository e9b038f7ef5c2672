"""`make run`: the main job on a preset, with local processes.

dataset (recorded when the preset has none) -> offline pretraining -> online
fine-tuning (Reverb server, actor processes, learner, evaluator) -> summary table;
TensorBoard logs under the run directory.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from absl import flags

from launch.flags import (
    define_config_flags,
    define_finetune_flags,
    define_games_flag,
    define_logdir_flag,
    define_mode_flag,
    define_resume_flag,
    new_run_dir,
    resolve_config,
    run_main,
)

define_config_flags(pretrain=True)
define_logdir_flag()
define_finetune_flags()
define_mode_flag()
define_resume_flag()
define_games_flag()
flags.DEFINE_bool("online", True, "Fine-tune online after pretraining.")


def _resume_stages(run_dir: Path):
    """What a --resume of the main job can reuse: (config, dataset, pretraining result).

    The dataset is reused once recorded, pretraining once it wrote its final
    checkpoint; a started fine-tuning run continues from its own checkpoints.
    """
    from launch.pipeline import obtain_dataset, recorded_dataset_path
    from launch.runs import saved_config
    from learner.checkpoint import load_checkpoint
    from learner.pretrain import PretrainResult
    from learner.tensorboard import read_scalars
    from replay.datasets import load_dataset

    cfg = saved_config(run_dir)
    recorded = recorded_dataset_path(cfg, run_dir)
    if cfg.data.path is None and (recorded.is_file() or
                                  (recorded.is_dir() and any(recorded.iterdir()))):
        dataset = load_dataset(recorded)
    else:
        if recorded.is_dir():  # an interrupted recording: record it again
            shutil.rmtree(recorded)
        dataset = obtain_dataset(cfg, run_dir)
    checkpoint = run_dir / "pretrain" / "checkpoint.pt"
    result = None
    if checkpoint.is_file() and load_checkpoint(checkpoint)["updates"] >= cfg.pretrain.updates:
        evals = read_scalars(run_dir / "pretrain").get("eval/return", [(0, float("nan"))])
        result = PretrainResult(checkpoint=checkpoint, updates=cfg.pretrain.updates,
                                updates_per_s=float("nan"), eval_return=evals[-1][1],
                                eval_normalized=None, metrics={})
    return cfg, dataset, result


def saved_pipeline(run_dir: Path) -> str:
    """The pipeline a run directory's saved config names ('offline_online' when absent)."""
    import json

    config = run_dir / "config.json"
    if not config.is_file():
        return "offline_online"
    return json.loads(config.read_text()).get("pipeline", "offline_online")


def _in_context(cfg, start: float) -> None:
    """The in-context pipeline (`launch.incontext`): histories, AD and ED, evaluation."""
    from launch.incontext import run_in_context, summary, task_list
    from launch.pipeline import save_config, summary_table, tensorboard_command

    run_dir = new_run_dir(flags.FLAGS.logdir, cfg.name)
    save_config(run_dir, cfg)
    print(f"onramp: preset {cfg.name}, {cfg.env.env_id}, in-context pipeline, run directory "
          f"{run_dir}")
    result = run_in_context(cfg, run_dir)
    figures = summary(result)
    rows = [("preset", cfg.name), ("environment", cfg.env.env_id),
            ("held-out tasks", task_list(result.held_out)),
            ("optimal return", f"{figures['optimal_return']:.2f} (mean over held-out tasks)"),
            ("random policy return", f"{figures['random_return']:.2f}")]
    for name in result.returns:
        f = figures[name]
        reach = f["episodes_to_70pct_optimal"]
        rows.append((f"{name} return", f"episode 1: {f['first_episode']:.2f}, episodes 30-40: "
                                       f"{f['episodes_30_40']:.2f} "
                                       f"({f['episodes_30_40_of_optimal']:.0%} of optimal), "
                                       f"70% of optimal at episode {reach or 'never'}"))
    for stage, seconds in result.seconds.items():
        rows.append((f"time: {stage}", f"{seconds:.0f} s"))
    rows += [("wall time", f"{time.perf_counter() - start:.0f} s"),
             ("plot", str(run_dir / "incontext.png")),
             ("tensorboard", tensorboard_command(run_dir))]
    print(summary_table(rows))


def _multi_game(cfg, start: float) -> None:
    """The multi-game pipeline (`launch.multigame`): data, one model, per-game scores."""
    from launch.multigame import run_multi_game
    from launch.pipeline import save_config, summary_table, tensorboard_command

    run_dir = new_run_dir(flags.FLAGS.logdir, cfg.name)
    save_config(run_dir, cfg)
    print(f"onramp: preset {cfg.name}, games {', '.join(cfg.multigame.games)}, multi-game "
          f"pipeline, run directory {run_dir}")
    results, trained, seconds, online = run_multi_game(cfg, run_dir)
    rows = [("preset", cfg.name),
            ("pretraining", f"{trained.updates} updates, {trained.updates_per_s:.1f} updates/s")]
    if online:
        actors = "one actor for all games" if cfg.multigame.mix_games else "an actor per game"
        where = "in processes" if cfg.multigame.actor_processes else "taking turns"
        rows.append(("fine-tuning", f"{online['env_steps']} env steps "
                                    f"({online['env_steps_per_s']:.0f}/s acting), "
                                    f"{online['updates']} updates "
                                    f"({online['updates_per_s']:.1f}/s learning); "
                                    f"{actors}, {where}"))
    for game, result in results.items():
        f = result.figures()
        rows.append((game, f"data mean {f['dataset_mean_return']:.1f} (best "
                           f"{f['dataset_best_return']:.1f}); expert "
                           f"{f['expert_return']:.1f} ({f['expert_human_normalized']:.1f} HNS); "
                           f"target {f['target_return']:.1f} "
                           f"({f['target_human_normalized']:.1f} HNS)"))
        if "online_expert_return" in f:
            rows.append((f"{game} online", f"expert {f['online_expert_return']:.1f} "
                                           f"({f['online_expert_human_normalized']:.1f} HNS); "
                                           f"target {f['online_target_return']:.1f} "
                                           f"({f['online_target_human_normalized']:.1f} HNS); "
                                           f"actors' mean {f['actor_mean_return']:.1f} over "
                                           f"{f['actor_episodes']} episodes"))
    for stage, value in seconds.items():
        rows.append((f"time: {stage}", f"{value:.0f} s"))
    rows += [("wall time", f"{time.perf_counter() - start:.0f} s"),
             ("tensorboard", tensorboard_command(run_dir))]
    print(summary_table(rows))


def main(argv) -> None:
    del argv
    from launch.local import run_inline, run_local
    from launch.pipeline import (
        given_dataset,
        obtain_dataset,
        pretrain,
        save_config,
        summary_table,
        tensorboard_command,
    )
    from launch.runs import resume_run

    FLAGS = flags.FLAGS
    start = time.perf_counter()
    result = None
    if FLAGS.resume:
        if not FLAGS.logdir:
            raise ValueError("--resume needs --logdir: the run directory to continue")
        run_dir = Path(FLAGS.logdir)
        if saved_pipeline(run_dir) != "offline_online":
            raise ValueError(f"--resume continues offline-to-online runs; {run_dir} is an "
                             f"in-context run: start it again")
        cfg, dataset, result = _resume_stages(run_dir)
        print(f"onramp: resuming {run_dir}")
    else:
        cfg = resolve_config()
        if cfg.pipeline == "in_context":
            _in_context(cfg, start)
            return
        if cfg.pipeline == "multi_game":
            _multi_game(cfg, start)
            return
        given = given_dataset(cfg)  # a bad dataset is refused before the run directory exists
        run_dir = new_run_dir(FLAGS.logdir, cfg.name)
        save_config(run_dir, cfg)
        print(f"onramp: preset {cfg.name}, {cfg.env.env_id}, objective {cfg.objective.kind}, "
              f"run directory {run_dir}")
        dataset = obtain_dataset(cfg, run_dir, given=given)
    returns = dataset.returns
    if result is None:
        result = pretrain(cfg, dataset, run_dir, progress=True)
    rows = [
        ("preset", cfg.name),
        ("environment", cfg.env.env_id),
        ("objective", cfg.objective.kind),
        ("dataset", f"{len(dataset.episodes)} episodes, {dataset.num_steps} steps"),
        ("dataset return", f"mean {returns.mean():.1f} (min {returns.min():.1f}, "
                           f"max {returns.max():.1f})"),
        ("pretraining", f"{result.updates} updates, {result.updates_per_s:.1f} updates/s"),
        ("pretrained eval return", f"{result.eval_return:.1f} "
                                   f"({cfg.eval.episodes} episodes, target {cfg.eval.target_return:g})"),
    ]
    if result.eval_normalized is not None:
        rows.append(("pretrained normalized", f"{result.eval_normalized:.1f}"))
    if FLAGS.online:
        print(f"fine-tuning online: {cfg.actor.num_actors} actors x {cfg.actor.envs_per_actor} "
              f"envs, budget {cfg.finetune.env_steps} env steps")
        checkpoint = result.checkpoint
        if FLAGS.resume and (run_dir / "finetune.json").is_file():
            cfg, checkpoint, _, _ = resume_run(str(run_dir))
        run = run_inline if FLAGS.mode == "inline" else run_local
        online = run(cfg, checkpoint, run_dir, dataset_path=dataset.source)
        rows += [
            ("fine-tuned eval return", f"{online.final_return:.1f}"),
            ("online env steps", f"{online.env_steps} ({online.env_steps_per_s:.0f}/s)"),
            ("online updates", f"{online.updates} ({online.updates_per_s:.1f}/s)"),
        ]
        if online.final_normalized is not None:
            rows.append(("fine-tuned normalized", f"{online.final_normalized:.1f}"))
        rows.append(("checkpoint", str(online.learner_checkpoint)))
    else:
        rows.append(("checkpoint", str(result.checkpoint)))
    rows += [
        ("wall time", f"{time.perf_counter() - start:.0f} s"),
        ("tensorboard", tensorboard_command(run_dir)),
    ]
    print(summary_table(rows))


if __name__ == "__main__":
    run_main(main)
