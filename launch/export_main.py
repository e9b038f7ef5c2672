"""`python -m replay.export`: a fine-tuning run's online episodes as a Minari dataset."""

from __future__ import annotations

from absl import flags

from launch.flags import run_main

flags.DEFINE_string("logdir", None, "Run directory whose actors logged their episodes.",
                    required=True)
flags.DEFINE_string("out", None, "Output Minari folder (must not exist, or be empty).",
                    required=True)


def main(argv) -> None:
    del argv
    from replay.datasets import load_dataset
    from replay.export import export_run

    FLAGS = flags.FLAGS
    path = export_run(FLAGS.logdir, FLAGS.out)
    dataset = load_dataset(path)
    print(f"wrote {len(dataset.episodes)} episodes, {dataset.num_steps} steps of "
          f"{dataset.metadata.get('env_id')} ({dataset.metadata.get('policy')}) to {path}")


def run() -> None:
    run_main(main)
