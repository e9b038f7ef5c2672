"""Flags shared by the entry points, config resolution, and error reporting.

absl flags are defined and read only under launch/. Every entry point runs through
`run_main`, which turns the project's input errors into one clear line on stderr and
exit status 2, and checks the Python version first.
"""

from __future__ import annotations

import sys
import time
from dataclasses import fields, is_dataclass, replace
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


class RunStopped(Exception):
    """A run that ended early; `exit_code` tells how (the message says how to resume)."""

    exit_code = 1


class RunFailed(RunStopped):
    """A role process died beyond recovery; exit status 1."""


class RunInterrupted(RunStopped):
    """SIGINT or SIGTERM stopped the run; exit status 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def run_main(main) -> None:
    """Run an entry point: exit 2 on bad input, RunStopped's code when a run ends early."""
    check_python()

    def guarded(argv):
        try:
            main(argv)
        except input_errors() as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        except RunStopped as exc:
            print(f"{'interrupted' if isinstance(exc, RunInterrupted) else 'error'}: {exc}",
                  file=sys.stderr)
            sys.exit(exc.exit_code)

    adopt_key_flags()
    app.run(guarded)


def define_config_flags(*, pretrain: bool) -> None:
    """The flags `resolve_config` reads: --preset, --dataset, --seed, --device,
    --objective, --eval_episodes and --set; with `pretrain`, also --pretrain_updates,
    --critic_pretrain_updates and --collect_episodes, for the entry points that
    pretrain or record a dataset."""
    flags.DEFINE_string("preset", "quickstart", "Preset name (see launch/presets.py).")
    flags.DEFINE_string("dataset", None, "D4RL HDF5 file or Minari folder; default: the preset's.")
    flags.DEFINE_integer("seed", None, "Seed for training and collection; default: the preset's.")
    flags.DEFINE_string("device", None, "'auto', 'cpu' or 'cuda[:i]'; default: the preset's.")
    from learner.objectives import OBJECTIVES

    flags.DEFINE_enum("objective", None, list(OBJECTIVES),
                      "Learning objective (learner.objectives); default: the preset's.")
    flags.DEFINE_integer("eval_episodes", None, "Evaluation episodes; default: the preset's.")
    flags.DEFINE_multi_string("set", [], "Override any config field: --set=finetune.log_every=10 "
                              "(repeatable; dotted path as in the run's config.json).")
    if pretrain:
        flags.DEFINE_integer("pretrain_updates", None,
                             "Offline gradient steps; default: the preset's.")
        flags.DEFINE_integer("critic_pretrain_updates", None,
                             "odt_td3: offline critic-only updates after pretraining; "
                             "default: the preset's.")
        flags.DEFINE_integer("collect_episodes", None,
                             "Episodes to record when no dataset is given; default: the preset's.")


def define_games_flag() -> None:
    """--games, for an entry point that can run the multi-game pipeline."""
    flags.DEFINE_list("games", None, "Multi-game pipeline: comma-separated envpool Atari "
                      "games, e.g. Pong,Breakout,Freeway ('-v5' is added to a name without a "
                      "version); default: the preset's multigame.games.")


def atari_game_ids(names) -> tuple[str, ...]:
    """envpool task ids for `--games` names: 'Pong' -> 'Pong-v5', 'Pong-v5' as given."""
    return tuple(name if "-v" in name else f"{name}-v5" for name in
                 (n.strip() for n in names))


def define_logdir_flag() -> None:
    flags.DEFINE_string("logdir", None, "Run directory; default runs/<preset>-<time>. "
                        "An existing non-empty directory is refused.")


def define_finetune_flags(*, num_actors: bool = True) -> None:
    """--envs_per_actor and --env_steps; with `num_actors`, --num_actors (a launcher that
    starts the actors; a single role or a SLURM job counts them otherwise)."""
    if num_actors:
        flags.DEFINE_integer("num_actors", None, "Actor processes; default: the preset's.")
    flags.DEFINE_integer("envs_per_actor", None, "Environments per actor; default: the preset's.")
    flags.DEFINE_integer("env_steps", None,
                         "Online budget in environment steps; default: the preset's.")


def define_mode_flag() -> None:
    flags.DEFINE_enum("mode", "processes", ["processes", "inline"],
                      "processes: every role its own OS process; inline: the replay server, "
                      "learner, one actor and the evaluator as threads of this process "
                      "(debugging, small CPU runs).")


def define_resume_flag() -> None:
    flags.DEFINE_bool("resume", False, "Continue the run in --logdir from its checkpoints, "
                      "with its saved config (only --env_steps may change).")


PROJECT_PACKAGES = ("actors", "bench", "launch", "learner", "models", "replay")


def adopt_key_flags() -> None:
    """Make every flag defined by onramp's own modules a key flag of the main module, so
    that `--help` lists them all with their defaults (absl's `--help` shows only the
    main module's key flags; `--helpfull` adds absl's and the libraries' own)."""
    main = sys.argv[0]
    for module, module_flags in flags.FLAGS.flags_by_module_dict().items():
        if module == main or module.split(".")[0] in PROJECT_PACKAGES:
            for flag in module_flags:
                flags.FLAGS.register_key_flag_for_module(main, flag)



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
    from launch.presets import get_preset

    FLAGS = flags.FLAGS
    cfg = get_preset(FLAGS.preset)
    for name, path in OVERRIDES.items():
        if name in FLAGS and FLAGS[name].value is not None:
            cfg = with_field(cfg, path, FLAGS[name].value)
    if FLAGS.seed is not None:
        cfg = with_field(cfg, "data.collect_seed", FLAGS.seed + 1)
    if "games" in FLAGS and FLAGS.games is not None:
        if cfg.pipeline != "multi_game":
            raise ValueError(f"--games: preset {FLAGS.preset!r} runs pipeline "
                             f"{cfg.pipeline!r}; --games picks the games of the multi-game "
                             "pipeline (e.g. --preset=mgdt-atari3)")
        cfg = with_field(cfg, "multigame.games", atari_game_ids(FLAGS.games))
    for item in FLAGS.set:
        cfg = apply_setting(cfg, item)
    return checked(cfg)


def checked(cfg):
    """`cfg` itself once `launch.presets.validate` finds nothing; ValueError lists every problem."""
    from launch.presets import validate

    problems = validate(cfg)
    if problems:
        raise ValueError("invalid configuration:\n  " + "\n  ".join(problems))
    return cfg


def apply_setting(config, item: str):
    """`config` with one `--set=dotted.path=value` applied, the value parsed to the field's
    type; ValueError names an unknown path or a value of the wrong type."""
    path, sep, text = item.partition("=")
    if not sep or not path:
        raise ValueError(f"--set={item!r}: expected dotted.field=value")
    node = config
    for name in path.split("."):
        if not is_dataclass(node) or name not in {f.name for f in fields(node)}:
            raise ValueError(f"--set={item!r}: {path!r} is not a config field")
        node = getattr(node, name)
    if is_dataclass(node):
        raise ValueError(f"--set={item!r}: {path!r} is a section, not a field")
    return with_field(config, path, _parse_like(node, text, item))


def _parse_like(current, text: str, item: str):
    """`text` as a value of `current`'s type: bool, int, float, str; a dict as a JSON
    object; a tuple or list as a JSON array or comma-separated strings."""
    if text.lower() in ("none", "null") and (current is None or isinstance(current, str)):
        return None
    if isinstance(current, (dict, tuple, list)):
        return _parse_container(current, text, item)
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if current is None:
            for kind in (int, float):
                try:
                    return kind(text)
                except ValueError:
                    pass
    except ValueError:
        raise ValueError(f"--set={item!r}: {text!r} is not a {type(current).__name__}") from None
    return text


def _parse_container(current, text: str, item: str):
    import json

    if isinstance(current, dict) or text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"--set={item!r}: {text!r} is not JSON ({error.msg})") from None
    else:
        value = [part.strip() for part in text.split(",") if part.strip()]
    expected = dict if isinstance(current, dict) else list
    if not isinstance(value, expected):
        raise ValueError(f"--set={item!r}: expected a JSON {expected.__name__}, got "
                         f"{type(value).__name__}")
    return tuple(value) if isinstance(current, tuple) else value


def new_run_dir(logdir: str | None, name: str) -> Path:
    """A fresh run directory; an existing non-empty one is refused, never overwritten."""
    path = Path(logdir) if logdir else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if path.exists() and (path.is_file() or any(path.iterdir())):
        raise FileExistsError(
            f"logdir={str(path)!r} already exists and is not empty; choose another --logdir "
            "(or pass --resume to continue the run there)"
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
