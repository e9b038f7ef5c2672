"""Learner configuration: objective and optimisation. Plain frozen dataclasses."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import torch

from learner.device import cpu_has_native_bf16
from models import CriticConfig

PRECISIONS = ("auto", "fp32", "bf16")
SWITCHES = ("auto", "on", "off")


@dataclass(frozen=True)
class ObjectiveConfig:
    kind: str = "odt"
    """The objective's registry key (`learner.objectives`): 'odt' (max-entropy sequence
    NLL), 'odt_td3' (supervised + TD3 critic gradient), 'rcbc' (return-conditioned
    behaviour cloning, MSE), 'ad' (Algorithm Distillation's action cross-entropy on
    learning histories, offline only) or 'mgdt' (the Multi-Game Decision Transformer's
    action, return and reward cross-entropies)."""

    # ODT (Zheng et al. 2022, Sec. 4).
    init_temperature: float = 0.1
    """Initial entropy temperature lambda (ODT: 0.1)."""
    temperature_lr: float = 1e-4
    """Adam learning rate of log lambda (ODT: 1e-4)."""
    target_entropy: float | None = None
    """Entropy floor beta; None means -|A| (ODT) on continuous actions, and
    `discrete_entropy_fraction * log(number of actions)` on discrete ones."""
    discrete_entropy_fraction: float = 0.5
    """The default entropy floor on discrete actions, as a fraction of the uniform
    policy's entropy log(n)."""
    mask_entropy: bool = True
    """Average the entropy over real steps only. False reproduces ODT's reference code,
    which also averages over left padding."""

    # ODT+TD3 (Yan et al., NeurIPS 2024, "RL gradients as vitamin").
    rl_coeff: float = 0.1
    """alpha in actor loss = supervised_coeff * supervised + alpha * (-Q) (vitamin
    paper: 0.1)."""
    supervised_coeff: float = 1.0
    """Weight of the supervised MSE in ODT+TD3's actor loss (the vitamin code's
    `actor_sup_coeff`: 1; 0 is its "pure TD3" baseline with the transformer actor)."""
    critic_lr: float = 1e-3
    """AdamW learning rate of the critic (vitamin paper, MuJoCo: 1e-3)."""
    gamma: float = 0.99
    tau: float = 0.005
    """EMA rate of the target transformer and target critic."""
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    actor_update_interval: int = 2
    """The actor (transformer) is updated every this many critic updates."""
    normalize_q: bool = False
    """Divide rl_coeff by the batch's mean |Q| (TD3+BC, Fujimoto & Gu 2021; the vitamin
    code's `normalized_rl_coeff`), so the RL term's weight is free of the reward scale."""
    critic_pretrain_updates: int = 0
    """Critic-only TD3 updates on the offline dataset at the end of pretraining, the
    transformer frozen (the vitamin code trains its critic during pretraining too)."""
    critic: CriticConfig = field(default_factory=CriticConfig)

    def policy(self, action_kind: str) -> str:
        """The action head this objective trains on `action_kind` actions (its registry
        entry's `heads`); ValueError when it cannot train them."""
        from learner.objectives import get_objective

        return get_objective(self.kind).head_for(action_kind)

    def validate(self) -> list[str]:
        from learner.objectives import OBJECTIVES

        problems = []
        if self.kind not in OBJECTIVES:
            problems.append(f"objective.kind={self.kind!r} must be one of {tuple(OBJECTIVES)}")
        if self.init_temperature <= 0:
            problems.append(f"objective.init_temperature={self.init_temperature} must be > 0")
        if not 0.0 <= self.gamma <= 1.0:
            problems.append(f"objective.gamma={self.gamma} must lie in [0, 1]")
        if not 0.0 < self.tau <= 1.0:
            problems.append(f"objective.tau={self.tau} must lie in (0, 1]")
        if self.critic_pretrain_updates < 0:
            problems.append(
                f"objective.critic_pretrain_updates={self.critic_pretrain_updates} must be >= 0"
            )
        if not self.supervised_coeff >= 0:
            problems.append(f"objective.supervised_coeff={self.supervised_coeff} must be >= 0")
        if self.actor_update_interval < 1:
            problems.append(
                f"objective.actor_update_interval={self.actor_update_interval} must be >= 1"
            )
        return problems


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    """LAMB learning rate of the transformer (ODT hopper: 1e-4)."""
    weight_decay: float = 5e-4
    warmup_steps: int = 10_000
    """Linear warm-up, carried from pretraining into fine-tuning (ODT: 10k)."""
    grad_clip: float = 0.25
    """Global gradient-norm clip (ODT: 0.25)."""
    batch_size: int = 256
    seed: int = 0

    def validate(self) -> list[str]:
        problems = []
        if self.lr <= 0:
            problems.append(f"optim.lr={self.lr} must be > 0")
        if self.weight_decay < 0:
            problems.append(f"optim.weight_decay={self.weight_decay} must be >= 0")
        if self.warmup_steps < 0:
            problems.append(f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        if self.grad_clip <= 0:
            problems.append(f"optim.grad_clip={self.grad_clip} must be > 0")
        if self.batch_size < 1:
            problems.append(f"optim.batch_size={self.batch_size} must be >= 1")
        return problems


@dataclass(frozen=True)
class ComputeConfig:
    """How the learner computes an update; none of it changes what an update means.

    'auto' picks per device, from bench/learner.py measurements (DESIGN.md,
    "Performance"): on CUDA bf16 autocast, torch.compile and fused optimizers. On CPU,
    eager and per-tensor optimizer steps, with bf16 autocast only where the CPU has
    native bf16 instructions (`learner.device.cpu_has_native_bf16`) and the model is
    at least `CPU_BF16_MIN_WIDTH` wide; fp32 otherwise.
    """

    precision: str = "auto"
    """'fp32', or 'bf16': the transformer and critic forward passes under bf16 autocast
    (weights, optimizer states and losses stay fp32)."""
    compile: str = "auto"
    """'on': the transformer's encoder (and the critic) through torch.compile."""
    fused_optimizers: str = "auto"
    """'on': single-kernel (fused) Adam/AdamW for the critic and temperature, and LAMB's
    multi-tensor (foreach) step; 'off': per-tensor steps."""
    cpu_threads: int = 0
    """Intra-op threads of a learner on a CPU device: pretraining, critic pretraining
    and fine-tuning. 0: the fine-tuning learner, whose process is its own, takes every
    core of the host (`learner_cpu_threads`); pretraining, which runs in its caller's
    process, keeps that process's count."""

    def learner_cpu_threads(self, cores: int | None = None, learners: int = 1) -> int:
        """Threads each of `learners` CPU learner processes (data-parallel ranks on one
        host) runs with on a host of `cores` cores (default: this one's): the cores
        shared evenly. Actors held by the replay rate limiter, as in every preset, use a
        few percent of a core, so the learners take them all: on 2 cores with two
        quickstart actors the loop ran 1.3x faster on 2 threads than on 1 (DESIGN.md,
        "Performance"). Actors that run free (a rate limiter that seldom holds them,
        costly envs) are better left a core each with `cpu_threads`."""
        if self.cpu_threads > 0:
            return self.cpu_threads
        return max(1, (cores or os.cpu_count() or 1) // max(learners, 1))

    def validate(self) -> list[str]:
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"compute.precision={self.precision!r} must be one of {PRECISIONS}")
        for name in ("compile", "fused_optimizers"):
            value = getattr(self, name)
            if value not in SWITCHES:
                problems.append(f"compute.{name}={value!r} must be one of {SWITCHES}")
        if self.cpu_threads < 0:
            problems.append(f"compute.cpu_threads={self.cpu_threads} must be >= 0 (0: auto)")
        return problems

    def resolve(self, device: torch.device, width: int | None = None,
                native_bf16: bool | None = None) -> tuple[bool, bool, bool]:
        """(bf16 autocast, compile, fused optimizers) in effect on `device` for a model
        `width` wide (None: unknown, which keeps a CPU on fp32). `native_bf16` says
        whether the CPU has bf16 instructions; None reads it from the machine."""
        cuda = device.type == "cuda"
        if self.precision == "auto" and cuda:
            bf16 = torch.cuda.is_bf16_supported()
        elif self.precision == "auto":
            if native_bf16 is None:
                native_bf16 = cpu_has_native_bf16()
            bf16 = native_bf16 and width is not None and width >= CPU_BF16_MIN_WIDTH
        else:
            bf16 = self.precision == "bf16"
        compiled = self.compile == "on" or (self.compile == "auto" and cuda)
        fused = self.fused_optimizers == "on" or (self.fused_optimizers == "auto" and cuda)
        return bf16, compiled, fused


CPU_BF16_MIN_WIDTH = 128
"""Narrowest model that 'auto' runs under bf16 autocast on a CPU with native bf16:
on a 2-core AMD EPYC with AVX512_BF16, bf16 was 0.88x of fp32 at width 64 (quickstart),
1.8x at width 128 (the locomotion CPU presets) and 2.2x at width 512 (bench/learner.py)."""

DEFAULT_COMPUTE = ComputeConfig()

EAGER_FP32 = ComputeConfig(precision="fp32", compile="off", fused_optimizers="off")
"""The reference path: what the learner computed before any of ComputeConfig existed."""


def config_dict(obj) -> dict:
    return asdict(obj)
