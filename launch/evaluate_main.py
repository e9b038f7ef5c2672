"""`python -m actors.evaluate`: evaluate a checkpoint on envpool."""

from __future__ import annotations

from absl import flags

from launch.flags import run_main

flags.DEFINE_string("checkpoint", None, "Checkpoint file to evaluate.", required=True)
flags.DEFINE_integer("episodes", 10, "Deterministic episodes, one env each.")
flags.DEFINE_float("target_return", None, "Return-to-go target; default: the run's.")
flags.DEFINE_integer("context_len", None, "Steps of context; default: the run's (ODT: 5).")
flags.DEFINE_string("env_id", None, "envpool task; default: the run's.")
flags.DEFINE_string("task_id", None, "D4RL task id for the normalized score; default: the run's.")
flags.DEFINE_integer("seed", 10_000, "First evaluation seed.")


def main(argv) -> None:
    del argv
    from actors.evaluate import evaluate
    from learner.checkpoint import load_policy

    FLAGS = flags.FLAGS
    if FLAGS.episodes < 1:
        raise ValueError(f"--episodes={FLAGS.episodes} must be >= 1")
    model, payload = load_policy(FLAGS.checkpoint)
    run = payload.get("run_config", {})
    env_id = FLAGS.env_id or run.get("env", {}).get("env_id")
    if env_id is None:
        raise ValueError(f"{FLAGS.checkpoint} names no environment; pass --env_id")
    target = FLAGS.target_return
    if target is None:
        target = run.get("eval", {}).get("target_return")
    if target is None:
        raise ValueError(f"{FLAGS.checkpoint} names no target return; pass --target_return")
    task_id = FLAGS.task_id or run.get("env", {}).get("task_id")
    context_len = FLAGS.context_len or run.get("eval", {}).get("context_len", 5)
    result = evaluate(model, env_id, episodes=FLAGS.episodes, target_return=target,
                      context_len=context_len, seed=FLAGS.seed, task_id=task_id)
    print(f"{env_id}: {FLAGS.episodes} episodes at target return {target:g}, "
          f"context {context_len}")
    print(f"  return  mean {result.mean_return:.1f}  std {result.returns.std():.1f}  "
          f"min {result.returns.min():.1f}  max {result.returns.max():.1f}")
    print(f"  length  mean {result.lengths.mean():.1f}")
    if result.normalized_score is not None:
        print(f"  D4RL-normalized score ({task_id}): {result.normalized_score:.1f}")


def run() -> None:
    run_main(main)
