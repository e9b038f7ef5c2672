"""Evaluate a policy: N deterministic episodes on envpool at a target return.

As ODT evaluates: one environment per episode, the mean action tanh(mu), a context
of the last `context_len` steps (ODT: 5), the return-to-go starting at the target
and decremented by the rewards received. Reports raw returns, and the
D4RL-normalized score when the task has a reference.

    python -m actors.evaluate --checkpoint=runs/quickstart/pretrain/checkpoint.pt \
        --episodes=10 [--target_return=...] [--context_len=5] [--env_id=...]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from actors.context import BatchedPolicy, ContextBuffer
from actors.envs import VectorEnv
from replay.scores import normalized_score


@dataclass
class EvalResult:
    returns: np.ndarray  # (episodes,) raw undiscounted returns
    lengths: np.ndarray  # (episodes,)
    task_id: str | None = None

    @property
    def mean_return(self) -> float:
        return float(self.returns.mean())

    @property
    def normalized_score(self) -> float | None:
        """Mean D4RL-normalized score (x100), or None without a reference for the task."""
        if self.task_id is None:
            return None
        scores = [normalized_score(self.task_id, r) for r in self.returns]
        return None if scores[0] is None else float(np.mean(scores))


def run_episodes(env: VectorEnv, policy, ctx: ContextBuffer, target_return: float) -> EvalResult:
    """Run each env of `env` for one episode with `policy(ctx) -> actions`."""
    n = env.num_envs
    returns, lengths = np.zeros(n), np.zeros(n, np.int64)
    finished = np.zeros(n, bool)
    ctx.start(np.ones(n, bool), env.reset(), target_return)
    while not finished.all():
        actions = policy(ctx)
        ctx.record_actions(actions)
        result = env.step(actions)
        live = ~finished & result.is_transition
        returns[live] += result.rewards[live]
        lengths[live] += 1
        finished |= live & result.done
        ctx.advance(~finished, result.observations, result.rewards)
    return EvalResult(returns, lengths)


def evaluate(
    model: nn.Module,
    env_id: str,
    *,
    episodes: int,
    target_return: float,
    context_len: int = 5,
    seed: int = 10_000,
    task_id: str | None = None,
    device: str | torch.device = "cpu",
) -> EvalResult:
    env = VectorEnv(env_id, episodes, seed)
    try:
        ctx = ContextBuffer.for_env(episodes, context_len, env.spec)
        policy = BatchedPolicy(model, mode="mean", device=device)
        result = run_episodes(env, policy.act, ctx, target_return)
    finally:
        env.close()
    result.task_id = task_id
    return result


if __name__ == "__main__":
    from launch import evaluate_main

    evaluate_main.run()
