"""Networks only: the Decision Transformer, its heads and the TD3 critic, the Algorithm
Distillation transformer and its in-context policy, the Multi-Game Decision Transformer
and its acting policy, and the registry that builds a model from its config's key.
Imports torch alone."""

from models.ad_transformer import ADTransformer, InContextPolicy
from models.critic import CriticConfig, TwinQ
from models.decision_transformer import (
    ACTION_KIND_HEADS,
    ACTION_KINDS,
    HEADS,
    RETIRED_MODEL_FIELDS,
    DecisionTransformer,
    FrameEncoder,
    ModelConfig,
)
from models.heads import Categorical, DeterministicAction, SquashedGaussian
from models.mgdt import MultiGameDecisionTransformer, MultiGamePolicy, ReturnBuckets
from models.registry import MODELS, build_model, register_model

__all__ = [
    "ACTION_KINDS",
    "ACTION_KIND_HEADS",
    "HEADS",
    "MODELS",
    "RETIRED_MODEL_FIELDS",
    "ADTransformer",
    "Categorical",
    "CriticConfig",
    "DecisionTransformer",
    "DeterministicAction",
    "FrameEncoder",
    "InContextPolicy",
    "ModelConfig",
    "MultiGameDecisionTransformer",
    "MultiGamePolicy",
    "ReturnBuckets",
    "SquashedGaussian",
    "TwinQ",
    "build_model",
    "register_model",
]
