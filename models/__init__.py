"""Networks only: the Decision Transformer, its heads and the TD3 critic. Imports torch alone."""

from models.critic import CriticConfig, TwinQ
from models.decision_transformer import DecisionTransformer, ModelConfig
from models.heads import DeterministicAction, SquashedGaussian

__all__ = [
    "CriticConfig",
    "DecisionTransformer",
    "DeterministicAction",
    "ModelConfig",
    "SquashedGaussian",
    "TwinQ",
]
