"""The interface every objective implements: an update rule on a `Learner`'s networks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

Metrics = dict[str, torch.Tensor]


class Objective:
    """How a learner turns a batch of windows into an update, and what that needs.

    A subclass sets the class attributes and implements `update`; its `__init__` may
    add the parts it trains besides the transformer to the learner (a critic and its
    target copies, say), which then travel with the learner's checkpoints. Its losses
    are pure functions in `learner.losses`.

        class MyObjective(Objective):
            kind = "mine"                 # the registry key, as in objective.kind
            heads = {"continuous": "deterministic"}  # the action head per action kind
            exploration = "noisy"         # how actors act (actors.context.BatchedPolicy)

            def update(self, batch, rl):
                action = self.learner.policy(self.learner.model, self.learner.encode, batch)
                loss = ...
                return {"loss/total": loss.detach(),
                        "loss/grad_norm": self.learner.transformer_step(loss)}
    """

    kind: ClassVar[str]
    """The registry key (`learner.objectives.OBJECTIVES`), stored as objective.kind."""
    heads: ClassVar[Mapping[str, str]]
    """The model's action kind ('continuous', 'discrete') -> the action head it trains
    there ('gaussian', 'deterministic', 'categorical'; models.heads). An action kind
    missing here is one the objective cannot train."""
    exploration: ClassVar[str]
    """Actors' action rule: 'sample' (from the policy) or 'noisy' (mode plus Gaussian
    noise of actor.exploration_noise; on discrete actions, a sample)."""
    model_kinds: ClassVar[tuple[str, ...]] = ("decision_transformer",)
    """The models (`ModelConfig.kind`) whose batches it reads; any other model is a
    config error (`launch.presets.validate`, and the learner refuses it)."""
    online: ClassVar[bool] = True
    """It fine-tunes from the actors' online experience; False: it trains offline only,
    and no fine-tuning run takes it."""
    uses_critic: ClassVar[bool] = False
    """It trains a critic, which pretraining fits offline (`after_pretraining`)."""

    @classmethod
    def head_for(cls, action_kind: str, space: str | None = None) -> str:
        """The head it trains for `action_kind`; ValueError naming the objective and the
        action space (`space`, e.g. 'Discrete(2)') when it cannot train that kind."""
        if action_kind not in cls.heads:
            raise ValueError(
                f"objective.kind={cls.kind!r} trains {' or '.join(cls.heads)} actions; the "
                f"environment's action space is {space or action_kind}")
        return cls.heads[action_kind]

    def __init__(self, learner):
        """`learner` is the `learner.learner.Learner` whose networks this rule updates;
        ValueError when its model is not one of `model_kinds`."""
        if learner.model_cfg.kind not in self.model_kinds:
            raise ValueError(f"objective.kind={self.kind!r} trains model.kind "
                             f"{' or '.join(map(repr, self.model_kinds))}, not "
                             f"model.kind={learner.model_cfg.kind!r}")
        self.learner = learner

    def update(self, batch: dict[str, torch.Tensor], rl: bool) -> Metrics:
        """One update on `batch`; `rl=False` is its supervised part alone (pretraining).

        Raises `learner.learner.NonFiniteUpdate` (through `Learner.require_finite`)
        to have the update skipped."""
        raise NotImplementedError

    def after_pretraining(self, sample, writer, log_every: int) -> None:
        """Called once supervised pretraining is done, with the offline batch source
        (`sample()` gives a batch on the learner's device). Nothing by default."""

    def set_state_normalization(self, mean, std) -> None:
        """The offline state statistics, for the parts of its own. Nothing by default."""
