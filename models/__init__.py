"""Networks only: the Decision Transformer, its heads and the TD3 critic, and the
registry that builds a model from its config's key. Imports torch alone."""

from models.critic import CriticConfig, TwinQ
from models.decision_transformer import (
    HEADS,
    RETIRED_MODEL_FIELDS,
    DecisionTransformer,
    ModelConfig,
)
from models.heads import DeterministicAction, SquashedGaussian
from models.registry import MODELS, build_model, register_model

__all__ = [
    "HEADS",
    "MODELS",
    "RETIRED_MODEL_FIELDS",
    "CriticConfig",
    "DecisionTransformer",
    "DeterministicAction",
    "ModelConfig",
    "SquashedGaussian",
    "TwinQ",
    "build_model",
    "register_model",
]
