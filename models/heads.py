"""Action heads for the Decision Transformer, chosen by the action space.

- `SquashedGaussianHead`: ODT's stochastic policy, a diagonal Gaussian pushed through
  tanh, with log-std squashed into [log_std_min, log_std_max] (ODT: [-5, 2]).
  Reference: Zheng et al. 2022, "Online Decision Transformer", Sec. 4; the head is
  the SAC actor of Haarnoja et al. 2018 with the log-std bounds of pytorch_sac.
- `DeterministicHead`: Linear + tanh, the TD3 actor of "RL gradients as vitamin"
  (Yan et al., NeurIPS 2024).

Both act in the normalized action box [-1, 1]; rescaling to the environment's own
units happens in the environment adapter (actors/envs.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Actions at exactly +-1 have infinite atanh; dataset actions are clamped this far inside.
ACTION_EPS = 1e-6


@dataclass
class SquashedGaussian:
    """tanh(Normal(mu, std)) over the last dimension (actions), summed per step."""

    mu: torch.Tensor  # (..., A)
    log_std: torch.Tensor  # (..., A)

    @property
    def std(self) -> torch.Tensor:
        return self.log_std.exp()

    @property
    def mode(self) -> torch.Tensor:
        """tanh(mu): the deterministic action ODT evaluates with."""
        return torch.tanh(self.mu)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        """log pi(action), summed over action dims; `action` in [-1, 1]."""
        action = action.clamp(-1.0 + ACTION_EPS, 1.0 - ACTION_EPS)
        pre_tanh = torch.atanh(action)
        return self._log_prob_pre_tanh(pre_tanh)

    def rsample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterized sample and its log-probability (summed over actions)."""
        pre_tanh = self.mu + self.std * torch.randn_like(self.mu)
        return torch.tanh(pre_tanh), self._log_prob_pre_tanh(pre_tanh)

    def sample(self) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample()[0]

    def entropy(self) -> torch.Tensor:
        """One-sample Monte-Carlo entropy estimate, -log pi(a), a ~ pi (as in ODT)."""
        return -self.rsample()[1]

    def _log_prob_pre_tanh(self, pre_tanh: torch.Tensor) -> torch.Tensor:
        normal = (
            -0.5 * ((pre_tanh - self.mu) / self.std) ** 2
            - self.log_std
            - 0.5 * math.log(2 * math.pi)
        )
        # log |d tanh(x)/dx| = log(1 - tanh(x)^2), in the numerically stable form.
        log_det = 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))
        return (normal - log_det).sum(-1)


@dataclass
class DeterministicAction:
    """A point action in [-1, 1]; `mode` is the action itself."""

    action: torch.Tensor  # (..., A)

    @property
    def mode(self) -> torch.Tensor:
        return self.action


class SquashedGaussianHead(nn.Module):
    def __init__(self, embed_dim: int, act_dim: int, log_std_min: float, log_std_max: float):
        super().__init__()
        self.mu = nn.Linear(embed_dim, act_dim)
        self.log_std = nn.Linear(embed_dim, act_dim)
        self.log_std_min = log_std_min
        self.log_std_max = log_std_max
        for layer in (self.mu, self.log_std):
            nn.init.orthogonal_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor) -> SquashedGaussian:
        # Squash log-std smoothly into its bounds instead of clipping, so it keeps a gradient.
        raw = torch.tanh(self.log_std(h))
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (raw + 1.0)
        return SquashedGaussian(self.mu(h), log_std)


class DeterministicHead(nn.Module):
    def __init__(self, embed_dim: int, act_dim: int):
        super().__init__()
        self.linear = nn.Linear(embed_dim, act_dim)

    def forward(self, h: torch.Tensor) -> DeterministicAction:
        return DeterministicAction(torch.tanh(self.linear(h)))
