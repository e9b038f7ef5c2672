"""Return-conditioned behaviour cloning: the Decision Transformer's own objective
(Chen et al. 2021), the mean squared error of a deterministic action head (the
cross-entropy of a categorical one on discrete actions), with no entropy term and no
critic. The baseline that shows what ODT's entropy and TD3's
critic gradient add when fine-tuning online."""

from __future__ import annotations

from learner import losses
from learner.objectives.base import Metrics, Objective


class ReturnConditionedBC(Objective):
    kind = "rcbc"
    heads = {"continuous": "deterministic", "discrete": "categorical"}
    exploration = "noisy"

    def update(self, batch, rl: bool) -> Metrics:
        del rl  # the same loss offline and online
        learner = self.learner
        action = learner.policy(learner.model, learner.encode, batch)
        if learner.model_cfg.action_kind == "discrete":  # cross-entropy of the action index
            loss = losses.masked_mean(-action.log_prob(batch["actions"]), batch["mask"])
        else:
            loss = losses.supervised_mse(action, batch["actions"], batch["mask"])
        return {"loss/supervised": loss.detach(), "loss/total": loss.detach(),
                "loss/grad_norm": learner.transformer_step(loss)}
