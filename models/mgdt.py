"""The Multi-Game Decision Transformer and its acting policy.

References:
- Lee et al. 2022, "Multi-Game Decision Transformers" (NeurIPS): one transformer over
  Atari frames cut into patches, discretised returns-to-go, actions and rewards; return,
  action and reward are all predicted; at inference a return is sampled from the
  model's own return distribution reweighted towards high returns ("expert" action
  inference, P(R | optimal) proportional to exp(kappa * normalized R)).
- The official JAX colab (google-research/google-research
  `multi_game_dt/Multi_game_decision_transformers_public_colab.ipynb`), as summarised in
  reference/datasets.md section 5.2: the return buckets [-20, 100], the four
  reward classes, the token order, which token predicts what, the patch-attention
  relaxation, and the max-over-samples return inference with its evaluation settings.
- The GPT-2 pre-LN blocks and their initialisation are the Decision Transformer's
  (models/decision_transformer.py), imported from there; they take the attention mask
  as an argument.

Tokens of one step t, in order (S = P + 3 tokens per step, P = 36 for 84x84 frames):

    [patch_1 .. patch_P, R_t, a_t, r_t]

A patch token is a linear map of one 14x14 patch of the step's frame stack (all C
channels of the patch together, pixels scaled to [0, 1]) plus a learned embedding of
the patch's place in the frame. R_t is the return-to-go bucket (`ReturnBuckets`), a_t
the action index and r_t the reward class (`encode_reward`), each an embedding table.
A learned position embedding over the window's T * S tokens is added to every token.

Attention is causal over the token sequence, except that the P patch tokens of one
step see each other (a frame is one observation, not a sequence). Predictions:
the return distribution from the step's last patch token (it has seen the whole frame,
not yet R_t), the action from R_t's token, the reward class from a_t's token.

Windows are left-padded; `mask` is 1 on real steps and 0 on padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.decision_transformer import (
    ActionIndexEmbedding,
    Block,
    ModelConfig,
    _gpt2_init,
)
from models.heads import CategoricalHead
from models.registry import register_model

MGDT_HEADS = ("categorical",)
"""The action heads the MGDT has: a categorical over discrete actions (Atari: 18)."""
PATCH_SIZE = 14
"""Side of a square image patch in pixels (MGDT: 14, so an 84x84 frame is 6x6 patches)."""

REWARD_NONE, REWARD_POSITIVE, REWARD_TERMINAL, REWARD_NEGATIVE = 0, 1, 2, 3
"""The reward classes of the official code's `encode_reward`."""
NUM_REWARD_CLASSES = 4


@dataclass(frozen=True)
class ReturnBuckets:
    """Integer returns-to-go in [low, high] as buckets 0 .. high - low.

    The defaults are the official code's ATARI_RETURN_RANGE = [-20, 100], for returns of
    rewards clipped to [-1, 1]. There are high - low + 1 buckets: the official code
    clips returns to `high` inclusive but sizes its return embedding and logits
    high - low, so a return of `high` or more gets an index one past its table; here
    the table has a row for it."""

    low: int = -20
    high: int = 100

    def __post_init__(self):
        problems = [f"ReturnBuckets.{name}={getattr(self, name)!r} must be an int"
                    for name in ("low", "high")
                    if not isinstance(getattr(self, name), int)
                    or isinstance(getattr(self, name), bool)]
        if not problems and self.low >= self.high:
            problems.append(f"ReturnBuckets low={self.low} must be below high={self.high}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def num_buckets(self) -> int:
        """high - low + 1: one bucket per integer return in [low, high]."""
        return self.high - self.low + 1

    def encode(self, rtg) -> torch.Tensor:
        """`encode_return` with these bounds."""
        return encode_return(rtg, self.low, self.high)

    def decode(self, bucket) -> torch.Tensor:
        """`decode_return` with these bounds."""
        return decode_return(bucket, self.low)


ATARI_RETURN_BUCKETS = ReturnBuckets()
"""The return buckets every MGDT model has: the official Atari range [-20, 100]. A
module-level constant rather than a ModelConfig field, so a checkpoint's config
rebuilds the same tables; a different range is a different model."""


def encode_return(rtg, low: int = -20, high: int = 100) -> torch.Tensor:
    """Bucket index of each return-to-go, int64 of rtg's shape:
    clip(round-toward-zero(rtg), low, high) - low, in [0, high - low].

    `rtg` is a tensor or array of returns of clipped rewards (integers, possibly as
    floats); a NaN has no defined bucket."""
    rtg = torch.as_tensor(rtg)
    if rtg.is_floating_point():
        rtg = torch.trunc(rtg)
    return rtg.clamp(low, high).long() - low


def decode_return(bucket, low: int = -20) -> torch.Tensor:
    """The integer return of each bucket index, bucket + low, int64."""
    return torch.as_tensor(bucket).long() + low


def encode_reward(rewards, terminal=None) -> torch.Tensor:
    """Reward class of each step, int64 of rewards' shape: REWARD_NONE (0) where the
    reward is 0, REWARD_POSITIVE (1) where it is > 0, REWARD_NEGATIVE (3) where < 0,
    and REWARD_TERMINAL (2) wherever `terminal` (same shape, bool or 0/1) is set,
    whatever the reward.

    The official code names the four classes but computes (r > 0) * 1 + (r < 0) * 3, so
    it never produces class 2; `terminal=None` is exactly that. onramp sets class 2 on
    the last step of a terminated episode (not a truncated one), so the reward
    prediction also learns where episodes end."""
    rewards = torch.as_tensor(rewards)
    classes = (rewards > 0).long() * REWARD_POSITIVE + (rewards < 0).long() * REWARD_NEGATIVE
    if terminal is not None:
        terminal = torch.as_tensor(terminal, device=classes.device).bool()
        classes = torch.where(terminal, torch.full_like(classes, REWARD_TERMINAL), classes)
    return classes


def patchify(frames: torch.Tensor, patch: int = PATCH_SIZE) -> torch.Tensor:
    """Cut (B, T, C, H, W) frames into (B, T, P, C * patch * patch) patches, P =
    (H / patch) * (W / patch) in row-major order over the frame; each patch holds its
    C channels' pixels, channel-major. Keeps the dtype; `unpatchify` inverts it."""
    if frames.dim() != 5:
        raise ValueError(f"frames must be (B, T, C, H, W), got shape {tuple(frames.shape)}")
    B, T, C, H, W = frames.shape
    if H % patch or W % patch:
        raise ValueError(f"frames of {H}x{W} pixels do not cut into {patch}x{patch} patches")
    nh, nw = H // patch, W // patch
    x = frames.reshape(B, T, C, nh, patch, nw, patch)  # (B, T, C, nh, p, nw, p)
    x = x.permute(0, 1, 3, 5, 2, 4, 6)  # (B, T, nh, nw, C, p, p)
    return x.reshape(B, T, nh * nw, C * patch * patch)  # (B, T, P, C*p*p)


def unpatchify(patches: torch.Tensor, frame_shape: tuple[int, int, int],
               patch: int = PATCH_SIZE) -> torch.Tensor:
    """Reassemble (B, T, P, C * patch * patch) patches into (B, T, C, H, W) frames of
    `frame_shape` = (C, H, W): the inverse of `patchify`."""
    C, H, W = frame_shape
    if H % patch or W % patch:
        raise ValueError(f"frame_shape={tuple(frame_shape)} does not cut into "
                         f"{patch}x{patch} patches")
    nh, nw = H // patch, W // patch
    if patches.dim() != 4 or patches.shape[2:] != (nh * nw, C * patch * patch):
        raise ValueError(f"patches of shape {tuple(patches.shape)} are not (B, T, "
                         f"{nh * nw}, {C * patch * patch}) for frame_shape={tuple(frame_shape)}")
    B, T = patches.shape[:2]
    x = patches.reshape(B, T, nh, nw, C, patch, patch)  # (B, T, nh, nw, C, p, p)
    x = x.permute(0, 1, 4, 2, 5, 3, 6)  # (B, T, C, nh, p, nw, p)
    return x.reshape(B, T, C, H, W)  # (B, T, C, H, W)


def step_attention_mask(mask: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Boolean (B, 1, T*S, T*S) mask, S = num_patches + 3 tokens per step, True where a
    token may attend: every earlier token and itself, and also every patch token of its
    own step if it is a patch token; never a padded step's token, except that every
    token sees itself (so a padded query's row is never empty, which would give NaN)."""
    T = mask.shape[1]
    S = num_patches + 3
    index = torch.arange(T * S, device=mask.device)
    step = index // S
    is_patch = index % S < num_patches
    causal = index[:, None] >= index[None, :]  # (L, L)
    same_frame = (step[:, None] == step[None, :]) & is_patch[:, None] & is_patch[None, :]
    key_ok = mask.bool().repeat_interleave(S, dim=1)  # (B, L)
    eye = torch.eye(T * S, dtype=torch.bool, device=mask.device)
    return (((causal | same_frame) & key_ok[:, None, :]) | eye).unsqueeze(1)  # (B, 1, L, L)


@dataclass
class MGDTOutput:
    """The model's three predictions at every step of a window, fp32 or the autocast
    dtype of the heads' inputs."""

    return_logits: torch.Tensor  # (B, T, num_buckets), from the step's last patch token
    action_logits: torch.Tensor  # (B, T, act_dim), from the return token
    reward_logits: torch.Tensor  # (B, T, NUM_REWARD_CLASSES), from the action token


@register_model("multi_game_dt")
class MultiGameDecisionTransformer(nn.Module):
    """The MGDT over uint8 frame stacks and discrete actions. Reads act_dim (the number
    of actions; 18 for Atari's full action set), context_len (T), frame_shape (C, H, W,
    with H and W multiples of PATCH_SIZE), embed_dim, n_layer, n_head, ffn_dim and
    dropout from `cfg`; the DT's return scale and timestep fields are not used.
    `head` must be 'categorical'. Return buckets are `ATARI_RETURN_BUCKETS`.

    It keeps `state_mean`/`state_std` buffers (size state_dim, at 0 and 1) like the DT's
    image models, so code that reads a model's state statistics finds them; they are
    never applied and `set_state_normalization` is a no-op."""

    def __init__(self, cfg: ModelConfig, head: str):
        super().__init__()
        problems = cfg.validate()
        if head not in MGDT_HEADS:
            problems.append(f"head={head!r} must be one of {MGDT_HEADS} for "
                            f"model.kind={cfg.kind!r}")
        if cfg.action_kind != "discrete":
            problems.append(f"model.action_kind={cfg.action_kind!r} must be 'discrete' for "
                            f"model.kind={cfg.kind!r}")
        if len(cfg.frame_shape) != 3 or any(n % PATCH_SIZE for n in cfg.frame_shape[1:]):
            problems.append(f"model.frame_shape={cfg.frame_shape} must be (C, H, W) with H "
                            f"and W multiples of {PATCH_SIZE} for model.kind={cfg.kind!r}")
        if cfg.use_timestep_embedding:
            problems.append(f"model.use_timestep_embedding=True is not supported by "
                            f"model.kind={cfg.kind!r}, whose tokens carry window positions")
        if problems:
            raise ValueError("; ".join(problems))
        self.cfg = cfg
        self.head = head
        self.buckets = ATARI_RETURN_BUCKETS
        C, H, W = cfg.frame_shape
        self.num_patches = (H // PATCH_SIZE) * (W // PATCH_SIZE)
        self.tokens_per_step = self.num_patches + 3
        D = cfg.embed_dim
        self.embed_patch = nn.Linear(C * PATCH_SIZE * PATCH_SIZE, D)
        self.embed_patch_position = nn.Embedding(self.num_patches, D)
        self.embed_return = nn.Embedding(self.buckets.num_buckets, D)
        self.embed_action = ActionIndexEmbedding(cfg.act_dim, D)
        self.embed_reward = nn.Embedding(NUM_REWARD_CLASSES, D)
        self.embed_position = nn.Embedding(cfg.context_len * self.tokens_per_step, D)
        self.embed_ln = nn.LayerNorm(D)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(D)
        self.return_head = nn.Linear(D, self.buckets.num_buckets)
        self.reward_head = nn.Linear(D, NUM_REWARD_CLASSES)
        self.apply(_gpt2_init)
        self.action_head = CategoricalHead(D, cfg.act_dim)  # keeps its own (orthogonal) init
        self.register_buffer("state_mean", torch.zeros(cfg.state_dim))
        self.register_buffer("state_std", torch.ones(cfg.state_dim))

    def set_state_normalization(self, mean, std) -> None:
        """A no-op: pixels are only scaled to [0, 1]."""

    def encode(
        self,
        observations: torch.Tensor,  # (B, L, C, H, W) or (B, L, C*H*W) uint8
        return_buckets: torch.Tensor,  # (B, L) indices in [0, num_buckets)
        actions: torch.Tensor,  # (B, L) indices in [0, act_dim)
        reward_classes: torch.Tensor,  # (B, L) indices in [0, NUM_REWARD_CLASSES)
        mask: torch.Tensor,  # (B, L) 1 real / 0 padding
    ) -> torch.Tensor:
        """Hidden states of the three predicting tokens of every step, (B, L, 3, D): the
        last patch token (predicts the return), the return token (the action) and the
        action token (the reward class).

        L may be shorter than context_len: the window then takes the last L steps'
        positions, as a T-step window whose first T - L steps are padding."""
        B, L = mask.shape
        T, P, S = self.cfg.context_len, self.num_patches, self.tokens_per_step
        if L > T:
            raise ValueError(f"a window of {L} steps exceeds model.context_len={T}")
        if observations.dtype != torch.uint8:
            raise ValueError(f"observations must be uint8 pixels, got {observations.dtype}")
        frames = observations.reshape(B, L, *self.cfg.frame_shape)  # (B, L, C, H, W)
        pixels = patchify(frames).float() / 255.0  # (B, L, P, C*p*p)
        patches = self.embed_patch(pixels) + self.embed_patch_position.weight  # (B, L, P, D)
        others = torch.stack((self.embed_return(return_buckets.long()),
                              self.embed_action(actions),
                              self.embed_reward(reward_classes.long())), dim=2)  # (B, L, 3, D)
        x = torch.cat((patches, others.to(patches.dtype)), dim=2)  # (B, L, S, D)
        x = x.reshape(B, L * S, -1)  # (B, L*S, D): patches_1 R_1 a_1 r_1 patches_2 ...
        positions = torch.arange((T - L) * S, T * S, device=mask.device)
        x = self.embed_dropout(self.embed_ln(x + self.embed_position(positions)))
        attn_mask = step_attention_mask(mask, P)
        for block in self.blocks:
            x = block(x, attn_mask)
        x = self.ln_f(x).reshape(B, L, S, -1)  # (B, L, S, D)
        return x[:, :, P - 1 : P + 2]  # (B, L, 3, D)

    def predict(self, h: torch.Tensor) -> MGDTOutput:
        """The three logits from `encode`'s (B, L, 3, D) hidden states."""
        return MGDTOutput(return_logits=self.return_head(h[:, :, 0]),
                          action_logits=self.action_head(h[:, :, 1]).logits,
                          reward_logits=self.reward_head(h[:, :, 2]))

    def forward(self, observations, returns_to_go_buckets, actions, reward_classes,
                mask) -> MGDTOutput:
        """Return, action and reward-class logits at every step, (B, L, ·) each."""
        return self.predict(self.encode(observations, returns_to_go_buckets, actions,
                                        reward_classes, mask))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_window(self) -> float:
        """Forward+backward FLOPs for one T-step window: 6 per weight per token it
        multiplies (nanoGPT's 6N estimate, counted per token type: the blocks at every
        token, the patch projection at patch tokens, each head at its own token), plus
        nanoGPT's attention term. Embedding lookups are not counted."""
        T = self.cfg.context_len
        L = T * self.tokens_per_step
        every_token = sum(p.numel() for p in self.blocks.parameters())
        every_token += sum(p.numel() for p in self.ln_f.parameters())
        patch = sum(p.numel() for p in self.embed_patch.parameters())
        heads = sum(p.numel() for m in (self.return_head, self.action_head, self.reward_head)
                    for p in m.parameters())
        dense = 6 * (every_token * L + patch * T * self.num_patches + heads * T)
        attention = 12 * self.cfg.n_layer * self.cfg.embed_dim * L * L
        return float(dense + attention)


def expert_return(return_logits: torch.Tensor, kappa: float, temperature: float = 1.0,
                  num_samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample a return bucket per row of `return_logits` (..., num_buckets), int64 (...).

    The distribution is softmax((logits + kappa * w) / temperature), w = linspace(0, 1,
    num_buckets) the bucket's return normalized to [0, 1]: the model's P(R) reweighted by
    exp(kappa * w), the paper's P(R | optimal) (kappa = 0 leaves it unchanged). Of
    `num_samples` draws the highest bucket is returned, the official colab's max over
    samples; num_samples=1 is plain sampling."""
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")
    n = return_logits.shape[-1]
    weights = torch.linspace(0.0, 1.0, n, device=return_logits.device)
    logits = (return_logits.float() + kappa * weights) / temperature
    probs = logits.softmax(-1).reshape(-1, n)  # (M, n)
    draws = torch.multinomial(probs, num_samples, replacement=True, generator=generator)
    return draws.max(-1).values.reshape(return_logits.shape[:-1])  # (...)


def top_percentile_logits(logits: torch.Tensor, percentile: float) -> torch.Tensor:
    """`logits` (..., n) with every entry below its row's `percentile`-th percentile
    (linear interpolation, `torch.quantile`) set to -inf: sampling then draws only among
    the rest, at least the row's largest. The official colab's `top_percentile` action
    cut; 50 keeps the upper half of the logits."""
    threshold = torch.quantile(logits.float(), percentile / 100.0, dim=-1, keepdim=True)
    return logits.masked_fill(logits < threshold, float("-inf"))


POLICY_MODES = ("expert", "target")


class MultiGamePolicy:
    """Acts for `num_envs` environments with an MGDT, one batched forward pass (two in
    'expert' mode) per step.

    Each environment keeps its last `context_len` steps (frame stack, return bucket,
    action, reward class) in a rolling buffer; MGDT conditions within an episode, so
    `reset(env_ids)` clears an env's context, to be called for every env whose next
    observation starts an episode. Per step:

        policy.reset()
        for t in range(steps):
            actions = policy.act(frames, generator)
            frames, rewards, terminated, ... = envs.step(actions)
            policy.record(actions, clipped_rewards, terminated)
            policy.reset(ids_of_envs_whose_next_frame_starts_an_episode)

    Modes:
    - 'expert': the return token of the current step is sampled from the model's own
      return prediction there with `expert_return` (kappa, return_temperature,
      num_return_samples), then the action is sampled from the logits the model gives
      with that return token. The defaults are the official colab's evaluation
      settings (kappa 0, 128 samples and their max, return temperature 0.75, action
      temperature 1) but its action cut: `action_top_percentile` None samples from every
      action; the colab's 50 samples among the actions whose logits reach the row's
      median (`top_percentile_logits`).
    - 'target': the return token is the bucket of a target return, `target_return` at an
      episode's start, less each clipped reward received, as the DT conditions.

    Frames are uint8 (N, C, H, W) arrays or tensors; actions come back as an int64 numpy
    array of N action indices, drawn with `action_temperature` (after the
    `action_top_percentile` cut, in both modes).
    """

    def __init__(self, model: MultiGameDecisionTransformer, num_envs: int,
                 context_len: int | None = None, *, mode: str = "expert", kappa: float = 0.0,
                 return_temperature: float = 0.75, num_return_samples: int = 128,
                 action_temperature: float = 1.0, target_return: float | None = None,
                 action_top_percentile: float | None = None):
        T = model.cfg.context_len if context_len is None else context_len
        problems = []
        if not 1 <= T <= model.cfg.context_len:
            problems.append(f"context_len={T} must lie in [1, model.context_len="
                            f"{model.cfg.context_len}]")
        if num_envs < 1:
            problems.append(f"num_envs={num_envs} must be >= 1")
        if mode not in POLICY_MODES:
            problems.append(f"mode={mode!r} must be one of {POLICY_MODES}")
        if mode == "target" and target_return is None:
            problems.append("mode='target' needs a target_return")
        if not return_temperature > 0:
            problems.append(f"return_temperature={return_temperature} must be > 0")
        if not action_temperature > 0:
            problems.append(f"action_temperature={action_temperature} must be > 0")
        if num_return_samples < 1:
            problems.append(f"num_return_samples={num_return_samples} must be >= 1")
        if action_top_percentile is not None and not 0 <= action_top_percentile < 100:
            problems.append(f"action_top_percentile={action_top_percentile} must lie in "
                            "[0, 100) or be None")
        if problems:
            raise ValueError("; ".join(problems))
        self.model = model
        self.num_envs = num_envs
        self.context_len = T
        self.mode = mode
        self.kappa = kappa
        self.return_temperature = return_temperature
        self.num_return_samples = num_return_samples
        self.action_temperature = action_temperature
        self.action_top_percentile = action_top_percentile
        self.target_return = target_return
        self.device = next(model.parameters()).device
        N = num_envs
        self.frames = torch.zeros(N, T, *model.cfg.frame_shape, dtype=torch.uint8,
                                  device=self.device)
        self.return_buckets = torch.zeros(N, T, dtype=torch.long, device=self.device)
        self.actions = torch.zeros(N, T, dtype=torch.long, device=self.device)
        self.reward_classes = torch.zeros(N, T, dtype=torch.long, device=self.device)
        self.mask = torch.zeros(N, T, device=self.device)
        self.targets = torch.zeros(N, device=self.device)
        """Each env's return still to collect in 'target' mode."""
        self.awaiting_record = False
        self.reset()

    def reset(self, env_ids=None) -> None:
        """Clear the contexts of `env_ids` (every env when None): their next step starts
        an episode, with the target return back at `target_return`."""
        rows = slice(None) if env_ids is None else torch.as_tensor(
            env_ids, dtype=torch.long, device=self.device).reshape(-1)
        for buffer in (self.frames, self.return_buckets, self.actions, self.reward_classes,
                       self.mask):
            buffer[rows] = 0
        self.targets[rows] = 0.0 if self.target_return is None else float(self.target_return)

    @torch.inference_mode()
    def act(self, frames, generator: torch.Generator | None = None):
        """Append each env's frame stack to its context and return the action sampled
        there, (N,) int64, with `generator` drawing the return (expert mode) and the
        action."""
        if self.awaiting_record:
            raise RuntimeError("MultiGamePolicy.act called twice without record(): "
                               "record the actions and rewards of the previous step first")
        frames = torch.as_tensor(frames, device=self.device)
        expected = (self.num_envs, *self.model.cfg.frame_shape)
        if frames.dtype != torch.uint8 or tuple(frames.shape) != expected:
            raise ValueError(f"frames must be uint8 of shape {expected}, got "
                             f"{frames.dtype} {tuple(frames.shape)}")
        if self.model.training:
            self.model.eval()
        for buffer in (self.frames, self.return_buckets, self.actions, self.reward_classes,
                       self.mask):
            buffer.copy_(buffer.roll(-1, dims=1))
        self.frames[:, -1] = frames
        # The current step's action and reward are unknown: their tokens follow every
        # token the return and action are read from, so the placeholders are never seen.
        self.actions[:, -1] = 0
        self.reward_classes[:, -1] = REWARD_NONE
        self.mask[:, -1] = 1.0
        if self.mode == "expert":
            self.return_buckets[:, -1] = 0  # unseen by the last patch token
            return_logits = self._predict().return_logits[:, -1]  # (N, num_buckets)
            self.return_buckets[:, -1] = expert_return(
                return_logits, self.kappa, self.return_temperature, self.num_return_samples,
                generator)
        else:
            self.return_buckets[:, -1] = self.model.buckets.encode(self.targets)
        logits = self._predict().action_logits[:, -1].float()  # (N, act_dim)
        if self.action_top_percentile is not None:
            logits = top_percentile_logits(logits, self.action_top_percentile)
        probs = (logits / self.action_temperature).softmax(-1)
        actions = torch.multinomial(probs, 1, generator=generator)[:, 0]
        self.awaiting_record = True
        return actions.cpu().numpy()

    def _predict(self) -> MGDTOutput:
        return self.model(self.frames, self.return_buckets, self.actions,
                          self.reward_classes, self.mask)

    def record(self, actions, rewards, terminated=None) -> None:
        """The actions taken and the rewards received (clipped to [-1, 1], here as well)
        at the step just acted on, and whether it ended its episode by termination: the
        step's action and reward-class tokens (`encode_reward`), and in 'target' mode
        the target return less the reward."""
        if not self.awaiting_record:
            raise RuntimeError("MultiGamePolicy.record called without a preceding act()")
        actions = torch.as_tensor(actions, device=self.device).long().reshape(-1)
        rewards = torch.as_tensor(rewards, dtype=torch.float32,
                                  device=self.device).reshape(-1).clamp(-1.0, 1.0)
        if terminated is not None:
            terminated = torch.as_tensor(terminated, device=self.device).reshape(-1)
        self.actions[:, -1] = actions
        self.reward_classes[:, -1] = encode_reward(rewards, terminated)
        self.targets -= rewards
        self.awaiting_record = False

