"""Objectives by registry key.

`objective.kind` in a config names one of `OBJECTIVES`; the learner, the actors (their
exploration rule), checkpoint loading (the head to convert to), pretraining (what
follows the supervised part) and the flags (`--objective`) read it from here.

Adding an objective: a module here with an `Objective` subclass (its update over the
pure losses of `learner.losses`, the head it trains, the actors' exploration), and
one line in `OBJECTIVES` below. Fields it reads from `ObjectiveConfig` are documented
there and validated by `ObjectiveConfig.validate`.

The registry names each class by module path and imports it on first use, so that
reading the keys (the flags do, before an entry point has imported Reverb) does not
import torch.
"""

from __future__ import annotations

import importlib

OBJECTIVES: dict[str, str] = {
    "odt": "learner.objectives.odt:ODT",
    "odt_td3": "learner.objectives.odt_td3:ODTTD3",
    "rcbc": "learner.objectives.rcbc:ReturnConditionedBC",
    "ad": "learner.objectives.ad:AlgorithmDistillation",
    "mgdt": "learner.objectives.mgdt:MultiGameDT",
}
"""Registry key -> "module:class" of its `learner.objectives.base.Objective` subclass."""


def get_objective(kind: str):
    """The `Objective` subclass registered as `kind`; ValueError names an unknown one."""
    if kind not in OBJECTIVES:
        raise ValueError(f"objective.kind={kind!r} is not a registered objective; "
                         f"registered: {', '.join(OBJECTIVES)}")
    module, name = OBJECTIVES[kind].split(":")
    cls = getattr(importlib.import_module(module), name)
    if cls.kind != kind:
        raise ValueError(f"learner.objectives.OBJECTIVES[{kind!r}] is {cls.__name__}, whose "
                         f"kind is {cls.kind!r}")
    return cls


__all__ = ["OBJECTIVES", "get_objective"]
