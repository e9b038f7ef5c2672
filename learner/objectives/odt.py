"""ODT's max-entropy sequence objective (Zheng et al. 2022, "Online Decision
Transformer", Eq. 5-7): the masked NLL of a tanh-squashed Gaussian policy minus
lambda times its entropy, with lambda learned against a target entropy."""

from __future__ import annotations

from learner import distributed, losses
from learner.objectives.base import Metrics, Objective


class ODT(Objective):
    kind = "odt"
    heads = {"continuous": "gaussian", "discrete": "categorical"}
    exploration = "sample"

    def update(self, batch, rl: bool) -> Metrics:
        del rl  # the same loss offline and online
        learner = self.learner
        dist = learner.policy(learner.model, learner.encode, batch)
        out = losses.odt_loss(dist, batch["actions"], batch["mask"], learner.log_temperature,
                              learner.target_entropy, learner.objective.mask_entropy)
        # One host read checks the loss, the gradient norm and the temperature loss.
        grad_norm = learner.transformer_step(out.loss, out.temperature_loss)
        learner.temperature_optimizer.zero_grad(set_to_none=True)
        out.temperature_loss.backward()
        distributed.average_gradients([learner.log_temperature])
        learner.temperature_optimizer.step()
        return {
            "loss/total": out.loss.detach(),
            "loss/nll": out.nll,
            "loss/entropy": out.entropy,
            "policy/entropy": out.entropy,
            "policy/temperature": learner.temperature,
            "loss/grad_norm": grad_norm,
        }
