"""Offline pretraining: the learner reading windows from an in-memory sampler.

Writes under `<logdir>/pretrain/`: TensorBoard events (the resolved config as a
table at step 0; loss/*, policy/*, throughput/updates_per_s, eval/*) and
`checkpoint.pt` (every `checkpoint_every` updates and at the end).

    python -m learner.pretrain --preset=quickstart --dataset=data/pendulum --logdir=runs/qs
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from learner.checkpoint import learner_payload, save_checkpoint
from learner.device import resolve_device, set_cpu_threads_if_asked, to_device
from learner.learner import Learner, NonFiniteGuard
from learner.tensorboard import SummaryWriter, flatten, markdown_table
from replay.datasets import OfflineDataset
from replay.formats import item_format
from replay.offline import flatten_episodes, state_statistics
from replay.windows import ActionBox


@dataclass
class PretrainResult:
    checkpoint: Path
    updates: int
    updates_per_s: float
    eval_return: float | None
    eval_normalized: float | None
    metrics: dict[str, float]


def pretrain(cfg, dataset: OfflineDataset, logdir: str | Path, *, action_box: ActionBox,
             evaluate_fn: Callable, progress: bool = False) -> PretrainResult:
    """Pretrain per `cfg` (a launch.presets.RunConfig) on `dataset`, whose actions are
    in the environment's units and mapped to [-1, 1] by `action_box`.

    `evaluate_fn(model, cfg) -> EvalResult` runs the periodic evaluation
    (`launch.pipeline.pretrain` wires the environment's box and envpool evaluation).
    """
    steps = flatten_episodes(dataset.episodes, action_box)
    sampler = item_format(cfg.replay.item_format).offline_sampler(
        steps, cfg.model.context_len, cfg.optim.batch_size, seed=cfg.seed)
    statistics = (None if cfg.model.frame_shape
                  else state_statistics(dataset.episodes, cfg.data.state_std_floor))
    return train_offline(
        cfg, sampler, Path(logdir) / "pretrain", evaluate_fn=evaluate_fn,
        statistics=statistics, source=dataset.source, progress=progress,
        dataset_scalars={"dataset/episodes": len(dataset.episodes),
                         "dataset/steps": dataset.num_steps,
                         "dataset/mean_return": float(dataset.returns.mean())})


def train_offline(cfg, sampler, role_dir: str | Path, *, evaluate_fn: Callable | None,
                  statistics=None, source: str | None = None,
                  dataset_scalars: dict[str, float] | None = None,
                  progress: bool = False, desc: str = "pretraining") -> PretrainResult:
    """`cfg.pretrain.updates` learner updates on `sampler.sample()` batches, with the
    TensorBoard events and `checkpoint.pt` in `role_dir`.

    `statistics` ((mean, std) of the observations, or None) normalizes the
    model's inputs; `evaluate_fn(model, cfg) -> EvalResult` (or None: no evaluation)
    runs every `cfg.pretrain.eval_every` updates and at the end; `source` names the
    data in the checkpoint. Host syncs: one per log interval (the metrics) and the
    evaluations."""
    role_dir = Path(role_dir)
    device = resolve_device(cfg.device)
    set_cpu_threads_if_asked(device, cfg.compute)
    torch.manual_seed(cfg.seed)
    learner = Learner(cfg.model, cfg.objective, replace(cfg.optim, seed=cfg.seed), device,
                      cfg.compute)
    if statistics is not None:  # frames are scaled to [0, 1] in the model instead
        learner.set_state_normalization(*statistics)

    writer = SummaryWriter(role_dir)
    writer.text("config", markdown_table({**flatten(cfg),
                                          "compute.in_effect": learner.compute_path}), step=0)
    if dataset_scalars:
        writer.scalars(dataset_scalars, step=0)
    checkpoint = role_dir / "checkpoint.pt"
    extra = {"run_config": cfg.to_dict(), "dataset": source}

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.pretrain.updates, desc=desc, unit="upd")
    metrics: dict[str, float] = {}
    last_eval = None
    start = window_start = time.perf_counter()
    window_updates = 0
    guard = NonFiniteGuard(learner, cfg.finetune.max_nonfinite_updates)
    for update in range(1, cfg.pretrain.updates + 1):
        out = learner.update(to_device(sampler.sample(), device), rl=False)
        if "loss/nonfinite" in out:
            writer.scalar("loss/nonfinite_skipped", learner.skipped, update)
        guard.skipped()
        window_updates += 1
        if update % cfg.pretrain.log_every == 0 or update == cfg.pretrain.updates:
            metrics = {k: float(v) for k, v in out.items()}  # one host sync per log interval
            now = time.perf_counter()
            metrics["throughput/updates_per_s"] = window_updates / (now - window_start)
            window_start, window_updates = now, 0
            writer.scalars(metrics, update)
            if bar is not None:
                bar.set_postfix(loss=f"{metrics.get('loss/total', float('nan')):.3f}")
        every = cfg.pretrain.eval_every
        if evaluate_fn is not None and ((every and update % every == 0)
                                        or update == cfg.pretrain.updates):
            last_eval = evaluate_fn(learner.model, cfg)
            scores = {"eval/return": last_eval.mean_return}
            if last_eval.normalized_score is not None:
                scores["eval/normalized_score"] = last_eval.normalized_score
            writer.scalars(scores, update)
            if bar is not None:
                bar.write(f"update {update}: eval return {last_eval.mean_return:.1f}")
        if update % cfg.pretrain.checkpoint_every == 0:
            save_checkpoint(checkpoint, learner_payload(learner, updates=update, **extra))
        if bar is not None:
            bar.update(1)
    elapsed = time.perf_counter() - start
    if bar is not None:
        bar.close()
    # What the objective does once the supervised part is done (ODT+TD3: fit the critic).
    learner.rule.after_pretraining(lambda: to_device(sampler.sample(), device), writer,
                                   cfg.pretrain.log_every)
    save_checkpoint(checkpoint, learner_payload(learner, updates=learner.step, **extra))
    writer.close()
    return PretrainResult(
        checkpoint=checkpoint,
        updates=learner.step,
        updates_per_s=learner.step / elapsed if elapsed > 0 else 0.0,
        eval_return=None if last_eval is None else last_eval.mean_return,
        eval_normalized=None if last_eval is None else last_eval.normalized_score,
        metrics=metrics,
    )


def pretrain_critic(cfg, dataset: OfflineDataset, checkpoint: str | Path,
                    logdir: str | Path, *, action_box: ActionBox) -> Path:
    """An `odt_td3` checkpoint from any pretrained one: the policy as it is (a Gaussian
    head becomes the deterministic one) and a critic pretrained on `dataset` (actions
    mapped to [-1, 1] by `action_box`) with `cfg.objective.critic_pretrain_updates`
    critic-only updates.

    Writes `<logdir>/pretrain_critic/checkpoint.pt` and its TensorBoard events.
    """
    from learner.checkpoint import load_checkpoint
    from learner.finetune import learner_from_checkpoint
    from learner.objectives import get_objective

    if not get_objective(cfg.objective.kind).uses_critic:
        raise ValueError(f"pretrain_critic needs an objective with a critic (odt_td3), not "
                         f"objective.kind={cfg.objective.kind!r}")
    device = resolve_device(cfg.device)
    set_cpu_threads_if_asked(device, cfg.compute)
    torch.manual_seed(cfg.seed)
    payload = load_checkpoint(checkpoint, map_location=device)
    learner = learner_from_checkpoint(payload, cfg.objective, replace(cfg.optim, seed=cfg.seed),
                                      device)
    learner.reset_targets()
    steps = flatten_episodes(dataset.episodes, action_box)
    sampler = item_format(cfg.replay.item_format).offline_sampler(
        steps, cfg.model.context_len, cfg.optim.batch_size, seed=cfg.seed)
    role_dir = Path(logdir) / "pretrain_critic"
    writer = SummaryWriter(role_dir)
    learner.rule.pretrain_critic(lambda: to_device(sampler.sample(), device),
                                 cfg.objective.critic_pretrain_updates, writer,
                                 cfg.pretrain.log_every)
    writer.close()
    extra = {k: payload[k] for k in ("run_config", "dataset") if k in payload}
    return save_checkpoint(role_dir / "checkpoint.pt",
                           learner_payload(learner, updates=learner.step, **extra))


if __name__ == "__main__":
    from launch import pretrain_main

    pretrain_main.run()
