"""`python -m actors.collect`: record a dataset with envpool."""

from __future__ import annotations

from absl import flags

from launch.flags import run_main

flags.DEFINE_string("env_id", None, "envpool task, e.g. InvertedPendulum-v4.", required=True)
flags.DEFINE_string("policy", "random", "'random', 'scripted', or a checkpoint file.")
flags.DEFINE_integer("episodes", 100, "Episodes to record.")
flags.DEFINE_integer("num_envs", 10, "Environments stepped together.")
flags.DEFINE_float("noise", 0.0, "Std of Gaussian noise on the actions (in [-1, 1] units).")
flags.DEFINE_integer("seed", 1, "Environment and noise seed.")
flags.DEFINE_string("out", None, "Output Minari folder or HDF5 file (must not exist).",
                    required=True)
flags.DEFINE_enum("format", "minari", ["minari", "d4rl"], "Output layout.")


def main(argv) -> None:
    del argv
    from actors.collect import collect
    from learner.checkpoint import load_policy

    FLAGS = flags.FLAGS
    if FLAGS.episodes < 1:
        raise ValueError(f"--episodes={FLAGS.episodes} must be >= 1")
    if FLAGS.num_envs < 1:
        raise ValueError(f"--num_envs={FLAGS.num_envs} must be >= 1")
    if FLAGS.noise < 0:
        raise ValueError(f"--noise={FLAGS.noise} must be >= 0")
    path, episodes = collect(FLAGS.env_id, FLAGS.policy, FLAGS.out, episodes=FLAGS.episodes,
                             num_envs=FLAGS.num_envs, seed=FLAGS.seed, noise=FLAGS.noise,
                             fmt=FLAGS.format, progress=True, load_policy=load_policy)
    returns = [ep.ret for ep in episodes]
    print(f"wrote {len(episodes)} episodes, {sum(ep.length for ep in episodes)} steps to {path}")
    print(f"  return mean {sum(returns) / len(returns):.1f}  min {min(returns):.1f}  "
          f"max {max(returns):.1f}")


def run() -> None:
    run_main(main)
