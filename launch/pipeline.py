"""The steps of the main job, shared by the entry points: dataset, pretrain, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

from replay.datasets import OfflineDataset, load_dataset


def save_config(run_dir: Path, cfg) -> Path:
    path = run_dir / "config.json"
    path.write_text(json.dumps(cfg.to_dict(), indent=2, default=str))
    return path


def obtain_dataset(cfg, run_dir: Path, progress: bool = True) -> OfflineDataset:
    """The preset's dataset: read from cfg.data.path, or recorded into run_dir/dataset."""
    if cfg.data.path is not None:
        return load_dataset(cfg.data.path)
    from actors.collect import collect

    path, _ = collect(
        cfg.env.env_id, cfg.data.collect_policy, run_dir / "dataset",
        episodes=cfg.data.collect_episodes, num_envs=cfg.data.collect_num_envs,
        seed=cfg.data.collect_seed, noise=cfg.data.collect_noise, progress=progress,
    )
    return load_dataset(path)


def summary_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k.ljust(width)}  {v}" for k, v in rows]
    bar = "-" * (width + 2 + max(len(v) for _, v in rows) + 2)
    return "\n".join([bar, *lines, bar])
