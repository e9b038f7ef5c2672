"""`make run`: the main job on a preset.

dataset (recorded when the preset has none) -> offline pretraining -> evaluation ->
summary table; TensorBoard logs under the run directory.
"""

from __future__ import annotations

import time

from absl import flags

from launch.flags import define_run_flags, new_run_dir, resolve_config, run_main

define_run_flags()


def main(argv) -> None:
    del argv
    from launch.pipeline import obtain_dataset, save_config, summary_table
    from learner.pretrain import pretrain

    FLAGS = flags.FLAGS
    start = time.perf_counter()
    cfg = resolve_config()
    run_dir = new_run_dir(FLAGS.logdir, cfg.name)
    save_config(run_dir, cfg)
    print(f"onramp: preset {cfg.name}, {cfg.env.env_id}, run directory {run_dir}")
    dataset = obtain_dataset(cfg, run_dir)
    returns = dataset.returns
    result = pretrain(cfg, dataset, run_dir, progress=True)
    rows = [
        ("preset", cfg.name),
        ("environment", cfg.env.env_id),
        ("dataset", f"{len(dataset.episodes)} episodes, {dataset.num_steps} steps"),
        ("dataset return", f"mean {returns.mean():.1f} (min {returns.min():.1f}, "
                           f"max {returns.max():.1f})"),
        ("pretraining", f"{result.updates} updates, {result.updates_per_s:.1f} updates/s"),
        ("pretrained eval return", f"{result.eval_return:.1f} "
                                   f"({cfg.eval.episodes} episodes, target {cfg.eval.target_return:g})"),
    ]
    if result.eval_normalized is not None:
        rows.append(("pretrained normalized", f"{result.eval_normalized:.1f}"))
    rows += [
        ("wall time", f"{time.perf_counter() - start:.0f} s"),
        ("checkpoint", str(result.checkpoint)),
        ("tensorboard", f"tensorboard --logdir {run_dir}"),
    ]
    print(summary_table(rows))


if __name__ == "__main__":
    run_main(main)
