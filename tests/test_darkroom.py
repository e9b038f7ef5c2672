"""Dark Room and Dark Key-to-Door through `VectorEnv`, and the tabular Q-learning source
that records their learning histories (actors.darkroom, actors.qlearning)."""

from __future__ import annotations

import numpy as np
import pytest

from actors.darkroom import (
    DarkKeyToDoor,
    DarkRoom,
    key_door_cells,
    key_door_task,
    optimal_returns,
    split_tasks,
)
from actors.envs import LOCAL_ENV_VERSION, VectorEnv, env_spec
from actors.qlearning import record_histories
from replay.histories import history_returns

STAY, UP, RIGHT, DOWN, LEFT = range(5)


def path_to(start: tuple[int, int], cell: int) -> list[int]:
    """Actions walking from `start` to `cell` along x, then along y."""
    (x, y), (gx, gy) = start, (cell % 9, cell // 9)
    return ([RIGHT if gx > x else LEFT] * abs(gx - x)) + ([DOWN if gy > y else UP] * abs(gy - y))


def play(env: VectorEnv, plans: list[list[int]], steps: int):
    """Step every env `steps` times, env i following plans[i] and then staying; the
    StepResults in order."""
    results = []
    for t in range(steps):
        actions = np.array([plan[t] if t < len(plan) else STAY for plan in plans], np.int32)
        results.append(env.step(actions))
    return results


def test_env_specs_of_the_grid_tasks():
    room, keydoor = env_spec("DarkRoom-v0"), env_spec("DarkKeyToDoor-v0")
    for spec in (room, keydoor):
        assert spec.observation_shape == (2,) and spec.num_actions == 5
        assert spec.action_space == "Discrete(5)" and spec.envpool_version == LOCAL_ENV_VERSION
    assert room.max_episode_steps == 20 and keydoor.max_episode_steps == 50


def test_walking_to_the_goal_earns_exactly_the_optimal_return():
    """For the centre, its neighbour, the four corners and two other cells: 20 steps of
    walking there and staying pay 20 - d + 1 (20 at distance 0 or 1), then truncate."""
    goals = np.array([40, 41, 0, 8, 72, 80, 22, 66])
    env = VectorEnv("DarkRoom-v0", len(goals), seed=0, tasks=goals)
    first = env.reset()
    np.testing.assert_array_equal(first, np.full((len(goals), 2), 4.0, np.float32))
    results = play(env, [path_to((4, 4), g) for g in goals], 20)
    returns = np.sum([r.rewards for r in results], axis=0)
    np.testing.assert_array_equal(returns, optimal_returns("DarkRoom-v0", goals))
    np.testing.assert_array_equal(returns, [20, 20, 13, 13, 13, 13, 19, 17])
    np.testing.assert_array_equal(results[-1].observations, np.stack([goals % 9, goals // 9], 1))
    assert all(r.truncated.all() == (t == 19) for t, r in enumerate(results))
    assert not any(r.terminated.any() for r in results)
    # The reward comes on the step that arrives, and on every step spent there.
    far = [float(r.rewards[2]) for r in results]
    assert far == [0.0] * 7 + [1.0] * 13


def test_moves_are_clipped_at_the_walls():
    env = VectorEnv("DarkRoom-v0", 4, seed=0, tasks=np.zeros(4, np.int64))
    env.reset()
    results = play(env, [[UP] * 10, [RIGHT] * 10, [DOWN] * 10, [LEFT] * 10], 10)
    np.testing.assert_array_equal(results[-1].observations, [[4, 0], [8, 4], [4, 8], [0, 4]])
    np.testing.assert_array_equal(results[3].observations, results[-1].observations)


def test_the_step_after_an_episode_is_a_flagged_reset_at_the_centre():
    env = VectorEnv("DarkRoom-v0", 2, seed=0, tasks=np.array([40, 44]))
    env.reset()
    results = play(env, [[], [RIGHT] * 20], 20)
    assert results[-1].truncated.all() and not results[-1].is_reset.any()
    reset = env.step(np.array([RIGHT, RIGHT], np.int32))  # the actions are ignored
    assert reset.is_reset.all() and not reset.is_transition.any()
    np.testing.assert_array_equal(reset.rewards, [0.0, 0.0])
    assert not reset.terminated.any() and not reset.truncated.any()
    np.testing.assert_array_equal(reset.observations, [[4, 4], [4, 4]])
    after = env.step(np.array([STAY, RIGHT], np.int32))
    assert after.is_transition.all()
    np.testing.assert_array_equal(after.observations, [[4, 4], [5, 4]])
    np.testing.assert_array_equal(after.rewards, [1.0, 0.0])


def test_send_recv_returns_the_envs_in_batches_as_envpool_does():
    env = VectorEnv("DarkRoom-v0", 4, seed=0, tasks=np.arange(4), batch_size=2)
    env.start()
    seen = []
    for _ in range(2):
        ids, result = env.recv()
        assert result.is_reset.all()
        np.testing.assert_array_equal(result.observations, np.full((2, 2), 4.0))
        seen.extend(ids.tolist())
        env.send(np.full(2, LEFT, np.int32), ids)
    assert seen == [0, 1, 2, 3]
    ids, result = env.recv()
    np.testing.assert_array_equal(ids, [0, 1])
    assert result.is_transition.all()
    np.testing.assert_array_equal(result.observations, [[3, 4], [3, 4]])
    with pytest.raises(RuntimeError, match="start/send/recv"):
        env.step(np.zeros(4, np.int32))


def test_key_to_door_pays_the_key_once_then_the_door_and_terminates():
    key, door = 42, 24  # (6, 4) and (6, 2)
    task = key_door_task(np.array([key]), np.array([door]))
    np.testing.assert_array_equal(key_door_cells(task), ([key], [door]))
    env = VectorEnv("DarkKeyToDoor-v0", 2, seed=0, tasks=np.repeat(task, 2))
    env.reset()
    # env 0: the door first (nothing), then the key, away and back to the key (paid
    # once), then the door. env 1: stays in the centre until truncated.
    plan = [UP, UP, RIGHT, RIGHT, DOWN, DOWN, LEFT, RIGHT, UP, UP]
    rewards, terminated = [], []
    for action in plan:
        result = env.step(np.array([action, STAY], np.int32))
        rewards.append(float(result.rewards[0]))
        terminated.append(bool(result.terminated[0]))
    assert rewards == [0, 0, 0, 0, 0, 1, 0, 0, 0, 1]
    assert terminated == [False] * 9 + [True] and not result.truncated[0]
    assert sum(rewards) == optimal_returns("DarkKeyToDoor-v0", task)[0] == 2.0
    rest = play(env, [[STAY] * 50, [STAY] * 50], 50 - len(plan))
    assert rest[0].is_reset[0] and rest[-1].truncated[1] and not rest[-1].terminated[1]
    assert sum(float(r.rewards[1]) for r in rest) == 0.0


def test_a_key_in_the_centre_is_taken_by_staying_and_every_task_can_earn_two():
    task = key_door_task(np.array([40]), np.array([41]))
    env = VectorEnv("DarkKeyToDoor-v0", 1, seed=0, tasks=task)
    env.reset()
    results = play(env, [[STAY, RIGHT]], 2)
    assert [float(r.rewards[0]) for r in results] == [1.0, 1.0] and results[1].terminated[0]
    best = optimal_returns("DarkKeyToDoor-v0")
    assert best.shape == (81 * 80,) and (best == 2.0).all()
    key, door = key_door_cells(np.arange(81 * 80))
    assert (key != door).all()
    np.testing.assert_array_equal(key_door_task(key, door), np.arange(81 * 80))


def test_tasks_are_required_for_grid_ids_and_refused_for_envpool_ids():
    with pytest.raises(ValueError, match="'DarkRoom-v0' needs tasks="):
        VectorEnv("DarkRoom-v0", 2, seed=0)
    with pytest.raises(ValueError, match=r"tasks\[1\]=81 is not a DarkRoom-v0 task index"):
        VectorEnv("DarkRoom-v0", 2, seed=0, tasks=np.array([3, 81]))
    with pytest.raises(ValueError, match=r"tasks must be an int array of shape \(3,\)"):
        VectorEnv("DarkKeyToDoor-v0", 3, seed=0, tasks=np.array([1, 2]))
    with pytest.raises(ValueError, match="env_id='CartPole-v1' takes none"):
        VectorEnv("CartPole-v1", 2, seed=0, tasks=np.array([0, 1]))
    env = VectorEnv("DarkRoom-v0", 1, seed=0, tasks=np.array([0]))
    env.reset()
    with pytest.raises(ValueError, match=r"action 5 is not an index of Discrete\(5\)"):
        env.step(np.array([5], np.int32))


def test_split_tasks_is_a_partition_fixed_by_the_seed():
    train, held_out = split_tasks(81, 0.2, seed=3)
    assert len(held_out) == 16 and len(train) == 65
    np.testing.assert_array_equal(np.sort(np.concatenate([train, held_out])), np.arange(81))
    again = split_tasks(81, 0.2, seed=3)
    np.testing.assert_array_equal(again[1], held_out)
    assert not np.array_equal(split_tasks(81, 0.2, seed=4)[1], held_out)
    with pytest.raises(ValueError, match="held_out_fraction=1.0 must lie in"):
        split_tasks(81, 1.0, seed=0)


# Goals 2 and 4 steps from the centre. Measured (pure numpy, fixed seeds): over the
# first 20 episodes every history returns at most 1.2 on average, over the last 20 at
# least 16.4 (optimum 17 or 19).
LEARNED_GOALS = np.array([12, 38, 44, 20])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_q_learning_histories_improve_from_random_to_near_optimal(seed):
    histories = record_histories("DarkRoom-v0", LEARNED_GOALS, 200, seed)
    returns = history_returns(histories)
    assert returns.shape == (4, 200)
    first, last = returns[:, :20].mean(1), returns[:, -20:].mean(1)
    best = optimal_returns("DarkRoom-v0", LEARNED_GOALS)
    assert (first <= 3.0).all(), first
    assert (last - first >= 12.0).all() and (last >= 0.85 * best).all(), (first, last)


def test_recorded_histories_are_tagged_in_order():
    tasks = np.array([int(key_door_task(10, 70)), 5, 5])
    histories = record_histories("DarkKeyToDoor-v0", tasks, 12, seed=1, learning_rate=0.5)
    assert [h.history_id for h in histories] == [0, 1, 2]
    assert [h.task_id for h in histories] == tasks.tolist()
    for history in histories:
        lengths = [episode.length for episode in history.episodes]
        assert history.num_episodes == 12
        # One update per transition: an episode starts after its predecessors' steps.
        np.testing.assert_array_equal(history.source_updates,
                                      np.concatenate([[0], np.cumsum(lengths)[:-1]]))
        assert (np.diff(history.source_updates) > 0).all()
        for episode in history.episodes:
            assert episode.terminated != episode.truncated
            assert episode.terminated or episode.length == 50
            np.testing.assert_array_equal(episode.observations[0], [4, 4])
        steps = history.steps()
        assert len(steps["actions"]) == history.num_steps == sum(lengths)
        assert (np.diff(steps["episode_index"]) >= 0).all()
        assert steps["episode_index"][-1] == 11 and steps["episode_start"].sum() == 12
        np.testing.assert_array_equal(history_returns([history])[0],
                                      np.bincount(steps["episode_index"], steps["rewards"]))
    room = record_histories("DarkRoom-v0", np.array([3]), 5, seed=0)[0]
    np.testing.assert_array_equal(room.source_updates, [0, 20, 40, 60, 80])
    assert all(e.truncated and e.length == 20 for e in room.episodes)


def test_record_histories_refuses_bad_input():
    with pytest.raises(ValueError, match="source option 'lr' is not a QLearningConfig field"):
        record_histories("DarkRoom-v0", np.array([1]), 5, 0, lr=0.1)
    with pytest.raises(ValueError, match="epsilon_end=1.5 must lie in"):
        record_histories("DarkRoom-v0", np.array([1]), 5, 0, epsilon_end=1.5)
    with pytest.raises(ValueError, match="env_id='CartPole-v1' has no Q-learning source"):
        record_histories("CartPole-v1", np.array([1]), 5, 0)
    with pytest.raises(ValueError, match="episodes=0 must be a positive int"):
        record_histories("DarkRoom-v0", np.array([1]), 0, 0)


def test_family_classes_match_their_ids():
    assert DarkRoom.env_id == "DarkRoom-v0" and DarkRoom.num_tasks == 81
    assert DarkKeyToDoor.env_id == "DarkKeyToDoor-v0" and DarkKeyToDoor.num_tasks == 6480
