"""The Decision Transformer as the Online Decision Transformer defines it.

References:
- Chen et al. 2021, "Decision Transformer: Reinforcement Learning via Sequence Modeling".
- Zheng et al. 2022, "Online Decision Transformer" (ICML): GPT-2 pre-LN blocks
  (4 layers, 4 heads, width 512, FFN 2048, ReLU, dropout 0.1), per-modality linear
  embeddings of return, state and action followed by one LayerNorm, no positional
  embedding by default, the action read from the state token.
- Radford et al. 2019 (GPT-2) for the block layout; Karpathy's nanoGPT for the
  shape of this file.

Inputs are in environment units: raw states (normalized here with the frozen
offline mean/std held as buffers) and raw returns-to-go (scaled here by
`return_scale`). Actions are in the normalized box [-1, 1]. Sequences are
left-padded; `mask` is 1 on real steps and 0 on padding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.heads import DeterministicHead, SquashedGaussianHead
from models.registry import MODELS, register_model

HEADS = ("gaussian", "deterministic")
RETIRED_MODEL_FIELDS = ("policy",)
"""ModelConfig fields that checkpoints and saved configs of earlier onramp versions hold
and that are now derived (the action head comes from the objective); readers drop them."""


@dataclass(frozen=True)
class ModelConfig:
    state_dim: int
    """Size of the (flat) observation vector."""
    act_dim: int
    """Size of the action vector."""
    context_len: int = 20
    """K, the number of steps in a training window (ODT: 20)."""
    embed_dim: int = 512
    """Transformer width (ODT: 512)."""
    n_layer: int = 4
    n_head: int = 4
    ffn_dim: int = 2048
    """Hidden size of each block's MLP (ODT: 4 x width)."""
    dropout: float = 0.1
    """Embedding, attention and residual dropout (ODT: 0.1)."""
    use_timestep_embedding: bool = False
    """Add an absolute timestep embedding to every token (off in ODT's MuJoCo runs)."""
    max_timestep: int = 1000
    """Size of the timestep embedding; larger timesteps are clipped (ODT: 1000)."""
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    return_scale: float = 0.001
    """Returns-to-go are multiplied by this before embedding (ODT MuJoCo: 0.001)."""
    kind: str = "decision_transformer"
    """The model's registry key (`models.registry`)."""

    def validate(self) -> list[str]:
        problems = []
        if self.kind not in MODELS:
            problems.append(f"model.kind={self.kind!r} must be one of {tuple(sorted(MODELS))}")
        for name in ("state_dim", "act_dim", "context_len", "embed_dim", "n_layer", "n_head"):
            if getattr(self, name) < 1:
                problems.append(f"model.{name}={getattr(self, name)} must be >= 1")
        if self.embed_dim % max(self.n_head, 1):
            problems.append(
                f"model.embed_dim={self.embed_dim} must be a multiple of model.n_head={self.n_head}"
            )
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"model.dropout={self.dropout} must lie in [0, 1)")
        if self.return_scale <= 0:
            problems.append(f"model.return_scale={self.return_scale} must be > 0")
        return problems

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)
        q = q.view(B, L, self.n_head, D // self.n_head).transpose(1, 2)  # (B, nh, L, hs)
        k = k.view(B, L, self.n_head, D // self.n_head).transpose(1, 2)  # (B, nh, L, hs)
        v = v.view(B, L, self.n_head, D // self.n_head).transpose(1, 2)  # (B, nh, L, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).reshape(B, L, D)  # (B, L, D)
        return self.resid_dropout(self.proj(y))


class Block(nn.Module):
    """GPT-2 pre-LN block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.embed_dim)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.embed_dim, cfg.ffn_dim),
            nn.ReLU(),
            nn.Linear(cfg.ffn_dim, cfg.embed_dim),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))


def make_state_encoder(cfg: ModelConfig) -> nn.Module:
    """The state embedding, chosen by observation space. Vector observations: Linear."""
    return nn.Linear(cfg.state_dim, cfg.embed_dim)


def make_action_head(cfg: ModelConfig, head: str) -> nn.Module:
    """The action head, chosen by action space and objective. Box actions: see heads.py."""
    if head == "gaussian":
        return SquashedGaussianHead(cfg.embed_dim, cfg.act_dim, cfg.log_std_min, cfg.log_std_max)
    return DeterministicHead(cfg.embed_dim, cfg.act_dim)


def attention_mask(mask: torch.Tensor) -> torch.Tensor:
    """Boolean (B, 1, 3T, 3T) mask, True where a token may attend.

    Causal over the interleaved (R, s, a) tokens, blind to padded keys. Every token
    also sees itself, so padded queries never have an empty row (which would give NaN).
    """
    B, T = mask.shape
    L = 3 * T
    key_ok = mask.bool().repeat_interleave(3, dim=1)  # (B, 3T)
    causal = torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()
    eye = torch.eye(L, dtype=torch.bool, device=mask.device)
    return ((causal & key_ok[:, None, :]) | eye).unsqueeze(1)  # (B, 1, 3T, 3T)


@register_model("decision_transformer")
class DecisionTransformer(nn.Module):
    """`head` is the action head the objective trains: 'gaussian' (ODT's tanh-squashed
    Gaussian) or 'deterministic' (ODT+TD3, return-conditioned BC). It is derived from
    the objective (`learner.objectives`), not stored in the config."""

    def __init__(self, cfg: ModelConfig, head: str):
        super().__init__()
        problems = cfg.validate()
        if head not in HEADS:
            problems.append(f"head={head!r} must be one of {HEADS}")
        if problems:
            raise ValueError("; ".join(problems))
        self.cfg = cfg
        self.head = head
        D = cfg.embed_dim
        self.embed_return = nn.Linear(1, D)
        self.embed_state = make_state_encoder(cfg)
        self.embed_action = nn.Linear(cfg.act_dim, D)
        self.embed_timestep = (
            nn.Embedding(cfg.max_timestep, D) if cfg.use_timestep_embedding else None
        )
        self.embed_ln = nn.LayerNorm(D)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(D)
        self.apply(_gpt2_init)
        self.action_head = make_action_head(cfg, head)  # keeps its own (orthogonal) init
        # Frozen offline state statistics, saved with the weights (ODT keeps them fixed).
        self.register_buffer("state_mean", torch.zeros(cfg.state_dim))
        self.register_buffer("state_std", torch.ones(cfg.state_dim))

    def set_state_normalization(self, mean, std) -> None:
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(self.cfg.state_dim)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(self.cfg.state_dim)
        self.state_mean.copy_(mean)
        self.state_std.copy_(std)

    def encode(
        self,
        states: torch.Tensor,  # (B, T, S)
        actions: torch.Tensor,  # (B, T, A)
        returns_to_go: torch.Tensor,  # (B, T)
        timesteps: torch.Tensor,  # (B, T) integer
        mask: torch.Tensor,  # (B, T) 1 real / 0 padding
    ) -> torch.Tensor:
        """Hidden state at every state token, (B, T, D)."""
        B, T = mask.shape
        states = (states - self.state_mean) / self.state_std
        r = self.embed_return((returns_to_go * self.cfg.return_scale).unsqueeze(-1))
        s = self.embed_state(states)
        a = self.embed_action(actions)
        if self.embed_timestep is not None:
            t = self.embed_timestep(timesteps.long().clamp(0, self.cfg.max_timestep - 1))
            r, s, a = r + t, s + t, a + t
        x = torch.stack((r, s, a), dim=2).reshape(B, 3 * T, -1)  # (B, 3T, D): R1 s1 a1 R2 ...
        x = self.embed_dropout(self.embed_ln(x))
        attn_mask = attention_mask(mask)
        for block in self.blocks:
            x = block(x, attn_mask)
        x = self.ln_f(x).reshape(B, T, 3, -1)  # (B, T, 3, D)
        return x[:, :, 1]  # the state tokens predict the action

    def forward(self, states, actions, returns_to_go, timesteps, mask):
        """The action head's output at every position (a distribution or a point)."""
        return self.action_head(self.encode(states, actions, returns_to_go, timesteps, mask))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_window(self) -> float:
        """Forward+backward FLOPs for one K-step window (nanoGPT's 6N + attention estimate)."""
        L = 3 * self.cfg.context_len
        dense = 6 * self.num_params() * L
        attention = 12 * self.cfg.n_layer * self.cfg.embed_dim * L * L
        return float(dense + attention)


def _gpt2_init(module: nn.Module) -> None:
    """GPT-2 initialisation: N(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

