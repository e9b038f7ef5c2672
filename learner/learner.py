"""The update step: one function of a batch of windows, objective chosen by config.

Pretraining and fine-tuning use the same `Learner`; only the source of batches
differs (an in-memory offline sampler, or the Reverb dataset). No threads, queues
or signals here.

Usage:
    learner = Learner(model_cfg, objective_cfg, optim_cfg, device="cuda")
    learner.set_state_normalization(mean, std)
    for batch in batches:                  # dict of (B, K, ...) tensors, see replay/windows.py
        metrics = learner.update(batch)    # dict of 0-d tensors; no host sync inside

Data-parallel (several processes, see learner/distributed.py): every rank builds the
same Learner, calls `broadcast_parameters()` once, then updates on its own batches;
gradients are averaged across ranks inside `update`, so the ranks stay identical.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import torch
from pytorch_optimizer import Lamb
from torch import nn

from learner import distributed, losses
from learner.config import DEFAULT_COMPUTE, ComputeConfig, ObjectiveConfig, OptimConfig
from models import ModelConfig, TwinQ, build_model


def shifted_window(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The window one step later, for TD targets: position i holds step t_i + 1.

    next states are the stored next observations; actions move left by one (the last
    action is never seen by the last state token, so zeros are fine); the
    return-to-go of the next step is rtg - r; the mask stays the same.
    """
    actions = torch.cat(
        (batch["actions"][:, 1:], torch.zeros_like(batch["actions"][:, :1])), dim=1
    )
    return {
        "observations": batch["next_observations"],
        "actions": actions,
        "returns_to_go": batch["returns_to_go"] - batch["rewards"],
        "timesteps": batch["timesteps"] + 1,
        "mask": batch["mask"],
    }


class NonFiniteLoss(RuntimeError):
    """Too many updates in a row had a NaN or inf loss; the run stops."""


class NonFiniteGuard:
    """Counts a learner's skipped updates in a row; raises NonFiniteLoss at `limit`.

        guard = NonFiniteGuard(learner, limit=10)
        metrics = learner.update(batch)
        if guard.skipped():   # this update was skipped
            ...
    """

    def __init__(self, learner: "Learner", limit: int):
        self.learner = learner
        self.limit = limit
        self.in_row = 0
        self._seen = learner.skipped

    def skipped(self) -> bool:
        if self.learner.skipped == self._seen:
            self.in_row = 0
            return False
        self._seen = self.learner.skipped
        self.in_row += 1
        if self.in_row >= self.limit:
            raise NonFiniteLoss(
                f"{self.in_row} updates in a row had a NaN or inf loss or gradient "
                f"(learner step {self.learner.step}, {self.learner.skipped} skipped in all); "
                "stopping with the last good checkpoint"
            )
        return True


class _NonFinite(Exception):
    """A loss or gradient norm is NaN or inf: the update is skipped."""


def _require_finite(value: torch.Tensor) -> None:
    """Raise _NonFinite unless `value` is finite on every rank (ranks skip together)."""
    if not distributed.all_agree(bool(torch.isfinite(value))):
        raise _NonFinite


@torch.no_grad()
def ema_update(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


class Learner:
    """The transformer (LAMB), the temperature (Adam) and, under odt_td3, the twin critic
    (AdamW) with target copies of both networks.

    Data parallelism. When torch.distributed runs more than one rank, each backward is
    followed by `distributed.average_gradients` over the parameters that optimizer is
    about to step (before the transformer's gradient clipping, so every rank clips the
    same averaged gradient). An explicit all-reduce rather than DDP wrappers, because
    the update does not fit DDP's one-forward-one-backward-per-module contract: the
    actor loss backpropagates through the critic without stepping it (DDP would
    all-reduce those critic gradients for nothing, and `critic.first` bypasses the
    wrapper's forward), the temperature is a bare tensor, the target networks are
    copies that must stay unwrapped. Averaging where each optimizer steps keeps the
    three updates as they read in one process, where it is a no-op. The cost is that
    communication does not overlap with the backward pass.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        objective: ObjectiveConfig,
        optim: OptimConfig,
        device: str | torch.device = "cpu",
        compute: ComputeConfig = DEFAULT_COMPUTE,
    ):
        problems = objective.validate() + optim.validate() + compute.validate()
        if problems:
            raise ValueError("; ".join(problems))
        self.device = torch.device(device)
        self.objective = objective
        self.optim = optim
        self.compute = compute
        self.bf16, self.compiled, self.fused = compute.resolve(self.device)
        fused = self.fused
        self.model_cfg = replace(model_cfg, policy=objective.policy)
        torch.manual_seed(optim.seed)
        self.model = build_model(self.model_cfg).to(self.device)
        self.optimizer = Lamb(
            self.model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay, eps=1e-8,
            foreach=True if fused else None,
        )
        warmup = max(optim.warmup_steps, 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min((s + 1) / warmup, 1.0)
        )
        # log lambda is a leaf tensor of its own, saved in state_dict (ODT's code loses it).
        self.log_temperature = torch.tensor(
            math.log(objective.init_temperature), device=self.device, requires_grad=True
        )
        self.temperature_optimizer = torch.optim.Adam(
            [self.log_temperature], lr=objective.temperature_lr, betas=(0.9, 0.999),
            fused=fused or None,
        )
        self.target_entropy = (
            objective.target_entropy
            if objective.target_entropy is not None
            else -float(self.model_cfg.act_dim)
        )
        self.critic = self.critic_target = self.model_target = self.critic_optimizer = None
        if objective.kind == "odt_td3":
            self.critic = TwinQ(self.model_cfg.state_dim, self.model_cfg.act_dim, objective.critic)
            self.critic.to(self.device)
            self.critic_optimizer = torch.optim.AdamW(
                self.critic.parameters(), lr=objective.critic_lr, fused=fused or None
            )
            self._reset_targets()
        # The encoders the update calls: the modules' own, or compiled views of them that
        # share their parameters (state_dict, checkpoints and EMA see the plain modules).
        self._encode = self._maybe_compile(self.model.encode)
        self.step = 0  # batches consumed (one critic update each under odt_td3)
        self.skipped = 0  # updates skipped for a NaN or inf loss or gradient norm

    def _maybe_compile(self, fn):
        return torch.compile(fn) if self.compiled else fn

    def _reset_targets(self) -> None:
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.model_target = copy.deepcopy(self.model).requires_grad_(False).eval()
        self._encode_target = self._maybe_compile(self.model_target.encode)

    def _policy(self, model: nn.Module, encode, window: dict[str, torch.Tensor]):
        """The action head's output at every position of `window`, in fp32.

        Under bf16 the transformer runs in autocast; its hidden states are cast back to
        fp32 before the head, so log-probabilities, entropies and losses stay fp32.
        """
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
            h = encode(window["observations"], window["actions"], window["returns_to_go"],
                       window["timesteps"], window["mask"])
        return model.action_head(h.float())

    def set_state_normalization(self, mean, std) -> None:
        self.model.set_state_normalization(mean, std)
        if self.critic is not None:
            self.critic.set_state_normalization(mean, std)
            self._reset_targets()

    def broadcast_parameters(self, src: int = 0) -> None:
        """Give every rank rank `src`'s weights: the transformer, the critic, both targets
        (buffers included) and the temperature. No-op in one process.

        Optimizer states are not sent: every rank loads the same checkpoint (or starts
        fresh), so they already agree.
        """
        for module in (self.model, self.critic, self.critic_target, self.model_target):
            if module is not None:
                distributed.broadcast_module(module, src)
        distributed.broadcast_tensors([self.log_temperature], src)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.detach().exp()

    def update(self, batch: dict[str, torch.Tensor], rl: bool = True) -> dict[str, torch.Tensor]:
        """One update on a batch of windows; returns detached 0-d metric tensors.

        `rl=False` trains the supervised part only (used for pretraining ODT+TD3).

        A NaN or inf loss or gradient norm skips the update: no optimizer steps and
        `step` stays; `skipped` counts such updates and the metrics hold just
        `loss/nonfinite` = 1. (Under ODT+TD3 a finite critic loss has already stepped
        the critic when the actor's loss turns out non-finite.) The check reads one
        value back from the device per update.
        """
        self.model.train()
        try:
            if self.objective.kind == "odt":
                metrics = self._odt_update(batch)
            elif rl:
                metrics = self._td3_update(batch)
            else:
                metrics = self._actor_step(batch, rl=False)
        except _NonFinite:
            for optimizer in (self.optimizer, self.temperature_optimizer, self.critic_optimizer):
                if optimizer is not None:
                    optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            return {"loss/nonfinite": torch.ones(())}
        self.step += 1
        return metrics

    def _transformer_step(self, loss: torch.Tensor) -> torch.Tensor:
        _require_finite(loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.model.parameters())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.grad_clip)
        _require_finite(grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return grad_norm.detach()

    def _odt_update(self, batch):
        dist = self._policy(self.model, self._encode, batch)
        out = losses.odt_loss(
            dist,
            batch["actions"],
            batch["mask"],
            self.log_temperature,
            self.target_entropy,
            self.objective.mask_entropy,
        )
        _require_finite(out.temperature_loss)
        grad_norm = self._transformer_step(out.loss)
        self.temperature_optimizer.zero_grad(set_to_none=True)
        out.temperature_loss.backward()
        distributed.average_gradients([self.log_temperature])
        self.temperature_optimizer.step()
        return {
            "loss/total": out.loss.detach(),
            "loss/nll": out.nll,
            "loss/entropy": out.entropy,
            "policy/entropy": out.entropy,
            "policy/temperature": self.temperature,
            "loss/grad_norm": grad_norm,
        }

    def critic_update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One TD3 critic update with the transformer frozen, then the target critic's EMA.

        Critic pretraining on offline windows before fine-tuning: the critic learns the
        value of the pretrained policy (the target transformer picks the next actions),
        so the actor's first RL gradients come from a fitted critic. Not a learner step.
        """
        if self.critic is None:
            raise ValueError(f"critic_update needs objective.kind='odt_td3', not "
                             f"{self.objective.kind!r}")
        try:
            metrics = self._critic_step(batch)
        except _NonFinite:
            self.critic_optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            return {"loss/nonfinite": torch.ones(())}
        ema_update(self.critic_target, self.critic, self.objective.tau)
        return metrics

    def reset_targets(self) -> None:
        """Target transformer and critic := the online ones (after offline pretraining)."""
        self._reset_targets()

    def _critic_step(self, batch):
        obj = self.objective
        with torch.no_grad():
            next_action = self._policy(
                self.model_target, self._encode_target, shifted_window(batch)
            ).mode
            next_action = losses.target_policy_noise(next_action, obj.policy_noise, obj.noise_clip)
            next_q1, next_q2 = self.critic_target(batch["next_observations"], next_action)
            target = losses.td_target(
                next_q1, next_q2, batch["rewards"], batch["terminated"], obj.gamma
            )
        q1, q2 = self.critic(batch["observations"], batch["actions"])
        critic_loss = losses.critic_loss(q1, q2, target, batch["mask"])
        _require_finite(critic_loss)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        distributed.average_gradients(self.critic.parameters())
        self.critic_optimizer.step()
        return {
            "loss/critic": critic_loss.detach(),
            "policy/q": losses.masked_mean(q1.detach(), batch["mask"]),
        }

    def _td3_update(self, batch):
        obj = self.objective
        metrics = self._critic_step(batch)
        if (self.step + 1) % obj.actor_update_interval == 0:
            metrics.update(self._actor_step(batch, rl=True))
            ema_update(self.critic_target, self.critic, obj.tau)
            ema_update(self.model_target, self.model, obj.tau)
        return metrics

    def _actor_step(self, batch, rl: bool):
        action = self._policy(self.model, self._encode, batch)
        supervised = losses.supervised_mse(action, batch["actions"], batch["mask"])
        loss = supervised
        metrics = {"loss/supervised": supervised.detach()}
        if rl:
            # The critic is not updated here; its parameters only pass the gradient through.
            q = self.critic.first(batch["observations"], action.action)
            rl_loss = losses.actor_rl_loss(q, batch["mask"])
            coeff = self.objective.rl_coeff
            if self.objective.normalize_q:
                # TD3+BC's lambda = alpha / mean|Q|: the RL term's weight does not depend
                # on the reward scale or on how far the critic's values have grown.
                coeff = coeff / losses.masked_mean(q.detach().abs(), batch["mask"]).clamp_min(1e-3)
            loss = supervised + coeff * rl_loss
            metrics["loss/actor_rl"] = rl_loss.detach()
        metrics["loss/total"] = loss.detach()
        metrics["loss/grad_norm"] = self._transformer_step(loss)
        return metrics

    # ---- persistence -------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "log_temperature": self.log_temperature.detach().cpu(),
            "temperature_optimizer": self.temperature_optimizer.state_dict(),
            "step": self.step,
            "skipped": self.skipped,
            "rng": {"torch": torch.get_rng_state()},
        }
        if self.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.critic is not None:
            state.update(
                critic=self.critic.state_dict(),
                critic_target=self.critic_target.state_dict(),
                model_target=self.model_target.state_dict(),
                critic_optimizer=self.critic_optimizer.state_dict(),
            )
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        with torch.no_grad():
            self.log_temperature.copy_(state["log_temperature"])
        self.temperature_optimizer.load_state_dict(state["temperature_optimizer"])
        self.step = int(state["step"])
        self.skipped = int(state.get("skipped", 0))
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"].cpu())
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
        if self.critic is not None:
            if "critic" in state:
                self.critic.load_state_dict(state["critic"])
                self.critic_target.load_state_dict(state["critic_target"])
                self.model_target.load_state_dict(state["model_target"])
                self.critic_optimizer.load_state_dict(state["critic_optimizer"])
            else:
                # Starting ODT+TD3 from a checkpoint without a critic (e.g. pretrained).
                self.critic.set_state_normalization(self.model.state_mean, self.model.state_std)
                self._reset_targets()
