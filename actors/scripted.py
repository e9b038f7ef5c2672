"""Scripted behaviour policies, for recording datasets clearly better than random.

`inverted_pendulum_pd`: a linear state-feedback (PD) controller for
InvertedPendulum-v4 (observation [cart x, pole angle, cart velocity, pole angular
velocity], force in [-3, 3], episode ends when |angle| > 0.2). Noise-free it
balances for the full 1000 steps; Gaussian action noise makes it fail early
sometimes, which gives a dataset of varied returns.
Policies here take raw observations (N, obs) and return actions (N, act) in [-1, 1].
"""

from __future__ import annotations

from typing import Callable

import numpy as np

INVERTED_PENDULUM_GAINS = np.array([1.0, 10.0, 1.0, 1.0], np.float32)
INVERTED_PENDULUM_MAX_FORCE = 3.0


def inverted_pendulum_pd(observations: np.ndarray) -> np.ndarray:
    force = observations @ INVERTED_PENDULUM_GAINS
    return np.clip(force / INVERTED_PENDULUM_MAX_FORCE, -1.0, 1.0)[:, None].astype(np.float32)


SCRIPTED_POLICIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "InvertedPendulum-v4": inverted_pendulum_pd,
}
