"""A fine-tuning run's online episodes as a Minari dataset, in the order they were collected.

    python -m replay.export --logdir=runs/quickstart-20250101-120000 --out=data/my-replay

reads every episode log the run's actors wrote (`replay.episode_log`,
`<run>/actor_<i>/episodes-<n>.h5`), orders the episodes by when they were finished
(across actors, restarts and resumed runs), and writes them with
`replay.datasets.write_minari`: a folder that `minari.MinariDataset(out)` and
`replay.datasets.load_dataset(out)` open, with the environment's own action units, like
a D4RL "medium-replay" dataset made from one's own run. Pretraining or fine-tuning can
start from it (`--dataset=out`).

What is in it: every episode an actor finished and wrote to the replay server while
`actor.log_episodes` was on. Episodes still running when the run stopped were never
finished and are not logged, so the dataset holds the run's environment steps minus
those of the episodes cut off at its end (or when an actor process died). The
offline preload is not logged either: only online experience.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from replay.datasets import (
    DatasetError,
    PathLike,
    _refuse_non_empty_folder,
    write_minari,
)
from replay.episode_log import (
    LOG_GLOB,
    EpisodeLogFile,
    LoggedEpisode,
    log_files,
    read_episode_log,
)


def find_logs(logdir: PathLike) -> list[Path]:
    """The episode log files under the run directory `logdir`; DatasetError naming
    `logdir` when it is not a directory or holds none."""
    logdir = Path(logdir)
    if not logdir.is_dir():
        raise DatasetError(logdir, "no such run directory")
    files = [path for directory in sorted(logdir.glob("actor_*")) if directory.is_dir()
             for path in log_files(directory)]
    if not files:
        raise DatasetError(logdir, f"no episode logs ({LOG_GLOB}) in this run directory; "
                           "actors write them when actor.log_episodes is on (the default)")
    return files


def read_run_episodes(logdir: PathLike) -> tuple[list[LoggedEpisode], list[EpisodeLogFile]]:
    """Every logged episode of the run at `logdir`, in the order they were finished, and
    the files they came from. DatasetError when the files disagree on the environment
    or its spaces, or hold no episode at all."""
    logdir = Path(logdir)
    files = [read_episode_log(path) for path in find_logs(logdir)]
    first = files[0]
    for other in files[1:]:
        if other.space() != first.space():
            raise DatasetError(other.path, f"logged for {other.space()}, but {first.path} "
                               f"for {first.space()}; one run directory holds one environment")
    episodes = sorted((e for f in files for e in f.episodes), key=lambda e: e.order_key)
    if not episodes:
        raise DatasetError(logdir, f"its {len(files)} episode log file(s) hold no finished "
                           "episode yet")
    return episodes, files


def export_run(logdir: PathLike, out: PathLike) -> Path:
    """Write the online episodes of the run at `logdir` as a Minari folder at `out`.

    Episodes are in the order they were finished. Metadata: env_id, run_dir (the
    absolute run directory), policy ('online:<objective>' from the run's config.json,
    'online' without one), num_actors (actors whose episodes are logged), log_files,
    and skipped_episodes (incomplete ones, warned about by `read_episode_log`).
    Refuses an `out` that exists and is not an empty folder, before reading anything;
    a failed write leaves nothing at `out`.
    """
    logdir, out = Path(logdir), Path(out).absolute()
    _refuse_non_empty_folder(out)
    episodes, files = read_run_episodes(logdir)
    space = files[0].space()
    env_id = space["env_id"]
    image = space["observation_dtype"] == "uint8"
    if space["num_actions"]:
        actions: dict = {"num_actions": int(space["num_actions"])}
    else:
        actions = {"action_low": np.asarray(space["action_low"], np.float32),
                   "action_high": np.asarray(space["action_high"], np.float32)}
    policy = _run_policy(logdir)
    metadata = {
        "env_id": env_id,
        "run_dir": str(logdir.absolute()),
        "policy": policy,
        "num_actors": len({e.actor_id for e in episodes}),
        "log_files": len(files),
        "skipped_episodes": sum(f.skipped for f in files),
        "description": f"Online episodes of the onramp fine-tuning run {logdir.absolute()} "
                       f"on {env_id} ({policy}), in the order they were finished.",
    }
    return write_minari(
        out, [e.episode for e in episodes],
        dataset_id=f"onramp/{_id_part(env_id.split('-')[0])}/online-v0",
        observation_low=0 if image else -np.inf, observation_high=255 if image else np.inf,
        metadata=metadata, **actions,
    )


def _run_policy(logdir: Path) -> str:
    """'online:<objective kind>' from the run's config.json, or 'online'."""
    try:
        kind = json.loads((logdir / "config.json").read_text())["objective"]["kind"]
    except (OSError, ValueError, KeyError, TypeError):
        return "online"
    return f"online:{kind}"


def _id_part(name: str) -> str:
    """`name` in lower case with what Minari's dataset ids do not allow replaced by '_'."""
    return re.sub(r"[^-_\w]", "_", name.lower()) or "env"


if __name__ == "__main__":
    from launch import export_main

    export_main.run()
