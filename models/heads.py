"""Action heads for the Decision Transformer, chosen by the action space.

- `SquashedGaussianHead`: ODT's stochastic policy, a diagonal Gaussian pushed through
  tanh, with log-std squashed into [log_std_min, log_std_max] (ODT: [-5, 2]).
  Reference: Zheng et al. 2022, "Online Decision Transformer", Sec. 4; the head is
  the SAC actor of Haarnoja et al. 2018 with the log-std bounds of pytorch_sac.
- `DeterministicHead`: Linear + tanh, the TD3 actor of "RL gradients as vitamin"
  (Yan et al., NeurIPS 2024).
- `CategoricalHead`: Linear logits over a discrete action set, for Discrete spaces
  (CartPole, Atari); ODT's max-entropy objective applies unchanged, with the exact
  entropy in place of the one-sample estimate.

The Box heads act in the normalized action box [-1, 1]; rescaling to the environment's
own units happens in the environment adapter (actors/envs.py). The categorical head
works with action indices in [0, num_actions).
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


@dataclass
class Categorical:
    """A categorical distribution over the last dimension of `logits` (the actions)."""

    logits: torch.Tensor  # (..., N)

    @property
    def log_probs(self) -> torch.Tensor:
        """log pi(a) for every action a, (..., N)."""
        return F.log_softmax(self.logits, dim=-1)

    @property
    def probs(self) -> torch.Tensor:
        """pi(a) for every action a, (..., N)."""
        return F.softmax(self.logits, dim=-1)

    @property
    def mode(self) -> torch.Tensor:
        """The most probable action index, (...) int64: the greedy evaluation action."""
        return self.logits.argmax(dim=-1)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        """log pi(action), (...); `action` holds indices in [0, N) of any integer or
        float dtype (cast to int64)."""
        index = action.long().unsqueeze(-1)  # (..., 1)
        return self.log_probs.gather(-1, index).squeeze(-1)

    def sample(self) -> torch.Tensor:
        """One action index per position, (...) int64, drawn without gradient."""
        with torch.no_grad():
            flat = self.probs.reshape(-1, self.logits.shape[-1])  # (prod(...), N)
            return torch.multinomial(flat, 1).reshape(self.logits.shape[:-1])

    def entropy(self) -> torch.Tensor:
        """The exact entropy -sum_a pi(a) log pi(a), (...)."""
        log_probs = self.log_probs
        return -(log_probs.exp() * log_probs).sum(-1)


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


class CategoricalHead(nn.Module):
    """Linear logits over `num_actions` actions, orthogonally initialised like the
    Gaussian head."""

    def __init__(self, embed_dim: int, num_actions: int):
        super().__init__()
        self.logits = nn.Linear(embed_dim, num_actions)
        nn.init.orthogonal_(self.logits.weight)
        nn.init.zeros_(self.logits.bias)

    def forward(self, h: torch.Tensor) -> Categorical:
        return Categorical(self.logits(h))
