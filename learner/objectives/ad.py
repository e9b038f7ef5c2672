"""Algorithm Distillation (Laskin et al. 2022, "In-context Reinforcement Learning with
Algorithm Distillation"): the cross-entropy of the source algorithm's action at every
step of a learning-history window (`replay.history_window`), for the AD transformer
(`models.ad_transformer`). Offline only: no entropy term, no critic, the same loss
whatever `rl` says."""

from __future__ import annotations

import torch

from learner import losses
from learner.objectives.base import Metrics, Objective


class AlgorithmDistillation(Objective):
    kind = "ad"
    heads = {"discrete": "categorical"}
    exploration = "sample"
    model_kinds = ("algorithm_distillation",)
    """It reads history windows (previous actions and rewards), which no other model takes."""
    online = False

    def update(self, batch, rl: bool) -> Metrics:
        """One step on a batch of history windows (observations, prev_actions,
        prev_rewards, actions, mask): the masked mean of -log pi(a_t | history up to t),
        the transformer under the learner's bf16 autocast, the head in fp32."""
        del rl  # the same loss whenever it is called
        learner = self.learner
        mask = batch["mask"]
        with torch.autocast(learner.device.type, torch.bfloat16, enabled=learner.bf16):
            h = learner.encode(batch["observations"], batch["prev_actions"],
                               batch["prev_rewards"], mask)
        dist = learner.model.action_head(h.float())
        loss = losses.masked_mean(-dist.log_prob(batch["actions"]), mask)
        accuracy = losses.masked_mean((dist.mode == batch["actions"].long()).float(), mask)
        return {"loss/supervised": loss.detach(), "loss/total": loss.detach(),
                "loss/grad_norm": learner.transformer_step(loss),
                "accuracy": accuracy.detach()}
