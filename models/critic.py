"""Twin-Q critic for ODT+TD3.

Reference: Fujimoto et al. 2018, "Addressing Function Approximation Error in
Actor-Critic Methods" (TD3), as used by Yan et al., NeurIPS 2024, "Reinforcement
Learning Gradients as Vitamin for Online Finetuning Decision Transformers": a
Markovian MLP critic on (s, a), applied to every token of the window independently,
two hidden layers of 256 with ReLU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CriticConfig:
    hidden_dim: int = 256
    """Width of each hidden layer (vitamin paper: 256)."""
    num_hidden: int = 2
    """Number of hidden layers (vitamin paper: 2)."""
    layer_norm: bool = False
    """Parameter-free LayerNorm after each hidden layer (the vitamin code's default; its
    MuJoCo runs turn it off, quickstart keeps it on: DESIGN.md, "ODT+TD3's critic")."""

    def to_dict(self) -> dict:
        return asdict(self)


class _LayerNormNoParams(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.layer_norm(x, x.shape[-1:])


def _mlp(in_dim: int, cfg: CriticConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(cfg.num_hidden):
        layers.append(nn.Linear(in_dim, cfg.hidden_dim))
        if cfg.layer_norm:
            layers.append(_LayerNormNoParams())
        layers.append(nn.ReLU())
        in_dim = cfg.hidden_dim
    layers.append(nn.Linear(in_dim, 1))
    return nn.Sequential(*layers)


class TwinQ(nn.Module):
    """Two independent Q(s, a) MLPs; states are normalized with the model's frozen stats."""

    def __init__(self, state_dim: int, act_dim: int, cfg: CriticConfig = CriticConfig()):
        super().__init__()
        self.cfg = cfg
        self.q1 = _mlp(state_dim + act_dim, cfg)
        self.q2 = _mlp(state_dim + act_dim, cfg)
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))

    def set_state_normalization(self, mean, std) -> None:
        self.state_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.state_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def forward(self, states: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Q1 and Q2 for (..., S) states and (..., A) actions, each of shape (...)."""
        x = self._inputs(states, actions)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)

    def first(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q1 alone: what the TD3 actor maximises."""
        return self.q1(self._inputs(states, actions)).squeeze(-1)

    def _inputs(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return torch.cat(((states - self.state_mean) / self.state_std, actions), dim=-1)
