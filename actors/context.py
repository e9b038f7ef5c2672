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
    (act_dim,) float vectors, or int64 action indices when `discrete`.

    The five per-step fields (`states`, `actions`, `returns_to_go`, `timesteps`,
    `mask`, each shaped (num_envs, context_len, ...)) are views of one record array,
    so making room for a new step is one copy, not one per field. The views are
    strided; `BatchedPolicy.act` gathers contiguous copies for the model.
    """

    FIELDS = ("states", "actions", "returns_to_go", "timesteps", "mask")

    def __init__(self, num_envs: int, context_len: int, obs_shape: Sequence[int], act_dim: int,
                 *, obs_dtype: str = "float32", discrete: bool = False):
        self.num_envs = num_envs
        self.context_len = context_len
        action = ("actions", np.int64) if discrete else ("actions", np.float32, (act_dim,))
        step = np.dtype([("states", np.dtype(obs_dtype), tuple(obs_shape)), action,
                         ("returns_to_go", np.float32), ("timesteps", np.int64),
                         ("mask", np.float32)], align=True)
        self._steps = np.zeros((num_envs, context_len), step)
        self.states = self._steps["states"]
        self.actions = self._steps["actions"]
        self.returns_to_go = self._steps["returns_to_go"]
        self.timesteps = self._steps["timesteps"]
        self.mask = self._steps["mask"]

    @classmethod
    def for_env(cls, num_envs: int, context_len: int, spec) -> ContextBuffer:
        """A buffer shaped for the env `spec` (`actors.envs.EnvSpec`)."""
        return cls(num_envs, context_len, spec.observation_shape, spec.act_dim,
                   obs_dtype=spec.observation_dtype, discrete=spec.discrete)

    def start(self, envs: np.ndarray, observations: np.ndarray, target_return: float) -> None:
        """Begin new episodes for the envs selected by `envs` (a boolean mask over all
        envs, or their row indices)."""
        rows = self._rows(envs)
        if rows.size == 0:
            return
        self._steps[rows] = np.zeros((), self._steps.dtype)
        self.states[rows, -1] = observations[rows]
        self.returns_to_go[rows, -1] = target_return
        self.mask[rows, -1] = 1.0

    def advance(self, envs: np.ndarray, observations: np.ndarray, rewards: np.ndarray) -> None:
        """Append the next step for the envs selected by `envs` (a boolean mask over all
        envs, or their row indices) after a transition; every selected env must have
        begun an episode. `observations` and `rewards` are indexed by env, like the
        buffer's rows."""
        rows = self._rows(envs)
        if rows.size == 0:
            return
        if rows.size == self.num_envs:  # every env: slices, no gathers
            rows = slice(None)
        # The newest step moves left and stays in place as the new step's start: its
        # mask is already 1, its timestep and return-to-go are updated in place.
        self._steps[rows, :-1] = self._steps[rows, 1:]
        self.states[rows, -1] = observations[rows]
        self.actions[rows, -1] = 0
        self.returns_to_go[rows, -1] -= rewards[rows]
        self.timesteps[rows, -1] += 1

    @staticmethod
    def _rows(envs: np.ndarray) -> np.ndarray:
        envs = np.asarray(envs)
        return np.flatnonzero(envs) if envs.dtype == bool else envs

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
        rows = slice(None) if rows is None else rows
        arrays = (np.ascontiguousarray(getattr(ctx, name)[rows]) for name in ctx.FIELDS)
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
