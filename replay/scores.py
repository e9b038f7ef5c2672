"""D4RL reference scores and normalized scores.

The constants are D4RL's (`d4rl/infos.py` REF_MIN_SCORE / REF_MAX_SCORE, named
`*_RANDOM_SCORE` / `*_EXPERT_SCORE` in `d4rl/gym_mujoco/__init__.py`): for the
locomotion robots every split and version shares its robot's `-random-v0`
constants, and AntMaze returns are success indicators, so its range is [0, 1].
The formula is `d4rl.get_normalized_score`, scaled by 100 as in published tables.
They live in code, keyed by task id, and are never derived from data; a score is
normalized only when its task has a reference.
"""

from __future__ import annotations

_LOCOMOTION_RANGES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}
_LOCOMOTION_SPLITS = ("random", "medium", "medium-replay", "medium-expert", "expert", "full-replay")
_LOCOMOTION_VERSIONS = ("v0", "v1", "v2")

_ANTMAZE_MAZES = (
    "umaze",
    "umaze-diverse",
    "medium-play",
    "medium-diverse",
    "large-play",
    "large-diverse",
)
_ANTMAZE_VERSIONS = ("v0", "v2")
_ANTMAZE_RANGE = (0.0, 1.0)


def _reference_table() -> dict[str, tuple[float, float]]:
    """Expand the per-robot constants to every D4RL task id they apply to."""
    table: dict[str, tuple[float, float]] = {}
    for robot, score_range in _LOCOMOTION_RANGES.items():
        for split in _LOCOMOTION_SPLITS:
            for version in _LOCOMOTION_VERSIONS:
                table[f"{robot}-{split}-{version}"] = score_range
    for maze in _ANTMAZE_MAZES:
        for version in _ANTMAZE_VERSIONS:
            table[f"antmaze-{maze}-{version}"] = _ANTMAZE_RANGE
    return table


D4RL_REFERENCE_SCORES: dict[str, tuple[float, float]] = _reference_table()
"""D4RL task id (e.g. "hopper-medium-v2") -> (ref_min_score, ref_max_score)."""


def reference_scores(task_id: str) -> tuple[float, float] | None:
    """(ref_min_score, ref_max_score) of a D4RL task id, or None when it has none."""
    return D4RL_REFERENCE_SCORES.get(task_id)


def normalized_score(task_id: str, ret: float) -> float | None:
    """D4RL normalized score 100 * (ret - min) / (max - min), or None for an unknown task."""
    scores = reference_scores(task_id)
    if scores is None:
        return None
    low, high = scores
    return 100.0 * (float(ret) - low) / (high - low)
