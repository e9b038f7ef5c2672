"""What every launcher does around the run program (`launch.program`).

Before the roles start, `start_run` fits the config to the checkpoint
(`fit_model_to_checkpoint`: the checkpoint defines the network, so the replay windows
take its context length) and records what the run started from. While they run,
`watch_budget` reads the replay server's counters until the environment-step budget;
once the actors have stopped there, `wait_for_owed_updates` lets the learner make the
updates those steps owe it. After them, `final_summary` evaluates the learner's last
checkpoint. On `--resume`, `resume_run` reads the run directory back. `launch.local`,
`launch.ray` and `launch.node` call these; none keeps a copy.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from absl import flags

from launch.program import env_steps, samples_owed
from launch.supervisor import RoleDied


@dataclass
class FinetuneSummary:
    env_steps: int
    updates: int
    seconds: float
    final_return: float
    final_normalized: float | None
    learner_checkpoint: Path

    @property
    def env_steps_per_s(self) -> float:
        return self.env_steps / self.seconds if self.seconds else 0.0

    @property
    def updates_per_s(self) -> float:
        return self.updates / self.seconds if self.seconds else 0.0

    def rows(self, objective: str) -> list[tuple[str, str]]:
        """The summary table an entry point prints at the end of a run."""
        return [
            ("objective", objective),
            ("env steps", str(self.env_steps)),
            ("updates", str(self.updates)),
            ("fine-tuned eval return", f"{self.final_return:.1f}"),
            ("wall time", f"{self.seconds:.0f} s"),
            ("env steps/s", f"{self.env_steps_per_s:.0f}"),
            ("updates/s", f"{self.updates_per_s:.1f}"),
            ("checkpoint", str(self.learner_checkpoint)),
        ]


def env_info(env_id: str) -> dict:
    """The env spec as plain values for the roles (`actors.envs.EnvSpec.info`: shapes,
    dtypes, action bounds or number of actions, episode limit)."""
    from actors.envs import env_spec

    return env_spec(env_id).info()


def resume_hint(run_dir: Path) -> str:
    return f"resume with: python -m launch.local --resume --logdir={run_dir}"


def fit_model_to_checkpoint(cfg, payload: dict, checkpoint, env_info: dict):
    """`cfg` with the checkpoint's model; CheckpointError when it cannot act in cfg's env.

    The checkpoint defines the network (its width and depth come from pretraining);
    its observation, action and context sizes must fit the environment and the
    replay windows of this run.
    """
    from learner.checkpoint import CheckpointError, model_config_from

    model = model_config_from(payload)
    problem = model_env_mismatch(model, env_info)
    if problem:
        raise CheckpointError(f"{checkpoint}: {problem} of {cfg.env.env_id}; was it "
                              "pretrained for another preset?")
    return replace(cfg, model=model)


def model_env_mismatch(model, info: dict) -> str | None:
    """Why the model `model` (a ModelConfig) cannot act in the env `info` describes, or
    None: its observations (vector size or frame shape, dtype) and actions (kind and
    size) must be the env's."""
    obs = tuple(info["observation_shape"])
    model_obs = tuple(model.frame_shape) or (model.state_dim,)
    image = info.get("observation_dtype") == "uint8"
    num_actions = info.get("num_actions", 0)
    model_act = (f"{model.act_dim} discrete actions" if model.action_kind == "discrete"
                 else f"actions of shape {(model.act_dim,)}")
    env_act = (f"{num_actions} discrete actions" if num_actions
               else f"actions of shape {tuple(info['action_shape'])}")
    if model_obs != obs or bool(model.frame_shape) != image:
        kind = "uint8 frames" if model.frame_shape else "observations"
        env_kind = "uint8 frames" if image else "observations"
        return (f"the model takes {kind} of shape {model_obs}, not the {env_kind} of shape "
                f"{obs}")
    if model_act != env_act:
        return f"the model takes {model_act}, not the {env_act}"
    return None


def start_run(cfg, checkpoint, run_dir: Path, dataset_path: str | None):
    """What every launcher does first: the config fitted to the checkpoint, the run's
    record of what it started from (`finetune.json` and `config.json`, kept on
    resume), and its paths (the checkpoint's made absolute, for roles on other hosts).
    Returns (cfg, checkpoint payload, env info, dataset path, RunPaths)."""
    from launch import roles
    from launch.pipeline import save_config
    from learner.checkpoint import load_checkpoint

    payload = load_checkpoint(checkpoint)
    info = env_info(cfg.env.env_id)
    cfg = fit_model_to_checkpoint(cfg, payload, checkpoint, info)
    dataset_path = dataset_path or payload.get("dataset")
    checkpoint = str(Path(checkpoint).absolute())
    started_from = run_dir / "finetune.json"
    if not started_from.exists():
        save_config(run_dir, cfg)
        started_from.write_text(json.dumps({"checkpoint": checkpoint, "dataset": dataset_path}))
    return cfg, payload, info, dataset_path, roles.RunPaths(str(run_dir), checkpoint)


def final_summary(cfg, paths, pretrained: dict, seconds: float) -> FinetuneSummary:
    """Evaluate the learner's last checkpoint (logged at the final env step) and sum up."""
    from launch import roles
    from learner.checkpoint import load_policy
    from learner.tensorboard import SummaryWriter

    model, final = load_policy(paths.learner_checkpoint)
    with SummaryWriter(paths.role_dir("evaluator")) as writer:
        result = roles.evaluate_and_log(cfg, model, writer, final["env_steps"],
                                        final["learner"]["step"])
    return FinetuneSummary(
        env_steps=int(final["env_steps"]),
        updates=int(final["learner"]["step"]) - int(pretrained["learner"]["step"]),
        seconds=seconds,
        final_return=result.mean_return,
        final_normalized=result.normalized_score,
        learner_checkpoint=paths.learner_checkpoint,
    )


def watch_budget(address: str, preload: int, budget: int, status: bool, poll,
                 restarts=lambda: 0) -> int:
    """Read the replay server's counters every second until the env-step budget is
    reached; `poll()` raises RoleDied when a role has died (and restarts what may be);
    with `status`, a status line shows progress and `restarts()`."""
    from replay.tables import as_client

    client = as_client(address)
    start = time.perf_counter()
    steps = first = None
    while steps is None or steps < budget:
        time.sleep(1.0)
        counts = _experience_counts(client, poll)
        steps = env_steps(counts, preload)
        first = steps if first is None else first
        if status:
            elapsed = time.perf_counter() - start
            restarted = restarts()
            print(f"\r[{elapsed:6.0f} s] env steps {steps}/{budget} "
                  f"({(steps - first) / elapsed:.0f}/s)  learner samples "
                  f"{counts['samples']:.0f}  replay size {counts['size']:.0f}"
                  + (f"  restarts {restarted}" if restarted else ""),
                  end="", file=sys.stderr, flush=True)
    if status:
        print(file=sys.stderr)
    return steps


def wait_for_owed_updates(address: str, preload: int, samples_per_insert: float, poll,
                          status: bool, stall_s: float = 60.0) -> None:
    """Once the actors have stopped at the budget: wait until the learner has sampled
    the windows the run's environment steps owe it (`samples_per_insert` each), so a
    run makes `replay.updates_per_env_step` updates per environment step however far
    the rate limiter's tolerance let the actors run ahead of the learner (up to
    `replay.tolerance_steps` steps' worth of updates). The rate limiter admits these
    samples: they bring it back to its centre. The few batches the learner's stream
    takes ahead of its updates count as sampled, so the learner may end that many
    updates short.

    `poll()` raises RoleDied when a role has died, as does a replay server that stops
    answering. Gives up, with a message, when the sample count has not risen for
    `stall_s`.
    """
    from replay.tables import as_client

    client = as_client(address)
    last, last_rise = None, time.monotonic()
    while True:
        counts = _experience_counts(client, poll)
        owed = samples_owed(counts, preload, samples_per_insert)
        if owed <= 0:
            break
        samples = counts["samples"]
        if last is None or samples > last:
            last, last_rise = samples, time.monotonic()
        elif time.monotonic() - last_rise > stall_s:
            print(f"\nthe learner sampled nothing for {stall_s:g} s with {owed:.0f} samples "
                  "still owed; stopping it", file=sys.stderr, flush=True)
            return
        if status:
            print(f"\rlearner catching up: samples {samples:.0f}/{samples + owed:.0f}",
                  end="", file=sys.stderr, flush=True)
        time.sleep(0.5)
    if status and last is not None:
        print(file=sys.stderr)


def _experience_counts(client, poll) -> dict[str, int]:
    """`poll()`, then the experience table's counters; RoleDied when the replay server
    stops answering (after another `poll()`, which names a role that died first)."""
    from replay.tables import EXPERIENCE_TABLE, ReplayUnavailable, table_counts

    poll()
    try:
        return table_counts(client, EXPERIENCE_TABLE)
    except (ReplayUnavailable, RuntimeError):
        poll()
        raise RoleDied("the replay server stopped answering") from None


# Flags a resumed run may not change: it continues with its saved config.
_FIXED_ON_RESUME = ("preset", "dataset", "seed", "device", "objective", "pretrain_updates",
                    "critic_pretrain_updates",
                    "eval_episodes", "collect_episodes", "num_actors", "envs_per_actor",
                    "set", "checkpoint")


def saved_config(run_dir: Path):
    """The run's saved config.json, with --env_steps if given, for --resume.

    ValueError when a flag tries to change the config (only --env_steps may) or
    when there is no readable config.json.
    """
    from launch.flags import checked
    from launch.presets import RunConfig

    FLAGS = flags.FLAGS
    changed = [f"--{name}" for name in _FIXED_ON_RESUME if name in FLAGS and FLAGS[name].present]
    if changed:
        raise ValueError(f"--resume continues {run_dir} with its saved config; "
                         f"{', '.join(changed)} cannot change it (only --env_steps can)")
    path = run_dir / "config.json"
    if not path.is_file():
        raise ValueError(f"--logdir={run_dir}: no config.json; nothing to resume")
    try:
        cfg = RunConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path}: unreadable saved config ({exc})") from exc
    if FLAGS.env_steps is not None:
        cfg = replace(cfg, finetune=replace(cfg.finetune, env_steps=FLAGS.env_steps))
    return checked(cfg)


def resume_run(logdir: str | None) -> tuple[object, Path, Path, str | None]:
    """(config, checkpoint, run directory, dataset) of the fine-tuning run to continue.

    The config is `saved_config`; the checkpoint is the learner's latest, or the one
    the run started from when the learner never wrote one. ValueError when there is
    nothing to resume.
    """
    if not logdir:
        raise ValueError("--resume needs --logdir: the run directory to continue")
    run_dir = Path(logdir)
    cfg = saved_config(run_dir)
    started = run_dir / "finetune.json"
    if not started.is_file():
        raise ValueError(f"--logdir={run_dir}: not a fine-tuning run directory "
                         "(no finetune.json); nothing to resume")
    try:
        origin = json.loads(started.read_text())
    except ValueError as exc:
        raise ValueError(f"{started}: unreadable ({exc})") from exc
    checkpoint = run_dir / "learner" / "checkpoint.pt"
    if not checkpoint.is_file():
        checkpoint = Path(origin["checkpoint"])
    return cfg, checkpoint, run_dir, origin.get("dataset")
