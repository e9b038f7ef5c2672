"""The Multi-Game Decision Transformer's objective (Lee et al. 2022, "Multi-Game Decision
Transformers"), for `models.mgdt`: the cross-entropies of the action, the return-to-go
bucket and the reward class at every real step of a window, each a masked mean over
steps, summed with equal weights (`LOSS_WEIGHTS`; the paper trains all three).

Online (`rl=True`) the action term becomes ODT's max-entropy one (Zheng et al. 2022,
Eq. 5-7, `learner.losses.odt_loss` with the categorical's exact entropy): the action
NLL minus the learner's temperature lambda times the policy's entropy, lambda stepped
against the learner's target entropy, so fine-tuning keeps exploring by sampling.
Offline (`rl=False`) the loss is the three cross-entropies alone and lambda stays.

Batch keys, all (B, T) but the frames: observations (B, T, C, H, W) uint8, actions
int64, returns_to_go float (the raw integer return-to-go of clipped rewards; bucketed
here with the model's `ReturnBuckets`), rewards float (clipped to [-1, 1]), terminals
float (1 on the last step of a terminated episode; reward class 2 there), mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from learner import distributed, losses
from learner.objectives.base import Metrics, Objective
from models import Categorical
from models.mgdt import MGDTOutput, encode_reward

LOSS_WEIGHTS = {"action": 1.0, "return": 1.0, "reward": 1.0}
"""Weight of each cross-entropy in the loss: equal, as the paper trains the three
predictions together."""


@dataclass
class MGDTLoss:
    loss: torch.Tensor  # what the transformer minimises
    action: torch.Tensor  # masked mean cross-entropy of the action (detached)
    returns: torch.Tensor  # ... of the return bucket (detached)
    reward: torch.Tensor  # ... of the reward class (detached)
    entropy: torch.Tensor | None  # the action distribution's masked mean entropy, online
    temperature_loss: torch.Tensor | None  # what log lambda minimises, online


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position cross-entropy of (..., N) logits against (...) integer targets, fp32."""
    flat = logits.reshape(-1, logits.shape[-1]).float()  # (prod(...), N)
    return F.cross_entropy(flat, targets.reshape(-1).long(),
                           reduction="none").reshape(targets.shape)


def mgdt_loss(
    out: MGDTOutput,
    actions: torch.Tensor,  # (B, T) indices
    return_buckets: torch.Tensor,  # (B, T) indices
    reward_classes: torch.Tensor,  # (B, T) indices
    mask: torch.Tensor,  # (B, T)
    log_temperature: torch.Tensor | None = None,
    target_entropy: float = 0.0,
    mask_entropy: bool = True,
) -> MGDTLoss:
    """The weighted sum of the three masked mean cross-entropies. With `log_temperature`
    (online), the action term is `losses.odt_loss`'s NLL - lambda * entropy instead, and
    the result carries the entropy and the temperature's loss."""
    action = losses.masked_mean(cross_entropy(out.action_logits, actions), mask)
    returns = losses.masked_mean(cross_entropy(out.return_logits, return_buckets), mask)
    reward = losses.masked_mean(cross_entropy(out.reward_logits, reward_classes), mask)
    entropy = temperature_loss = None
    action_term = action
    if log_temperature is not None:
        odt = losses.odt_loss(Categorical(out.action_logits.float()), actions, mask,
                              log_temperature, target_entropy, mask_entropy)
        action_term, entropy, temperature_loss = odt.loss, odt.entropy, odt.temperature_loss
    loss = (LOSS_WEIGHTS["action"] * action_term + LOSS_WEIGHTS["return"] * returns
            + LOSS_WEIGHTS["reward"] * reward)
    return MGDTLoss(loss, action.detach(), returns.detach(), reward.detach(), entropy,
                    temperature_loss)


class MultiGameDT(Objective):
    kind = "mgdt"
    heads = {"discrete": "categorical"}
    exploration = "sample"
    model_kinds = ("multi_game_dt",)
    """It reads frames, return buckets and reward classes, which only the MGDT takes."""
    online = True

    def update(self, batch, rl: bool) -> Metrics:
        """One step on a batch of windows (see the module docstring): the transformer
        under the learner's bf16 autocast, the heads and losses in fp32; online, also a
        step of the temperature."""
        learner = self.learner
        model = learner.model
        mask = batch["mask"]
        return_buckets = model.buckets.encode(batch["returns_to_go"])
        reward_classes = encode_reward(batch["rewards"], batch["terminals"])
        with torch.autocast(learner.device.type, torch.bfloat16, enabled=learner.bf16):
            h = learner.encode(batch["observations"], return_buckets, batch["actions"],
                               reward_classes, mask)
        out = model.predict(h.float())
        result = mgdt_loss(out, batch["actions"], return_buckets, reward_classes, mask,
                           learner.log_temperature if rl else None, learner.target_entropy,
                           learner.objective.mask_entropy)
        # One host read checks the loss, the gradient norm and the temperature loss.
        also = (result.temperature_loss,) if rl else ()
        grad_norm = learner.transformer_step(result.loss, *also)
        accuracy = losses.masked_mean(
            (out.action_logits.argmax(-1) == batch["actions"].long()).float(), mask)
        metrics = {
            "loss/total": result.loss.detach(),
            "loss/action": result.action,
            "loss/return": result.returns,
            "loss/reward": result.reward,
            "loss/grad_norm": grad_norm,
            "accuracy": accuracy.detach(),
        }
        if rl:
            learner.temperature_optimizer.zero_grad(set_to_none=True)
            result.temperature_loss.backward()
            distributed.average_gradients([learner.log_temperature])
            learner.temperature_optimizer.step()
            metrics.update({"loss/entropy": result.entropy, "policy/entropy": result.entropy,
                            "policy/temperature": learner.temperature})
        return metrics
