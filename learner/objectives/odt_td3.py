"""ODT+TD3 ("RL gradients as vitamin", Yan et al., NeurIPS 2024): a deterministic
action head trained on the supervised MSE (weight `supervised_coeff` once the RL term is
on; offline, the MSE alone) plus alpha times the TD3 actor loss (-Q),
over every unpadded position of the window, with a twin-Q MLP critic on (s, a), EMA
target copies of the whole transformer and of the critic, target policy noise and
delayed actor updates.

One update is one batch: one critic update, with the transformer updated on every
`actor_update_interval`-th batch, so update counts and sample-to-insert ratios mean
the same as under the other objectives.
"""

from __future__ import annotations

import copy

import torch

from learner import distributed, losses
from learner.objectives.base import Metrics, Objective
from models import TwinQ


@torch.no_grad()
def ema_update(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


@torch.no_grad()
def guarded_step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
                 ok: torch.Tensor) -> None:
    """`optimizer.step()`, kept only where the 0-d bool tensor `ok` is True: otherwise
    the parameters and the optimizer's state tensors on `ok`'s device are put back as
    they were, on the device, without reading `ok` on the host. (A state tensor kept
    on another device, such as a non-fused optimizer's step count on CUDA, advances
    either way.)"""
    before = [p.detach().clone() for p in params]
    states = [{k: v.clone() for k, v in optimizer.state[p].items() if torch.is_tensor(v)}
              if p in optimizer.state else {} for p in params]
    optimizer.step()
    for p, old, state in zip(params, before, states):
        p.copy_(torch.where(ok, p, old))
        for key, value in optimizer.state[p].items():
            if torch.is_tensor(value) and value.device == ok.device:
                previous = state.get(key)
                value.copy_(torch.where(ok, value, torch.zeros_like(value)
                                        if previous is None else previous))


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


class ODTTD3(Objective):
    """Adds to the learner: `critic` (TwinQ, AdamW `critic_optimizer`) and the target
    copies `critic_target` and `model_target`."""

    kind = "odt_td3"
    heads = {"continuous": "deterministic"}  # TD3's actor gradient needs continuous actions
    exploration = "noisy"
    uses_critic = True

    def __init__(self, learner):
        super().__init__(learner)
        cfg, obj = learner.model_cfg, learner.objective
        learner.critic = TwinQ(cfg.state_dim, cfg.act_dim, obj.critic).to(learner.device)
        learner.critic_optimizer = torch.optim.AdamW(
            learner.critic.parameters(), lr=obj.critic_lr, fused=learner.fused or None
        )
        self.reset_targets()

    def reset_targets(self) -> None:
        """Target transformer and critic := the online ones."""
        learner = self.learner
        learner.critic_target = copy.deepcopy(learner.critic).requires_grad_(False)
        learner.model_target = copy.deepcopy(learner.model).requires_grad_(False).eval()
        self.encode_target = learner.maybe_compile(learner.model_target.encode)

    def set_state_normalization(self, mean, std) -> None:
        self.learner.critic.set_state_normalization(mean, std)
        self.reset_targets()

    def update(self, batch, rl: bool) -> Metrics:
        if not rl:
            return self.actor_step(batch, rl=False)
        learner, obj = self.learner, self.learner.objective
        metrics = self.critic_step(batch)
        if (learner.step + 1) % obj.actor_update_interval == 0:
            metrics.update(self.actor_step(batch, rl=True))
            ema_update(learner.critic_target, learner.critic, obj.tau)
            ema_update(learner.model_target, learner.model, obj.tau)
        return metrics

    def critic_step(self, batch) -> Metrics:
        learner, obj = self.learner, self.learner.objective
        with torch.no_grad():
            next_action = learner.policy(learner.model_target, self.encode_target,
                                         shifted_window(batch)).mode
            next_action = losses.target_policy_noise(next_action, obj.policy_noise, obj.noise_clip)
            next_q1, next_q2 = learner.critic_target(batch["next_observations"], next_action)
            target = losses.td_target(
                next_q1, next_q2, batch["rewards"], batch["terminated"], obj.gamma
            )
        q1, q2 = learner.critic(batch["observations"], batch["actions"])
        critic_loss = losses.critic_loss(q1, q2, target, batch["mask"])
        learner.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        params = list(learner.critic.parameters())
        distributed.average_gradients(params)
        # Skipped on the device when the (rank-averaged, so on every rank alike) gradient
        # is not finite: no host read here. An actor step on the same batch reads the flag
        # together with its own checks and then skips the whole update.
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        self.critic_ok = torch.isfinite(norm)
        guarded_step(learner.critic_optimizer, params, self.critic_ok)
        return {
            "loss/critic": critic_loss.detach(),
            "loss/critic_nonfinite": (~self.critic_ok).float(),
            "policy/q": losses.masked_mean(q1.detach(), batch["mask"]),
        }

    def actor_step(self, batch, rl: bool) -> Metrics:
        learner, obj = self.learner, self.learner.objective
        action = learner.policy(learner.model, learner.encode, batch)
        supervised = losses.supervised_mse(action, batch["actions"], batch["mask"])
        loss = supervised
        metrics = {"loss/supervised": supervised.detach()}
        if rl:
            # The critic is not updated here; its parameters only pass the gradient through.
            q = learner.critic.first(batch["observations"], action.action)
            rl_loss = losses.actor_rl_loss(q, batch["mask"])
            coeff = obj.rl_coeff
            if obj.normalize_q:
                # TD3+BC's lambda = alpha / mean|Q|: the RL term's weight does not depend
                # on the reward scale or on how far the critic's values have grown.
                coeff = coeff / losses.masked_mean(q.detach().abs(), batch["mask"]).clamp_min(1e-3)
            loss = obj.supervised_coeff * supervised + coeff * rl_loss
            metrics["loss/actor_rl"] = rl_loss.detach()
        metrics["loss/total"] = loss.detach()
        # This batch's critic step, when there was one, is checked in the same host read.
        also = (torch.where(self.critic_ok, 0.0, float("nan")),) if rl else ()
        metrics["loss/grad_norm"] = learner.transformer_step(loss, *also)
        return metrics

    def critic_update(self, batch) -> Metrics:
        """One critic update with the transformer frozen, then the target critic's EMA.
        Not a learner step."""
        metrics = self.critic_step(batch)
        ema_update(self.learner.critic_target, self.learner.critic, self.learner.objective.tau)
        return metrics

    def pretrain_critic(self, sample, updates: int, writer, log_every: int) -> dict[str, float]:
        """`updates` critic-only updates on offline batches (`sample()`), logged as
        critic_pretrain/{loss,q} against the critic update count."""
        metrics: dict[str, float] = {}
        for update in range(1, updates + 1):
            out = self.learner.critic_update(sample())
            if update % log_every == 0 or update == updates:
                metrics = {"critic_pretrain/loss": float(out["loss/critic"]),
                           "critic_pretrain/q": float(out["policy/q"])}
                writer.scalars(metrics, update)
        return metrics

    def after_pretraining(self, sample, writer, log_every: int) -> None:
        # The targets were copied from the untrained networks; TD targets must use the
        # pretrained transformer. Then the critic learns the pretrained policy's value.
        self.reset_targets()
        self.pretrain_critic(sample, self.learner.objective.critic_pretrain_updates, writer,
                             log_every)
