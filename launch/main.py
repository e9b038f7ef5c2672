"""`make run`: the main job on a preset, with local processes.

dataset (recorded when the preset has none) -> offline pretraining -> online
fine-tuning (Reverb server, actor processes, learner, evaluator) -> summary table;
TensorBoard logs under the run directory.
"""

from __future__ import annotations

import time

from absl import flags

from launch.flags import define_run_flags, new_run_dir, resolve_config, run_main
from launch.local import define_finetune_flags

define_run_flags()
define_finetune_flags()
flags.DEFINE_bool("online", True, "Fine-tune online after pretraining.")


def main(argv) -> None:
    del argv
    from launch.local import run_local
    from launch.pipeline import obtain_dataset, save_config, summary_table
    from learner.pretrain import pretrain

    FLAGS = flags.FLAGS
    start = time.perf_counter()
    cfg = resolve_config()
    run_dir = new_run_dir(FLAGS.logdir, cfg.name)
    save_config(run_dir, cfg)
    print(f"onramp: preset {cfg.name}, {cfg.env.env_id}, objective {cfg.objective.kind}, "
          f"run directory {run_dir}")
    dataset = obtain_dataset(cfg, run_dir)
    returns = dataset.returns
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
        online = run_local(cfg, result.checkpoint, run_dir, dataset_path=dataset.source)
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
        ("tensorboard", f"tensorboard --logdir {run_dir}"),
    ]
    print(summary_table(rows))


if __name__ == "__main__":
    run_main(main)
