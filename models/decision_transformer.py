"""The Decision Transformer as the Online Decision Transformer defines it.

References:
- Chen et al. 2021, "Decision Transformer: Reinforcement Learning via Sequence Modeling".
- Zheng et al. 2022, "Online Decision Transformer" (ICML): GPT-2 pre-LN blocks
  (4 layers, 4 heads, width 512, FFN 2048, ReLU, dropout 0.1), per-modality linear
  embeddings of return, state and action followed by one LayerNorm, no positional
  embedding by default, the action read from the state token.
- Radford et al. 2019 (GPT-2) for the block layout; Karpathy's nanoGPT for the
  shape of this file.
- Mnih et al. 2015, "Human-level control through deep reinforcement learning"
  (Nature DQN) for the convolutional frame encoder of image observations, which
  Chen et al. 2021 also use for their Atari runs.

Inputs are in environment units: raw states and raw returns-to-go (scaled here by
`return_scale`). Vector states are normalized here with the frozen offline mean/std
held as buffers; image states (`ModelConfig.frame_shape`) arrive as uint8 pixels and
are scaled to [0, 1] inside the frame encoder, without mean/std normalization.
Continuous actions are in the normalized box [-1, 1]; discrete actions are integer
indices. Sequences are left-padded; `mask` is 1 on real steps and 0 on padding.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.heads import CategoricalHead, DeterministicHead, SquashedGaussianHead
from models.registry import MODELS, register_model

ACTION_KINDS = ("continuous", "discrete")
"""Values of `ModelConfig.action_kind`: Box actions in [-1, 1], or Discrete action indices."""
ACTION_KIND_HEADS = {
    "continuous": ("gaussian", "deterministic"),
    "discrete": ("categorical",),
}
"""The action heads each action kind can train."""
HEADS = ("gaussian", "deterministic", "categorical")
RETIRED_MODEL_FIELDS = ("policy",)
"""ModelConfig fields that checkpoints and saved configs of earlier onramp versions hold
and that are now derived (the action head comes from the objective); readers drop them."""


@dataclass(frozen=True)
class ModelConfig:
    state_dim: int
    """Size of the (flat) observation vector; C*H*W for image observations."""
    act_dim: int
    """Size of the action vector (continuous), or the number of actions (discrete)."""
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
    action_kind: str = "continuous"
    """'continuous': Box actions, float vectors in [-1, 1] of size act_dim.
    'discrete': act_dim actions, given to the model as integer indices of shape (B, T)."""
    frame_shape: tuple[int, ...] = ()
    """Empty for vector observations of state_dim floats; (C, H, W) for uint8 image
    observations (e.g. (4, 84, 84) stacked Atari frames), with state_dim = C*H*W."""

    def __post_init__(self):
        # A JSON round-trip turns the tuple into a list; keep the field hashable and comparable.
        if isinstance(self.frame_shape, list):
            object.__setattr__(self, "frame_shape", tuple(self.frame_shape))

    @property
    def is_image(self) -> bool:
        """Whether observations are uint8 images of `frame_shape`."""
        return len(self.frame_shape) > 0

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
        if self.action_kind not in ACTION_KINDS:
            problems.append(f"model.action_kind={self.action_kind!r} must be one of {ACTION_KINDS}")
        problems += self._frame_problems()
        return problems

    def _frame_problems(self) -> list[str]:
        shape = self.frame_shape
        if not isinstance(shape, tuple) or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in shape
        ):
            return [f"model.frame_shape={shape!r} must be a tuple of ints"]
        if not shape:
            return []
        if len(shape) != 3 or min(shape) < 1:
            return [f"model.frame_shape={shape} must be empty or 3 positive ints (C, H, W)"]
        problems = []
        if self.state_dim != math.prod(shape):
            problems.append(
                f"model.state_dim={self.state_dim} must equal the product of "
                f"model.frame_shape={shape} ({math.prod(shape)})"
            )
        if min(shape[1:]) < FrameEncoder.MIN_SIZE:
            problems.append(
                f"model.frame_shape={shape} must be at least {FrameEncoder.MIN_SIZE} pixels "
                "high and wide for the frame encoder"
            )
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

    def forward_eval(self, x: torch.Tensor, bias: torch.Tensor, last: bool = False) -> torch.Tensor:
        """`forward` without dropout, for acting: explicit matmuls and a softmax over
        scores plus the additive `bias` (0 where a token may attend, -inf elsewhere;
        (L, L) or (B, 1, L, L)), which at a few dozen tokens costs less than
        `scaled_dot_product_attention` with a boolean mask. With `last`, the output at
        the last position only, (B, 1, D): keys and values of every position, the
        query of the last, and `bias` its row, (..., 1, L)."""
        B, L, D = x.shape
        hs = D // self.n_head
        weight, b = self.qkv.weight, self.qkv.bias
        if last:
            q = F.linear(x[:, -1:], weight[:D], b[:D]).view(B, 1, self.n_head, hs).transpose(1, 2)
            k, v = F.linear(x, weight[D:], b[D:]).view(B, L, 2, self.n_head, hs).permute(
                2, 0, 3, 1, 4)  # each (B, nh, L, hs)
        else:
            q, k, v = F.linear(x, weight, b).view(B, L, 3, self.n_head, hs).permute(2, 0, 3, 1, 4)
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(hs ** -0.5).add_(bias)
        y = torch.matmul(scores.softmax(-1), v)  # (B, nh, L or 1, hs)
        return F.linear(y.transpose(1, 2).reshape(B, q.shape[2], D), self.proj.weight,
                        self.proj.bias)


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

    def forward_eval(self, x: torch.Tensor, bias: torch.Tensor, last: bool = False) -> torch.Tensor:
        """`forward` of a model in eval mode (no dropout), with an additive attention
        `bias` (`CausalSelfAttention.forward_eval`) and functional calls in place of
        the submodules' own. With `last`, the output at the last position only,
        (B, 1, D), and `bias` the last row of the full one."""
        D = x.shape[-1]
        attended = self.attn.forward_eval(
            F.layer_norm(x, (D,), self.ln_1.weight, self.ln_1.bias), bias, last)
        x = (x[:, -1:] if last else x) + attended
        fc, out = self.mlp[0], self.mlp[2]
        h = F.linear(F.layer_norm(x, (D,), self.ln_2.weight, self.ln_2.bias), fc.weight,
                     fc.bias).relu_()
        return x + F.linear(h, out.weight, out.bias)


class FrameEncoder(nn.Module):
    """Nature-DQN convolutions (8x8/4 32ch, 4x4/2 64ch, 3x3/1 64ch, ReLU) and a Linear
    to the embedding width, applied to every time step's frame.

    Takes uint8 pixels, (B, T, C, H, W) or flat (B, T, C*H*W), and converts them to
    float in [0, 1] itself, so frames cross to the device as uint8 (4x smaller)."""

    MIN_SIZE = 36
    """The smallest height and width the three convolutions leave at least 1x1."""

    def __init__(self, frame_shape: tuple[int, int, int], embed_dim: int):
        super().__init__()
        self.frame_shape = tuple(frame_shape)
        C, H, W = self.frame_shape
        self.convs = nn.Sequential(
            nn.Conv2d(C, 32, kernel_size=8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1),
            nn.ReLU(),
        )
        self.out_hw = _conv_out(_conv_out(_conv_out((H, W), 8, 4), 4, 2), 3, 1)
        self.linear = nn.Linear(64 * self.out_hw[0] * self.out_hw[1], embed_dim)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if states.dtype != torch.uint8:
            raise ValueError(f"image states must be uint8 pixels, got {states.dtype}")
        B, T = states.shape[:2]
        x = states.reshape(B * T, *self.frame_shape).float() / 255.0  # (B*T, C, H, W)
        x = self.convs(x).flatten(1)  # (B*T, 64 * h * w)
        return self.linear(x).reshape(B, T, -1)  # (B, T, D)

    def conv_macs(self) -> int:
        """Multiply-accumulates of the convolutions for one frame."""
        macs, hw = 0, self.frame_shape[1:]
        for conv in self.convs:
            if isinstance(conv, nn.Conv2d):
                hw = _conv_out(hw, conv.kernel_size[0], conv.stride[0])
                macs += hw[0] * hw[1] * conv.weight.numel()
        return macs


def _conv_out(hw: tuple[int, int], kernel: int, stride: int) -> tuple[int, int]:
    """Output height and width of an unpadded convolution."""
    return ((hw[0] - kernel) // stride + 1, (hw[1] - kernel) // stride + 1)


class ActionIndexEmbedding(nn.Embedding):
    """nn.Embedding over discrete action indices that accepts any integer or float dtype
    and clamps into [0, num_actions), so padded steps (index 0, masked) embed safely."""

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        return super().forward(actions.long().clamp(0, self.num_embeddings - 1))


def make_state_encoder(cfg: ModelConfig) -> nn.Module:
    """The state embedding, chosen by observation space: Linear for vector observations,
    `FrameEncoder` for image observations."""
    if cfg.is_image:
        return FrameEncoder(cfg.frame_shape, cfg.embed_dim)
    return nn.Linear(cfg.state_dim, cfg.embed_dim)


def make_action_encoder(cfg: ModelConfig) -> nn.Module:
    """The action embedding, chosen by action space: Linear over the action vector for
    continuous actions, an embedding table over action indices for discrete ones."""
    if cfg.action_kind == "discrete":
        return ActionIndexEmbedding(cfg.act_dim, cfg.embed_dim)
    return nn.Linear(cfg.act_dim, cfg.embed_dim)


def make_action_head(cfg: ModelConfig, head: str) -> nn.Module:
    """The action head, chosen by action space and objective (see heads.py); ValueError
    when `head` does not fit `cfg.action_kind`."""
    if head not in ACTION_KIND_HEADS.get(cfg.action_kind, ()):
        raise ValueError(
            f"head={head!r} does not fit model.action_kind={cfg.action_kind!r}; "
            f"it takes {ACTION_KIND_HEADS.get(cfg.action_kind, ())}"
        )
    if head == "gaussian":
        return SquashedGaussianHead(cfg.embed_dim, cfg.act_dim, cfg.log_std_min, cfg.log_std_max)
    if head == "categorical":
        return CategoricalHead(cfg.embed_dim, cfg.act_dim)
    return DeterministicHead(cfg.embed_dim, cfg.act_dim)


def store_state_statistics(model: nn.Module, mean, std) -> None:
    """Copy (state_dim,) observation statistics into `model`'s `state_mean` and
    `state_std` buffers, as float32."""
    dim = model.cfg.state_dim
    model.state_mean.copy_(torch.as_tensor(mean, dtype=torch.float32).reshape(dim))
    model.state_std.copy_(torch.as_tensor(std, dtype=torch.float32).reshape(dim))


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


_CAUSAL_BIAS: dict[tuple[int, torch.device], torch.Tensor] = {}


def acting_bias(mask: torch.Tensor, L: int) -> torch.Tensor:
    """Additive attention bias over the first `L` interleaved tokens of `mask`'s steps:
    0 where `attention_mask` lets a token attend, -inf elsewhere. (L, L), cached per
    length and device, when no step is padded (checked on the host for CPU masks; a
    device mask always takes the general path, so acting never syncs); (B, 1, L, L)
    otherwise."""
    if mask.device.type == "cpu" and bool(mask.all()):
        key = (L, mask.device)
        if key not in _CAUSAL_BIAS:
            allowed = torch.ones(L, L, dtype=torch.bool).tril()
            _CAUSAL_BIAS[key] = torch.zeros(L, L).masked_fill_(~allowed, float("-inf"))
        return _CAUSAL_BIAS[key]
    allowed = attention_mask(mask)[:, :, :L, :L]
    return torch.zeros(allowed.shape, device=mask.device).masked_fill_(~allowed, float("-inf"))


@register_model("decision_transformer")
class DecisionTransformer(nn.Module):
    """`head` is the action head the objective trains: 'gaussian' (ODT's tanh-squashed
    Gaussian), 'deterministic' (ODT+TD3, return-conditioned BC) or 'categorical'
    (discrete actions). It is derived from the objective (`learner.objectives`), not
    stored in the config.

    Image models keep the `state_mean`/`state_std` buffers (size state_dim, at 0 and 1)
    so every model has the same buffers, but never apply them; their
    `set_state_normalization` is a no-op."""

    def __init__(self, cfg: ModelConfig, head: str):
        super().__init__()
        problems = cfg.validate()
        if head not in HEADS:
            problems.append(f"head={head!r} must be one of {HEADS}")
        elif head not in ACTION_KIND_HEADS.get(cfg.action_kind, HEADS):
            problems.append(
                f"head={head!r} does not fit model.action_kind={cfg.action_kind!r}; "
                f"it takes {ACTION_KIND_HEADS[cfg.action_kind]}"
            )
        if problems:
            raise ValueError("; ".join(problems))
        self.cfg = cfg
        self.head = head
        D = cfg.embed_dim
        self.embed_return = nn.Linear(1, D)
        self.embed_state = make_state_encoder(cfg)
        self.embed_action = make_action_encoder(cfg)
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
        """Freeze the offline state mean and std that vector states are normalized with;
        a no-op for image models, whose pixels are only scaled to [0, 1]."""
        if self.cfg.is_image:
            return
        store_state_statistics(self, mean, std)

    def encode(
        self,
        states: torch.Tensor,  # (B, T, S) float, or (B, T, C, H, W) uint8 for images
        actions: torch.Tensor,  # (B, T, A) in [-1, 1], or (B, T) indices if discrete
        returns_to_go: torch.Tensor,  # (B, T)
        timesteps: torch.Tensor,  # (B, T) integer
        mask: torch.Tensor,  # (B, T) 1 real / 0 padding
    ) -> torch.Tensor:
        """Hidden state at every state token, (B, T, D)."""
        B, T = mask.shape
        x = self.tokens(states, actions, returns_to_go, timesteps)
        attn_mask = attention_mask(mask)
        for block in self.blocks:
            x = block(x, attn_mask)
        x = self.ln_f(x).reshape(B, T, 3, -1)  # (B, T, 3, D)
        return x[:, :, 1]  # the state tokens predict the action

    def tokens(self, states, actions, returns_to_go, timesteps) -> torch.Tensor:
        """The embedded, interleaved input tokens R1 s1 a1 R2 ..., (B, 3T, D)."""
        x = self.token_sum(states, actions, returns_to_go, timesteps)
        return self.embed_dropout(self.embed_ln(x))

    def token_sum(self, states, actions, returns_to_go, timesteps) -> torch.Tensor:
        """The interleaved token embeddings (plus timestep embeddings) before the
        embedding LayerNorm, (B, 3T, D)."""
        B, T = returns_to_go.shape
        if not self.cfg.is_image:
            states = (states - self.state_mean) / self.state_std
        r = self.embed_return((returns_to_go * self.cfg.return_scale).unsqueeze(-1))
        s = self.embed_state(states)
        a = self.embed_action(actions)
        if self.embed_timestep is not None:
            t = self.embed_timestep(timesteps.long().clamp(0, self.cfg.max_timestep - 1))
            r, s, a = r + t, s + t, a + t
        return torch.stack((r, s, a), dim=2).reshape(B, 3 * T, -1)  # R1 s1 a1 R2 ...

    def forward(self, states, actions, returns_to_go, timesteps, mask):
        """The action head's output at every position (a distribution or a point)."""
        return self.action_head(self.encode(states, actions, returns_to_go, timesteps, mask))

    def act(self, states, actions, returns_to_go, timesteps, mask):
        """`forward`'s output at the newest step only (T = 1 in its shapes), for acting
        with a model in eval mode: the newest action token (a placeholder that no state
        token sees) is left out, the last block computes its query, output projection
        and MLP at the newest state token alone, with keys and values of all tokens,
        and every block runs its dropout-free path (`Block.forward_eval`). On CPU a
        batch without padding reads its mask once on the host and attends through a
        cached causal bias. Equal to `forward(...)[:, -1:]` up to float rounding."""
        L = 3 * mask.shape[1] - 1  # ... R_T s_T
        x = self.embed_ln(self.token_sum(states, actions, returns_to_go, timesteps))[:, :L]
        bias = acting_bias(mask, L)
        for block in self.blocks[:-1]:
            x = block.forward_eval(x, bias)
        x = self.blocks[-1].forward_eval(x, bias[..., -1:, :], last=True)
        return self.action_head(self.ln_f(x))  # (B, 1, ...)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_window(self) -> float:
        """Forward+backward FLOPs for one K-step window (nanoGPT's 6N + attention estimate)."""
        L = 3 * self.cfg.context_len
        dense = 6 * self.num_params() * L
        attention = 12 * self.cfg.n_layer * self.cfg.embed_dim * L * L
        if isinstance(self.embed_state, FrameEncoder):
            # Convolutions reuse each weight at every output pixel, once per state token.
            convs = self.embed_state.convs
            conv_params = sum(p.numel() for p in convs.parameters())
            dense += 6 * (self.embed_state.conv_macs() * self.cfg.context_len - conv_params * L)
        return float(dense + attention)


def _gpt2_init(module: nn.Module) -> None:
    """GPT-2 initialisation: N(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

