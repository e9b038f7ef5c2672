"""`python -m learner.pretrain`: pretrain offline from a dataset file or folder."""

from __future__ import annotations

from absl import flags

from launch.flags import (
    define_config_flags,
    define_logdir_flag,
    new_run_dir,
    resolve_config,
    run_main,
)

define_config_flags(pretrain=True)
define_logdir_flag()


def main(argv) -> None:
    del argv
    from launch.pipeline import (
        given_dataset,
        obtain_dataset,
        pretrain,
        save_config,
        tensorboard_command,
    )

    FLAGS = flags.FLAGS
    cfg = resolve_config()
    given = given_dataset(cfg)  # a bad dataset is refused before the run directory exists
    run_dir = new_run_dir(FLAGS.logdir, cfg.name)
    save_config(run_dir, cfg)
    dataset = obtain_dataset(cfg, run_dir, given=given)
    result = pretrain(cfg, dataset, run_dir, progress=True)
    print(f"pretrained {result.updates} updates at {result.updates_per_s:.1f} updates/s; "
          f"evaluation return {result.eval_return:.1f}")
    print(f"checkpoint: {result.checkpoint}")
    print(tensorboard_command(run_dir))


def run() -> None:
    run_main(main)
