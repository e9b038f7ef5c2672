"""Loss functions, pure and module-level so tests can check them against slow loops.

All take (B, K) windows with `mask` 1 on real steps and 0 on left padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from models import Categorical, DeterministicAction, SquashedGaussian


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over positions where mask is 1 (clamped so an empty mask gives 0)."""
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


@dataclass
class ODTLoss:
    loss: torch.Tensor  # what the transformer minimises
    nll: torch.Tensor
    entropy: torch.Tensor
    temperature_loss: torch.Tensor  # what log lambda minimises


def odt_loss(
    dist: SquashedGaussian | Categorical,
    actions: torch.Tensor,  # (B, K, A) in [-1, 1], or (B, K) indices for a Categorical
    mask: torch.Tensor,  # (B, K)
    log_temperature: torch.Tensor,  # scalar
    target_entropy: float,
    mask_entropy: bool = True,
) -> ODTLoss:
    """ODT's max-entropy sequence objective (Zheng et al. 2022, Eq. 5-7).

    policy loss = NLL - lambda * H, with lambda held fixed; the dual step moves
    lambda up when H < target and down when H > target. H is the squashed Gaussian's
    one-sample estimate, or a Categorical's exact entropy.
    """
    nll = masked_mean(-dist.log_prob(actions), mask)
    entropy_per_step = dist.entropy()  # (B, K)
    entropy = masked_mean(entropy_per_step, mask) if mask_entropy else entropy_per_step.mean()
    temperature = log_temperature.exp()
    loss = nll - temperature.detach() * entropy
    temperature_loss = temperature * (entropy.detach() - target_entropy)
    return ODTLoss(loss, nll.detach(), entropy.detach(), temperature_loss)


def discrete_target_entropy(num_actions: int, fraction: float) -> float:
    """Target entropy for a categorical policy: `fraction` of the uniform policy's
    entropy log(num_actions), the maximum any policy over `num_actions` actions has
    (as in discrete SAC, Christodoulou 2019, which uses fraction 0.98)."""
    if num_actions < 1:
        raise ValueError(f"{num_actions=} must be >= 1")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{fraction=} must lie in [0, 1]")
    return fraction * math.log(num_actions)


def supervised_mse(action: DeterministicAction, actions: torch.Tensor, mask: torch.Tensor):
    """Mean squared action error over real steps (deterministic head)."""
    return masked_mean(((action.action - actions) ** 2).mean(-1), mask)


def td_target(
    next_q1: torch.Tensor,
    next_q2: torch.Tensor,
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """r + gamma * (1 - terminated) * min(Q1', Q2'). Truncation bootstraps."""
    return rewards + gamma * (1.0 - terminated) * torch.minimum(next_q1, next_q2)


def critic_loss(q1: torch.Tensor, q2: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
    """Twin-Q regression onto a fixed target, summed over both heads, over real steps."""
    target = target.detach()
    return masked_mean((q1 - target) ** 2, mask) + masked_mean((q2 - target) ** 2, mask)


def target_policy_noise(action: torch.Tensor, std: float, clip: float) -> torch.Tensor:
    """TD3's target policy smoothing: a' + clip(N(0, std^2), -clip, clip), kept in [-1, 1]."""
    noise = (torch.randn_like(action) * std).clamp(-clip, clip)
    return (action + noise).clamp(-1.0, 1.0)


def actor_rl_loss(q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """-Q of the policy's own actions over every real position of the window."""
    return masked_mean(-q, mask)

