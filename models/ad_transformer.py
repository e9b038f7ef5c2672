"""The Algorithm Distillation transformer and its in-context policy.

References:
- Laskin et al. 2022, "In-context Reinforcement Learning with Algorithm Distillation"
  (ICLR 2023): a causal transformer trained to predict a source RL algorithm's actions
  from its learning history (many episodes of one task in a row, improving), which
  then improves in context across episodes with frozen weights.
- The GPT-2 pre-LN blocks and their initialisation are the Decision Transformer's
  (models/decision_transformer.py), imported from there.

One token per step t of a history: the embedding of the observation o_t plus those of
the previous step's action a_{t-1} and reward r_{t-1} within the history, plus a learned
embedding of the token's position in the window. The hidden state at token t predicts
a_t, so the action is read from the token that holds the observation it was taken in,
and everything before it (earlier episodes included) is context. At a history's first
step the previous action is the extra index `act_dim` ("none") and the reward 0.

Observations are flat float vectors (Dark Room: the agent's (x, y) cell), normalized by
the frozen `state_mean`/`state_std` buffers and embedded by a two-layer MLP
(Linear-ReLU-Linear): a single Linear maps (x, y) to a plane of embeddings in which no
cell can be told apart from a mix of its neighbours, while the ReLU layer cuts the plane
into regions, so each grid cell can get an embedding of its own without the model
knowing the grid's size (a per-coordinate embedding table would need integer
coordinates and a fixed grid). Rewards enter raw (Dark Room's are 0 or 1 per step).

Windows are left-padded; `mask` is 1 on real steps and 0 on padding.
"""

from __future__ import annotations

import torch
from torch import nn

from models.decision_transformer import (
    ActionIndexEmbedding,
    Block,
    ModelConfig,
    _gpt2_init,
    store_state_statistics,
)
from models.heads import Categorical, CategoricalHead
from models.registry import register_model

AD_HEADS = ("categorical",)
"""The action heads the AD model has: a categorical over discrete actions."""


def causal_step_mask(mask: torch.Tensor) -> torch.Tensor:
    """Boolean (B, 1, T, T) mask, True where a step's token may attend: causal, blind to
    padded keys, and every token sees itself (so a padded query's row is never empty,
    which would give NaN)."""
    T = mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=mask.device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=mask.device)
    return ((causal & mask.bool()[:, None, :]) | eye).unsqueeze(1)  # (B, 1, T, T)


@register_model("algorithm_distillation")
class ADTransformer(nn.Module):
    """The AD policy over discrete actions. Reads state_dim, act_dim (the number of
    actions), context_len (T), embed_dim, n_layer, n_head, ffn_dim and dropout from
    `cfg`; the DT's return and timestep fields are not used. `head` must be
    'categorical'."""

    def __init__(self, cfg: ModelConfig, head: str):
        super().__init__()
        problems = cfg.validate()
        if head not in AD_HEADS:
            problems.append(f"head={head!r} must be one of {AD_HEADS} for "
                            f"model.kind={cfg.kind!r}")
        if cfg.action_kind != "discrete":
            problems.append(f"model.action_kind={cfg.action_kind!r} must be 'discrete' for "
                            f"model.kind={cfg.kind!r}")
        if cfg.frame_shape:
            problems.append(f"model.frame_shape={cfg.frame_shape} must be empty: "
                            f"model.kind={cfg.kind!r} takes vector observations")
        if cfg.use_timestep_embedding:
            problems.append(f"model.use_timestep_embedding=True is not supported by "
                            f"model.kind={cfg.kind!r}, whose tokens carry window positions")
        if problems:
            raise ValueError("; ".join(problems))
        self.cfg = cfg
        self.head = head
        D = cfg.embed_dim
        self.embed_observation = nn.Sequential(
            nn.Linear(cfg.state_dim, D), nn.ReLU(), nn.Linear(D, D))
        self.embed_prev_action = ActionIndexEmbedding(cfg.act_dim + 1, D)  # last index: none
        self.embed_prev_reward = nn.Linear(1, D)
        self.embed_position = nn.Embedding(cfg.context_len, D)
        self.embed_ln = nn.LayerNorm(D)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(D)
        self.apply(_gpt2_init)
        self.action_head = CategoricalHead(D, cfg.act_dim)  # keeps its own (orthogonal) init
        # Frozen offline observation statistics, saved with the weights.
        self.register_buffer("state_mean", torch.zeros(cfg.state_dim))
        self.register_buffer("state_std", torch.ones(cfg.state_dim))

    def set_state_normalization(self, mean, std) -> None:
        """Freeze the offline observation mean and std that observations are normalized
        with before the embedding."""
        store_state_statistics(self, mean, std)

    def encode(
        self,
        observations: torch.Tensor,  # (B, L, S) float
        prev_actions: torch.Tensor,  # (B, L) indices in [0, act_dim]; act_dim is "none"
        prev_rewards: torch.Tensor,  # (B, L) float
        mask: torch.Tensor,  # (B, L) 1 real / 0 padding
    ) -> torch.Tensor:
        """Hidden state at every step's token, (B, L, D).

        L may be shorter than context_len: the window then takes the last L positions,
        as a T-step window whose first T - L steps are padding."""
        L = mask.shape[1]
        T = self.cfg.context_len
        if L > T:
            raise ValueError(f"a window of {L} steps exceeds model.context_len={T}")
        observations = (observations - self.state_mean) / self.state_std
        positions = torch.arange(T - L, T, device=mask.device)
        x = (self.embed_observation(observations)
             + self.embed_prev_action(prev_actions)
             + self.embed_prev_reward(prev_rewards.unsqueeze(-1).to(observations.dtype))
             + self.embed_position(positions))  # (B, L, D)
        x = self.embed_dropout(self.embed_ln(x))
        attn_mask = causal_step_mask(mask)
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.ln_f(x)

    def forward(self, observations, prev_actions, prev_rewards, mask) -> Categorical:
        """The action distribution at every position, (B, L, act_dim) logits."""
        return self.action_head(self.encode(observations, prev_actions, prev_rewards, mask))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_window(self) -> float:
        """Forward+backward FLOPs for one T-step window (nanoGPT's 6N + attention
        estimate, one token per step)."""
        T = self.cfg.context_len
        return float(6 * self.num_params() * T + 12 * self.cfg.n_layer * self.cfg.embed_dim * T * T)


class InContextPolicy:
    """Acts for `num_envs` environments with an AD model, one forward pass for all.

    Each environment keeps its last `context_len` tokens (observation, previous action,
    previous reward) in a rolling buffer that episode resets do not clear: a new
    episode's first observation follows the previous episode's last step, whose action
    and reward it carries, as in the training histories. `reset()` clears every context
    (at the start of an evaluation, i.e. a new task). Per step:

        policy.reset()
        for t in range(steps):
            actions = policy.act(observations, greedy=False)
            observations, rewards, ... = envs.step(actions)   # resets inside are fine
            policy.record(actions, rewards)

    Inputs are numpy arrays or tensors; actions come back as an int64 numpy array.
    """

    def __init__(self, model: ADTransformer, num_envs: int, context_len: int | None = None):
        T = model.cfg.context_len if context_len is None else context_len
        if not 1 <= T <= model.cfg.context_len:
            raise ValueError(f"context_len={T} must lie in [1, "
                             f"model.context_len={model.cfg.context_len}]")
        self.model = model
        self.num_envs = num_envs
        self.context_len = T
        self.none_action = model.cfg.act_dim
        self.device = next(model.parameters()).device
        N, S = num_envs, model.cfg.state_dim
        self.observations = torch.zeros(N, T, S, device=self.device)
        self.prev_actions = torch.zeros(N, T, dtype=torch.long, device=self.device)
        self.prev_rewards = torch.zeros(N, T, device=self.device)
        self.mask = torch.zeros(N, T, device=self.device)
        self.last_action = torch.zeros(N, dtype=torch.long, device=self.device)
        self.last_reward = torch.zeros(N, device=self.device)
        self.awaiting_record = False
        self.reset()

    def reset(self) -> None:
        """Forget every context: the next token of each environment starts a history."""
        for buffer in (self.observations, self.prev_actions, self.prev_rewards, self.mask,
                       self.last_reward):
            buffer.zero_()
        self.last_action.fill_(self.none_action)
        self.awaiting_record = False

    @torch.inference_mode()
    def act(self, observations, greedy: bool = False,
            generator: torch.Generator | None = None, active=None,
            temperature: float = 1.0):
        """Append each env's new observation (with its previous action and reward) to its
        context and return the model's action there, (N,) int64: the most likely one if
        `greedy`, else a sample drawn with `generator` from the policy at `temperature`
        (its logits divided by it). `active` ((N,) bool, default all)
        names the envs that act: the others' contexts stay as they are and their actions
        are meaningless (an env whose next step is an auto-reset, say)."""
        if self.awaiting_record:
            raise RuntimeError("InContextPolicy.act called twice without record(): "
                               "record the actions and rewards of the previous step first")
        if self.model.training:
            self.model.eval()
        obs = torch.as_tensor(observations, dtype=torch.float32, device=self.device)
        obs = obs.reshape(self.num_envs, -1)  # (N, S)
        if active is None:
            rows = slice(None)
        else:
            rows = torch.as_tensor(active, dtype=torch.bool, device=self.device)
        for buffer in (self.observations, self.prev_actions, self.prev_rewards, self.mask):
            buffer[rows] = buffer[rows].roll(-1, dims=1)
        self.observations[rows, -1] = obs[rows]
        self.prev_actions[rows, -1] = self.last_action[rows]
        self.prev_rewards[rows, -1] = self.last_reward[rows]
        self.mask[rows, -1] = 1.0
        logits = self.model(self.observations, self.prev_actions, self.prev_rewards,
                            self.mask).logits[:, -1].float()  # (N, act_dim)
        if greedy:
            actions = logits.argmax(-1)
        else:
            actions = torch.multinomial((logits / temperature).softmax(-1), 1,
                                        generator=generator)[:, 0]
        self.awaiting_record = True
        return actions.cpu().numpy()

    def record(self, actions, rewards, active=None) -> None:
        """The actions taken and rewards received at the step just acted on: the previous
        action and reward of each env's next token. `active` ((N,) bool, default all)
        names the envs whose step was a transition; the others keep theirs."""
        if not self.awaiting_record:
            raise RuntimeError("InContextPolicy.record called without a preceding act()")
        actions = torch.as_tensor(actions, device=self.device).long().reshape(-1)
        rewards = torch.as_tensor(rewards, dtype=torch.float32, device=self.device).reshape(-1)
        if active is None:
            self.last_action.copy_(actions)
            self.last_reward.copy_(rewards)
        else:
            rows = torch.as_tensor(active, dtype=torch.bool, device=self.device)
            self.last_action[rows] = actions[rows]
            self.last_reward[rows] = rewards[rows]
        self.awaiting_record = False
