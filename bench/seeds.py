"""The per-seed part of `bench.learning`: pretrain a seed, fine-tune it with each
objective, and run several seeds side by side in processes of their own.

A module without flags, so that tests and other benchmarks can import it.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import replace
from pathlib import Path
from queue import Empty


def run_seed(base, dataset_path: str, seed: int, out: Path, objectives: list[str]) -> dict:
    """Pretrain `seed` on the dataset at `dataset_path`, then fine-tune each of
    `objectives` from that checkpoint; the seed's row of results."""
    from launch.local import run_local
    from launch.pipeline import pretrain, pretrain_critic, save_config
    from learner.objectives import get_objective
    from replay.datasets import load_dataset
    from replay.scores import normalized_score

    dataset = load_dataset(dataset_path)
    cfg = replace(base, seed=seed, objective=replace(base.objective, kind="odt"))
    pre_dir = out / f"pretrain-seed{seed}"
    pre_dir.mkdir()
    pre = pretrain(cfg, dataset, pre_dir)
    row = {"seed": seed, "pretrained_return": pre.eval_return,
           "pretrained_score": normalized_score(cfg.env.task_id, pre.eval_return)
           if cfg.env.task_id else None}
    for kind in objectives:
        run_cfg = replace(cfg, objective=replace(cfg.objective, kind=kind))
        run_dir = out / f"{kind}-seed{seed}"
        run_dir.mkdir()
        save_config(run_dir, run_cfg)
        start = time.perf_counter()
        checkpoint = pre.checkpoint
        if get_objective(kind).uses_critic and run_cfg.objective.critic_pretrain_updates:
            checkpoint = pretrain_critic(run_cfg, dataset, checkpoint, run_dir)
        summary = run_local(run_cfg, checkpoint, run_dir, dataset_path=dataset.source,
                            status=False)
        row[f"{kind}_return"] = summary.final_return
        row[f"{kind}_score"] = summary.final_normalized
        row[f"{kind}_env_steps"] = summary.env_steps
        row[f"{kind}_updates"] = summary.updates
        row[f"{kind}_seconds"] = round(time.perf_counter() - start, 1)
    return row


def _seed_job(queue, *args) -> None:
    """`run_seed` in a process of its own: its row, or its error's text, on `queue`."""
    seed = args[2]
    try:
        queue.put(("row", seed, run_seed(*args)))
    except BaseException as error:
        queue.put(("error", seed, f"{type(error).__name__}: {error}"))
        raise


def run_seeds(base, dataset_path: str, seeds: list[int], out: Path, objectives: list[str],
              jobs: int) -> list[dict]:
    """Every seed's row, in the order of `seeds`: one after the other in this process,
    or up to `jobs` at once in spawned processes. A seed that fails raises RuntimeError
    once the seeds already running have ended."""
    if jobs <= 1:
        rows = []
        for seed in seeds:
            rows.append(run_seed(base, dataset_path, seed, out, objectives))
            print(json.dumps(rows[-1]), flush=True)
        return rows
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    pending, running, rows, failed = list(seeds), {}, {}, {}

    def take(timeout: float) -> bool:
        """Handle one message from a seed's process; False if none came in `timeout`."""
        try:
            kind, seed, value = queue.get(timeout=timeout)
        except Empty:
            return False
        if kind == "row":
            rows[seed] = value
            print(json.dumps(value), flush=True)
        else:
            failed[seed] = value
        return True

    while running or (pending and not failed):
        while pending and len(running) < jobs and not failed:
            seed = pending.pop(0)
            running[seed] = context.Process(
                target=_seed_job, name=f"seed{seed}",
                args=(queue, base, dataset_path, seed, out, objectives))
            running[seed].start()
        take(timeout=5.0)
        for seed, process in list(running.items()):
            if process.exitcode is not None:
                process.join()
                del running[seed]
    while take(timeout=1.0):  # what the last processes sent before they ended
        pass
    for seed in seeds:
        if seed not in rows and seed not in pending and seed not in failed:
            failed[seed] = "its process ended without a result"
    if failed:
        raise RuntimeError("; ".join(f"seed {seed}: {text}" for seed, text in failed.items()))
    return [rows[seed] for seed in seeds]
