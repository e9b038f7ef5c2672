"""The update step: one function of a batch of windows, objective chosen by config.

The `Learner` holds the transformer, its LAMB optimizer and warm-up schedule, the
entropy temperature, the step counters and the NaN/inf guard; the objective named by
`objective.kind` (`learner.objectives`) owns the update rule and whatever else it
trains (ODT+TD3's critic and target copies).

Pretraining and fine-tuning use the same `Learner`; only the source of batches
differs (an in-memory offline sampler, or the Reverb dataset). No threads, queues
or signals here.

Usage:
    learner = Learner(model_cfg, objective_cfg, optim_cfg, device="cuda")
    learner.set_state_normalization(mean, std)
    for batch in batches:                  # dict of (B, K, ...) tensors, see replay/windows.py
        metrics = learner.update(batch)    # dict of 0-d tensors; at most one host read

Data-parallel (several processes, see learner/distributed.py): every rank builds the
same Learner, calls `broadcast_parameters()` once, then updates on its own batches;
gradients are averaged across ranks inside `update`, so the ranks stay identical.
"""

from __future__ import annotations

import math

import torch
from pytorch_optimizer import Lamb
from torch import nn

from learner import distributed, losses
from learner.config import DEFAULT_COMPUTE, ComputeConfig, ObjectiveConfig, OptimConfig
from learner.objectives import get_objective
from models import ModelConfig, build_model


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


class NonFiniteUpdate(Exception):
    """A loss or gradient norm is NaN or inf: the update is skipped."""


class Learner:
    """The transformer (LAMB), the temperature (Adam), the step counters and the NaN/inf
    skip; `rule`, the objective's update rule, adds what else it trains (under odt_td3
    the twin critic, AdamW, and target copies of both networks).

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
        self.bf16, self.compiled, self.fused = compute.resolve(self.device, model_cfg.embed_dim)
        fused = self.fused
        rule = get_objective(objective.kind)
        self.model_cfg = model_cfg
        torch.manual_seed(optim.seed)
        self.model = build_model(model_cfg, head=rule.head_for(model_cfg.action_kind)).to(
            self.device)
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
        if objective.target_entropy is not None:
            self.target_entropy = objective.target_entropy
        elif model_cfg.action_kind == "discrete":
            self.target_entropy = losses.discrete_target_entropy(
                model_cfg.act_dim, objective.discrete_entropy_fraction)
        else:
            self.target_entropy = -float(model_cfg.act_dim)
        # The encoder the update calls: the module's own, or a compiled view of it that
        # shares its parameters (state_dict, checkpoints and EMA see the plain module).
        self.encode = self.maybe_compile(self.model.encode)
        self.critic = self.critic_target = self.model_target = self.critic_optimizer = None
        self.rule = rule(self)
        """The objective's update rule (`learner.objectives`); it may add a critic and
        target copies to this learner."""
        self.step = 0  # batches consumed (one critic update each under odt_td3)
        self.skipped = 0  # updates skipped for a NaN or inf loss or gradient norm
        self.host_reads = 0  # device-to-host reads of the NaN/inf guard

    @property
    def compute_path(self) -> str:
        """The compute path in effect, e.g. 'bf16 autocast, eager, per-tensor optimizers'
        (what `compute` resolved to on this device; logged with the config)."""
        return ", ".join((
            "bf16 autocast" if self.bf16 else "fp32",
            "compiled" if self.compiled else "eager",
            "fused optimizers" if self.fused else "per-tensor optimizers",
        ))

    def maybe_compile(self, fn):
        """`fn` through torch.compile when the compute path compiles, else `fn`."""
        return torch.compile(fn) if self.compiled else fn

    def policy(self, model: nn.Module, encode, window: dict[str, torch.Tensor]):
        """The action head's output at every position of `window`, in fp32.

        Under bf16 the transformer runs in autocast; its hidden states are cast back to
        fp32 before the head, so log-probabilities, entropies and losses stay fp32.
        """
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
            h = encode(window["observations"], window["actions"], window["returns_to_go"],
                       window["timesteps"], window["mask"])
        return model.action_head(h.float())

    def require_finite(self, *values: torch.Tensor) -> None:
        """Raise NonFiniteUpdate unless every one of the 0-d `values` is finite on every
        rank (ranks skip together). One device-to-host read for all of them, counted
        in `host_reads`."""
        finite = torch.isfinite(torch.stack([v.detach().reshape(()).float() for v in values]))
        self.host_reads += 1
        if not distributed.all_agree(bool(finite.all())):
            raise NonFiniteUpdate

    def set_state_normalization(self, mean, std) -> None:
        self.model.set_state_normalization(mean, std)
        self.rule.set_state_normalization(mean, std)

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
        `loss/nonfinite` = 1. The check reads one value back from the device per update
        that steps the transformer (`host_reads` counts them). Under ODT+TD3 the critic
        step is checked on the device, with no read: a non-finite critic gradient
        leaves the critic as it was (`loss/critic_nonfinite` = 1); on a batch that also
        steps the actor the whole update is then skipped as above, and a finite critic
        step stays when the actor's loss turns out non-finite.
        """
        self.model.train()
        try:
            metrics = self.rule.update(batch, rl)
        except NonFiniteUpdate:
            for optimizer in (self.optimizer, self.temperature_optimizer, self.critic_optimizer):
                if optimizer is not None:
                    optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            return {"loss/nonfinite": torch.ones(())}
        self.step += 1
        return metrics

    def transformer_step(self, loss: torch.Tensor, *also_finite: torch.Tensor) -> torch.Tensor:
        """Backward `loss`, average the gradients over ranks, clip them, step LAMB and the
        warm-up schedule; returns the gradient norm before clipping.

        Before stepping, one host read checks `loss`, the gradient norm and the 0-d
        tensors `also_finite` (what else the update will step on: a temperature loss,
        say) together, raising NonFiniteUpdate if any is NaN or inf."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.model.parameters())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.grad_clip)
        self.require_finite(loss, grad_norm, *also_finite)
        self.optimizer.step()
        self.scheduler.step()
        return grad_norm.detach()

    def critic_update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One critic-only update of an objective with a critic (`ODTTD3.critic_update`):
        critic pretraining on offline windows, the transformer frozen. Not a learner step.
        """
        if not self.rule.uses_critic:
            raise ValueError(f"critic_update needs an objective with a critic (odt_td3), not "
                             f"{self.objective.kind!r}")
        try:
            return self.rule.critic_update(batch)
        except NonFiniteUpdate:
            self.critic_optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            return {"loss/nonfinite": torch.ones(())}

    def reset_targets(self) -> None:
        """Target transformer and critic := the online ones (after offline pretraining)."""
        self.rule.reset_targets()

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
                self.rule.set_state_normalization(self.model.state_mean, self.model.state_std)
