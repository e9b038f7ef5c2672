"""The steps of the main job, shared by the entry points: dataset, pretrain, evaluate."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

from replay.datasets import OfflineDataset, check_against_env, load_dataset


def check_dataset_fits(dataset: OfflineDataset, spec) -> None:
    """DatasetError unless `dataset` fits the spaces of the env `spec`
    (`actors.envs.EnvSpec`): its shapes, and its actions in the Box or Discrete space."""
    if spec.discrete:
        check_against_env(dataset, observation_shape=spec.observation_shape,
                          action_shape=spec.action_shape, num_actions=spec.num_actions)
    else:
        check_against_env(dataset, observation_shape=spec.observation_shape,
                          action_shape=spec.action_shape, action_low=spec.action_low,
                          action_high=spec.action_high)


def save_config(run_dir: Path, cfg) -> Path:
    path = run_dir / "config.json"
    path.write_text(json.dumps(cfg.to_dict(), indent=2, default=str))
    return path


def checked_dataset(path: str | Path, env_id: str) -> OfflineDataset:
    """The dataset at `path`, read, validated and checked against `env_id`'s spaces.

    Raises DatasetError (or FileNotFoundError) naming the file and the problem, and
    EnvError for an unknown environment. Entry points call it before they make a run
    directory, so bad input leaves nothing behind.
    """
    from actors.envs import env_spec

    dataset = load_dataset(path)
    spec = env_spec(env_id)
    check_dataset_fits(dataset, spec)
    return dataset


def given_dataset(cfg) -> OfflineDataset | None:
    """cfg.data.path's dataset, checked (`checked_dataset`); None when the preset records
    its dataset, after checking that cfg's environment exists. Call it before making
    the run directory."""
    if cfg.data.path is not None:
        return checked_dataset(cfg.data.path, cfg.env.env_id)
    from actors.envs import env_spec

    env_spec(cfg.env.env_id)
    return None


def preload_dataset(cfg, payload: dict) -> str | None:
    """The dataset the replay server preloads, checked (`checked_dataset`): cfg.data.path,
    else the one the checkpoint (`payload`) was pretrained on; None when the run preloads
    nothing. Call it before making the run directory."""
    path = cfg.data.path or payload.get("dataset")
    if not path or cfg.replay.preload_trajectories <= 0:
        return None
    checked_dataset(path, cfg.env.env_id)
    return str(path)


def obtain_dataset(cfg, run_dir: Path, progress: bool = True,
                   given: OfflineDataset | None = None) -> OfflineDataset:
    """The preset's dataset: `given` (from `given_dataset`), read from cfg.data.path, or
    recorded into run_dir/dataset."""
    if given is not None:
        return given
    if cfg.data.path is not None:
        return load_dataset(cfg.data.path)
    from actors.collect import collect
    from learner.checkpoint import load_policy

    path, _ = collect(
        cfg.env.env_id, cfg.data.collect_policy, recorded_dataset_path(cfg, run_dir),
        episodes=cfg.data.collect_episodes, num_envs=cfg.data.collect_num_envs,
        seed=cfg.data.collect_seed, noise=cfg.data.collect_noise, progress=progress,
        load_policy=load_policy, fmt=cfg.data.collect_format,
    )
    return load_dataset(path)


def recorded_dataset_path(cfg, run_dir: Path) -> Path:
    """Where a run records its dataset: run_dir/dataset (a Minari folder) or
    run_dir/dataset.hdf5 (D4RL-style), per cfg.data.collect_format."""
    return run_dir / ("dataset.hdf5" if cfg.data.collect_format == "d4rl" else "dataset")


def pretrain(cfg, dataset: OfflineDataset, logdir: str | Path, *, progress: bool = False,
             evaluate_fn=None):
    """`learner.pretrain.pretrain` wired to cfg's environment: the dataset is checked
    against its spaces, its actions are mapped to [-1, 1] by its box, and the periodic
    evaluation runs on envpool (`evaluate_on_env`) unless `evaluate_fn` is given."""
    from actors.envs import env_spec
    from learner import pretrain as offline

    spec = env_spec(cfg.env.env_id)
    check_dataset_fits(dataset, spec)
    return offline.pretrain(cfg, dataset, logdir, action_box=spec.action_box,
                            evaluate_fn=evaluate_fn or evaluate_on_env, progress=progress)


def pretrain_critic(cfg, dataset: OfflineDataset, checkpoint: str | Path,
                    logdir: str | Path) -> Path:
    """`learner.pretrain.pretrain_critic` with cfg's environment's action box."""
    from actors.envs import env_spec
    from learner import pretrain as offline

    return offline.pretrain_critic(cfg, dataset, checkpoint, logdir,
                                   action_box=env_spec(cfg.env.env_id).action_box)


def evaluate_on_env(model, cfg):
    """cfg.eval's deterministic evaluation of `model` on envpool."""
    from actors.evaluate import evaluate

    return evaluate(
        model,
        cfg.env.env_id,
        episodes=cfg.eval.episodes,
        target_return=cfg.eval.target_return,
        context_len=cfg.eval.context_len,
        seed=cfg.eval.seed,
        task_id=cfg.env.task_id,
        device=next(model.parameters()).device,
    )


def tensorboard_command(logdir: str | Path) -> str:
    """The command that starts TensorBoard on `logdir`, runnable as printed: the
    `tensorboard` script beside this interpreter (the virtual environment's, not
    activated), as a relative path when it lies under the working directory."""
    script = Path(sys.executable).parent / "tensorboard"
    if script.is_file():
        try:
            program = os.path.relpath(script)
        except ValueError:
            program = str(script)
        if program.startswith(".."):
            program = str(script)
    else:
        program = "tensorboard"
    return f"{shlex.quote(program)} --logdir {shlex.quote(str(logdir))}"


def summary_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k.ljust(width)}  {v}" for k, v in rows]
    bar = "-" * (width + 2 + max(len(v) for _, v in rows) + 2)
    return "\n".join([bar, *lines, bar])
