"""Flags shared by the entry points, config resolution, and error reporting.

absl flags are defined and read only under launch/. Every entry point runs through
`run_main`, which turns the project's input errors into one clear line on stderr and
exit status 2, and checks the Python version first.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

from absl import app, flags

SUPPORTED_PYTHON = (3, 11)


def check_python() -> None:
    if sys.version_info[:2] != SUPPORTED_PYTHON:
        raise SystemExit(
            f"error: onramp runs on Python 3.11 (dm-reverb 0.14.0 ships no wheels for other "
            f"versions); this is Python {sys.version_info[0]}.{sys.version_info[1]}"
        )


def input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad user input, reported without a traceback."""
    from actors.envs import EnvError
    from learner.checkpoint import CheckpointError
    from replay.datasets import DatasetError

    errors = [ValueError, FileExistsError, FileNotFoundError, DatasetError, CheckpointError,
              EnvError]
    # An unreachable replay server (a wrong --replay_address) is bad input too. Only code
    # that loaded replay.tables can raise it, and importing it here would load TensorFlow
    # after torch, so it is looked up rather than imported.
    tables = sys.modules.get("replay.tables")
    if tables is not None:
        errors.append(tables.ReplayUnavailable)
    return tuple(errors)


def run_main(main) -> None:
    check_python()

    def guarded(argv):
        try:
            main(argv)
        except input_errors() as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)

    app.run(guarded)


def define_run_flags() -> None:
    """--preset and the overrides every pipeline entry point takes."""
    flags.DEFINE_string("preset", "quickstart", "Preset name (see launch/presets.py).")
    flags.DEFINE_string("dataset", None, "D4RL HDF5 file or Minari folder; default: the preset's.")
    flags.DEFINE_string("logdir", None, "Run directory; default runs/<preset>-<time>. "
                        "An existing non-empty directory is refused.")
    flags.DEFINE_integer("seed", None, "Seed for training and collection.")
    flags.DEFINE_string("device", None, "'auto', 'cpu' or 'cuda[:i]'.")
    flags.DEFINE_enum("objective", None, ["odt", "odt_td3"], "Learning objective.")
    flags.DEFINE_integer("pretrain_updates", None, "Offline gradient steps.")
    flags.DEFINE_integer("critic_pretrain_updates", None,
                         "odt_td3: offline critic-only updates after pretraining.")
    flags.DEFINE_integer("eval_episodes", None, "Evaluation episodes.")
    flags.DEFINE_integer("collect_episodes", None, "Episodes to record when no dataset is given.")


# Flag name -> the dotted config field it overrides, for every entry point that has it.
OVERRIDES = {
    "dataset": "data.path",
    "seed": "seed",
    "device": "device",
    "objective": "objective.kind",
    "pretrain_updates": "pretrain.updates",
    "critic_pretrain_updates": "objective.critic_pretrain_updates",
    "eval_episodes": "eval.episodes",
    "collect_episodes": "data.collect_episodes",
    "num_actors": "actor.num_actors",
    "envs_per_actor": "actor.envs_per_actor",
    "env_steps": "finetune.env_steps",
}


def with_field(config, path: str, value):
    """A copy of a (nested) frozen dataclass with the dotted field `path` set to `value`."""
    head, _, rest = path.partition(".")
    if not rest:
        return replace(config, **{head: value})
    return replace(config, **{head: with_field(getattr(config, head), rest, value)})


def resolve_config():
    """The preset with flag overrides applied, validated; ValueError lists every problem."""
    from launch.presets import get_preset, validate

    FLAGS = flags.FLAGS
    cfg = get_preset(FLAGS.preset)
    for name, path in OVERRIDES.items():
        if name in FLAGS and FLAGS[name].value is not None:
            cfg = with_field(cfg, path, FLAGS[name].value)
    if FLAGS.seed is not None:
        cfg = with_field(cfg, "data.collect_seed", FLAGS.seed + 1)
    problems = validate(cfg)
    if problems:
        raise ValueError("invalid configuration:\n  " + "\n  ".join(problems))
    return cfg


def new_run_dir(logdir: str | None, name: str) -> Path:
    """A fresh run directory; an existing non-empty one is refused, never overwritten."""
    path = Path(logdir) if logdir else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if path.exists() and (path.is_file() or any(path.iterdir())):
        raise FileExistsError(
            f"logdir={str(path)!r} already exists and is not empty; choose another --logdir"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_checkpoint(path: str | None) -> Path:
    """The --checkpoint flag's file, or a clear error when it is missing."""
    if path is None:
        raise ValueError("--checkpoint is required: the pretrained checkpoint to fine-tune")
    if not Path(path).is_file():
        raise FileNotFoundError(f"--checkpoint={path}: no such file")
    return Path(path)
