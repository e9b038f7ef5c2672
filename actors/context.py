"""Per-environment rolling contexts and batched policy inference.

Every environment of a batch keeps its last C steps (states, actions, returns-to-go,
timesteps) as rows of one array, so one forward pass acts for all of them; no
per-environment model calls. New steps enter on the right; a fresh episode is
left-padded with mask 0, as in training. The return-to-go starts at the target
return and is decremented by the rewards received.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from models import Categorical, SquashedGaussian


class ContextBuffer:
    """The last `context_len` steps of `num_envs` environments. States keep
    `obs_dtype` (uint8 frames stay uint8 until the model's encoder); actions are
    (act_dim,) float vectors, or int64 action indices when `discrete`."""

    def __init__(self, num_envs: int, context_len: int, obs_shape: Sequence[int], act_dim: int,
                 *, obs_dtype: str = "float32", discrete: bool = False):
        self.num_envs = num_envs
        self.context_len = context_len
        self.states = np.zeros((num_envs, context_len, *obs_shape), np.dtype(obs_dtype))
        self.actions = (np.zeros((num_envs, context_len), np.int64) if discrete
                        else np.zeros((num_envs, context_len, act_dim), np.float32))
        self.returns_to_go = np.zeros((num_envs, context_len), np.float32)
        self.timesteps = np.zeros((num_envs, context_len), np.int64)
        self.mask = np.zeros((num_envs, context_len), np.float32)

    @classmethod
    def for_env(cls, num_envs: int, context_len: int, spec) -> ContextBuffer:
        """A buffer shaped for the env `spec` (`actors.envs.EnvSpec`)."""
        return cls(num_envs, context_len, spec.observation_shape, spec.act_dim,
                   obs_dtype=spec.observation_dtype, discrete=spec.discrete)

    def start(self, envs: np.ndarray, observations: np.ndarray, target_return: float) -> None:
        """Begin new episodes for the envs selected by the boolean mask `envs`."""
        for arr in (self.states, self.actions, self.returns_to_go, self.timesteps, self.mask):
            arr[envs] = 0
        self.states[envs, -1] = observations[envs]
        self.returns_to_go[envs, -1] = target_return
        self.mask[envs, -1] = 1.0

    def advance(self, envs: np.ndarray, observations: np.ndarray, rewards: np.ndarray) -> None:
        """Append the next step for the envs selected by `envs` (after a transition)."""
        if not envs.any():
            return
        next_rtg = self.returns_to_go[:, -1] - rewards
        next_t = self.timesteps[:, -1] + 1
        every = envs.all()
        for arr in (self.states, self.actions, self.returns_to_go, self.timesteps, self.mask):
            if every:
                arr[:, :-1] = arr[:, 1:]
            else:
                arr[envs, :-1] = arr[envs, 1:]
        self.states[envs, -1] = observations[envs]
        self.actions[envs, -1] = 0.0
        self.returns_to_go[envs, -1] = next_rtg[envs]
        self.timesteps[envs, -1] = next_t[envs]
        self.mask[envs, -1] = 1.0

    def record_actions(self, actions: np.ndarray, rows: np.ndarray | None = None) -> None:
        """The actions just taken at the newest step of every env (or of the envs `rows`)."""
        if rows is None:
            self.actions[:, -1] = actions
        else:
            self.actions[rows, -1] = actions


class BatchedPolicy:
    """Acts for every env of a ContextBuffer with one forward pass.

    mode 'mean': tanh(mu) / the deterministic action / the most likely action index
    (evaluation).
    mode 'sample': a sample of the Gaussian or categorical policy (ODT exploration).
    mode 'noisy': the deterministic action plus N(0, noise_std^2), clipped to [-1, 1]
    (TD3 exploration); on a categorical policy, a sample.
    Box actions come back as float32 in [-1, 1], discrete ones as int32 indices.
    """

    MODES = ("mean", "sample", "noisy")

    def __init__(self, model: nn.Module, mode: str = "mean", noise_std: float = 0.1,
                 device: str | torch.device = "cpu", seed: int = 0):
        if mode not in self.MODES:
            raise ValueError(f"mode={mode!r} must be one of {self.MODES}")
        self.model = model
        self.mode = mode
        self.noise_std = noise_std
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    @torch.inference_mode()
    def act(self, ctx: ContextBuffer, rows: np.ndarray | None = None) -> np.ndarray:
        """Actions for every env of `ctx`, or for the envs `rows` (in that order)."""
        if self.model.training:  # eval() walks every module: an eighth of a small forward
            self.model.eval()
        dev = self.device
        arrays = (ctx.states, ctx.actions, ctx.returns_to_go, ctx.timesteps, ctx.mask)
        if rows is not None:
            arrays = tuple(a[rows] for a in arrays)
        # The newest step's output alone where the model has that path (`act`).
        forward = getattr(self.model, "act", self.model)
        out = forward(*(torch.from_numpy(a).to(dev) for a in arrays))
        if isinstance(out, Categorical):
            logits = out.logits[:, -1].float()
            if self.mode == "mean":
                index = logits.argmax(-1)
            else:
                index = torch.multinomial(logits.softmax(-1), 1, generator=self.generator)[:, 0]
            return index.cpu().numpy().astype(np.int32)
        if self.mode == "sample" and isinstance(out, SquashedGaussian):
            mu, std = out.mu[:, -1], out.std[:, -1]
            noise = torch.randn(mu.shape, generator=self.generator, device=dev)
            action = torch.tanh(mu + std * noise)
        else:
            action = out.mode[:, -1]
        action = action.float().cpu().numpy()
        if self.mode == "noisy" or (self.mode == "sample" and not isinstance(out, SquashedGaussian)):
            action = action + self.rng.normal(0.0, self.noise_std, size=action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
