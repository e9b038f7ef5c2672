"""Models by registry key.

Configs and checkpoints name a model by its key (`ModelConfig.kind`), and the learner,
actors and checkpoint readers build it with `build_model`; nothing outside models/
names a model class. A new model is a module that registers its class:

    @register_model("multi_game_transformer")
    class MultiGameTransformer(nn.Module):
        def __init__(self, cfg, head): ...
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

MODELS: dict[str, type[nn.Module]] = {}
"""Registry key -> model class; each class takes its config and the action head its
objective trains (`head=`, e.g. 'gaussian' or 'deterministic')."""


def register_model(key: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make the class buildable as `key`."""

    def register(cls: type[nn.Module]) -> type[nn.Module]:
        if key in MODELS and MODELS[key] is not cls:
            raise ValueError(f"model key {key!r} is already registered to {MODELS[key].__name__}")
        MODELS[key] = cls
        return cls

    return register


def build_model(cfg, head: str) -> nn.Module:
    """The model `cfg.kind` names, built from `cfg` with the action head `head`;
    ValueError names an unknown key."""
    if cfg.kind not in MODELS:
        raise ValueError(f"model.kind={cfg.kind!r} is not a registered model; "
                         f"registered: {', '.join(sorted(MODELS))}")
    return MODELS[cfg.kind](cfg, head=head)
