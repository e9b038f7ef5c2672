"""The data side of the Multi-Game Decision Transformer: envpool options (single frames,
the full action set), recording several games with mixed policies
(actors.multigame), the tagged multi-game dataset on disk (replay.multigame) and its
frame windows (replay.frame_window)."""

from __future__ import annotations

import json

import h5py
import minari
import numpy as np
import pytest

from actors.envs import MGDT_OPTIONS, VectorEnv, env_spec
from actors.multigame import (
    CEM_FLOOR,
    GamePlayer,
    MixedGameEnv,
    StickyRandom,
    cem_rounds,
    cem_update,
    noisy_eps,
    record_games,
)
from replay.datasets import (
    MINARI_DATA_FILE,
    MINARI_METADATA_FILE,
    DatasetError,
    Episode,
)
from replay.formats import item_format
from replay.frame_window import (
    FRAME_WINDOW_KEYS,
    FrameSampler,
    FrameWindows,
    FrameWindowWriter,
    GameSteps,
    concat_games,
    gather_frame_windows,
)
from replay.multigame import TaggedEpisode, load_multigame, write_multigame

GAMES = ["Pong-v5", "Breakout-v5"]
MAX_STEPS = 60
COUNTS = {"random": 2, "noisy:0.3": 2}


@pytest.fixture(scope="module")
def recorded():
    """Two episodes of each of "random" and "noisy:0.3" on Pong and Breakout, at most 60
    steps each, two environments per game."""
    return record_games(GAMES, COUNTS, seed=3, max_steps_per_episode=MAX_STEPS, num_envs=2)


# ---- envpool options ----------------------------------------------------------------


@pytest.mark.parametrize("game", GAMES)
def test_mgdt_options_give_single_frames_and_the_full_action_set(game):
    spec = env_spec(game, MGDT_OPTIONS)
    assert spec.observation_shape == (1, 84, 84) and spec.observation_dtype == "uint8"
    assert spec.num_actions == 18 and spec.action_space == "Discrete(18)"
    env = VectorEnv(game, 2, seed=0, options=MGDT_OPTIONS)
    try:
        frames = env.reset()
        result = env.step(np.array([17, 0]))
    finally:
        env.close()
    assert env.spec == spec and env.options == dict(MGDT_OPTIONS)
    assert frames.shape == (2, 1, 84, 84) and frames.dtype == np.uint8
    assert result.observations.shape == (2, 1, 84, 84)


def test_without_options_envpool_defaults_are_kept():
    assert env_spec("Breakout-v5").observation_shape == (4, 84, 84)
    assert env_spec("Breakout-v5", {}).num_actions == 4


@pytest.mark.parametrize("options, message", [
    ({"bogus": 1}, "'bogus' is not an envpool option of this task; its options: .*stack_num"),
    ({"stack_num": 0}, "stack_num=0 must be >= 1"),
    ({"stack_num": 1.5}, "stack_num=1.5 must be an int"),
    ({"full_action_space": 1}, "full_action_space=1 must be a bool"),
    ({"seed": 3}, "'seed' is set by VectorEnv itself"),
    ({1: 2}, "option name 1 must be a string"),
    ([("stack_num", 1)], "must be a mapping"),
])
def test_bad_options_are_refused_naming_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        env_spec("Pong-v5", options)
    with pytest.raises(ValueError, match=message):
        VectorEnv("Pong-v5", 1, seed=0, options=options)


def test_options_are_refused_for_onramp_own_task_families():
    with pytest.raises(ValueError, match="'DarkRoom-v0' is one of onramp's own task families"):
        VectorEnv("DarkRoom-v0", 1, seed=0, tasks=np.array([0]), options={"stack_num": 1})
    assert env_spec("DarkRoom-v0", {}).num_actions == 5


def test_a_max_episode_steps_option_truncates_episodes_there():
    env = VectorEnv("Pong-v5", 1, seed=0, options={**MGDT_OPTIONS, "max_episode_steps": 5})
    try:
        env.reset()
        results = [env.step(np.zeros(1, np.int64)) for _ in range(6)]
    finally:
        env.close()
    assert [bool(r.truncated[0]) for r in results] == [False] * 4 + [True, False]
    assert results[5].is_reset[0] and not results[4].terminated[0]


# ---- recording ----------------------------------------------------------------------


def test_record_games_tags_every_episode_in_game_and_policy_order(recorded):
    assert list(recorded) == GAMES
    for items in recorded.values():
        assert [tag for _, tag in items] == ["random"] * 2 + ["noisy:0.3"] * 2
        for episode, _ in items:
            T = episode.length
            assert 1 <= T <= MAX_STEPS
            assert episode.observations.shape == (T + 1, 1, 84, 84)
            assert episode.observations.dtype == np.uint8
            assert episode.actions.dtype == np.int64 and episode.actions.shape == (T,)
            assert episode.actions.min() >= 0 and episode.actions.max() < 18
            assert episode.rewards.dtype == np.float32 and episode.rewards.shape == (T,)
            assert episode.terminated or (episode.truncated and T == MAX_STEPS)
    assert all(isinstance(item, TaggedEpisode) for item in recorded["Pong-v5"])


def test_noisy_play_repeats_its_previous_action_as_often_as_eps_says(recorded):
    def repeat_rate(tag):
        pairs = [(e.actions[1:] == e.actions[:-1]) for items in recorded.values()
                 for e, t in items if t == tag]
        return float(np.concatenate(pairs).mean())

    # noisy:0.3 repeats with 0.7 + 0.3/18 = 0.72; uniform play with 1/18 = 0.06.
    assert 0.6 < repeat_rate("noisy:0.3") < 0.85
    assert repeat_rate("random") < 0.15
    assert noisy_eps("noisy:0.3") == 0.3 and noisy_eps("random") is None
    rng = np.random.default_rng(0)
    sticky = StickyRandom(3, 18, 0.5, rng)
    first = sticky(None)
    sticky.reset(np.array([1]))
    assert sticky.first.tolist() == [False, True, False] and first.shape == (3,)


def test_cem_update_moves_halfway_to_the_best_quarters_actions():
    def episode(actions, ret):
        actions = np.asarray(actions, np.int64)
        rewards = np.zeros(len(actions), np.float32)
        rewards[0] = ret
        return Episode(np.zeros((len(actions) + 1, 1, 84, 84), np.uint8), actions, rewards,
                       terminated=True, truncated=False)

    uniform = np.full(4, 0.25)

    def floored(p):
        return CEM_FLOOR + (1 - 4 * CEM_FLOOR) * np.asarray(p)

    played = [episode([0, 0, 1, 1], 1.0), episode([2, 2, 2, 2], 5.0),
              episode([3, 3, 3, 3], 0.0), episode([1, 1, 1, 1], 2.0)]
    # The best quarter of four episodes is the one of return 5, which plays action 2.
    np.testing.assert_allclose(cem_update(uniform, played),
                               floored([0.125, 0.125, 0.625, 0.125]))
    # Eight episodes: the best two (returns 5 and 2) play actions 2 and 1 half and half.
    eight = played + [episode([3, 3, 3, 3], -1.0)] * 4
    np.testing.assert_allclose(cem_update(uniform, eight),
                               floored([0.125, 0.375, 0.375, 0.125]))
    # No action falls below the floor, however long it goes unplayed.
    probs = uniform
    for _ in range(20):
        probs = cem_update(probs, played)
    assert probs.min() >= CEM_FLOOR - 1e-12 and probs.sum() == pytest.approx(1.0)
    assert probs.argmax() == 2
    assert cem_rounds("cem:8") == 8 and cem_rounds("noisy:0.3") is None


def test_cem_recording_keeps_the_best_of_all_rounds():
    def record(count):
        return record_games(["Breakout-v5"], {"cem:3": count}, seed=2,
                            max_steps_per_episode=40, num_envs=2)["Breakout-v5"]

    every = record(6)  # all 3 rounds x 2 environments: the same play whatever is kept
    best = record(4)
    assert [tag for _, tag in best] == ["cem:3"] * 4
    ranked = sorted(every, key=lambda tagged: tagged.episode.ret, reverse=True)
    for kept, expected in zip(best, ranked[:4]):
        np.testing.assert_array_equal(kept.episode.actions, expected.episode.actions)
    assert len({tagged.episode.actions.tobytes() for tagged in every}) == 6


def test_recording_is_reproducible_from_the_seed():
    def once():
        return record_games(["Breakout-v5"], {"noisy:0.5": 1}, seed=7,
                            max_steps_per_episode=15, num_envs=1)["Breakout-v5"]

    a, b = once(), once()
    np.testing.assert_array_equal(a[0].episode.actions, b[0].episode.actions)
    np.testing.assert_array_equal(a[0].episode.observations, b[0].episode.observations)


class CountingPolicy:
    """A given policy with act/record/reset, cycling through the actions."""

    def __init__(self):
        self.steps, self.resets, self.records = 0, [], 0

    def act(self, frames):
        assert frames.shape == (2, 1, 84, 84) and frames.dtype == np.uint8
        self.steps += 1
        return np.full(2, self.steps % 18)

    def record(self, actions, rewards, terminated):
        assert actions.shape == rewards.shape == terminated.shape == (2,)
        self.records += 1

    def reset(self, env_ids=None):
        self.resets.append(None if env_ids is None else env_ids.tolist())


def test_a_given_policy_is_told_its_steps_and_episode_starts():
    policy = CountingPolicy()
    out = record_games(["Pong-v5"], {"online-best": 2}, seed=0, max_steps_per_episode=10,
                       num_envs=2, policies={"online-best": policy})
    items = out["Pong-v5"]
    assert [tag for _, tag in items] == ["online-best"] * 2
    assert policy.records == policy.steps == 10  # both envs finish at step 10
    assert policy.resets == [None]
    np.testing.assert_array_equal(items[0].episode.actions, np.arange(1, 11) % 18)
    bare = record_games(["Pong-v5"], {"fixed": 1}, seed=0, max_steps_per_episode=3,
                        num_envs=1, policies={"fixed": lambda frames: np.array([4])})
    assert bare["Pong-v5"][0].episode.actions.tolist() == [4, 4, 4]


class KeyedPolicy:
    """act/record/reset for a batch whose environment i has key keys[i]: each step acts
    (step + key) % 18, so an environment is acted for alike alone or in a mixed batch."""

    def __init__(self, keys):
        self.keys, self.steps = np.asarray(keys), 0

    def act(self, frames, generator=None):
        assert frames.shape == (len(self.keys), 1, 84, 84)
        self.steps += 1
        return (self.steps + self.keys) % 18

    def record(self, actions, rewards, terminated):
        pass

    def reset(self, env_ids=None):
        pass


def test_a_mixed_batch_plays_each_game_as_its_own_batch_would():
    """An actor whose batch mixes two games (MixedGameEnv) finishes, for each game, the
    same episodes as that game's own batch with the same seed and actions, and tags
    each with its game's index. The games' episode limits differ, so one game's envs
    reset while the other's play on."""
    n, limits = 2, (12, 17)

    def env(i):
        return VectorEnv(GAMES[i], n, 10 + i,
                         options={**MGDT_OPTIONS, "max_episode_steps": limits[i]})

    mixed = GamePlayer(MixedGameEnv([env(0), env(1)]), KeyedPolicy([0, 1, 7, 8]),
                       games=[3, 5])
    alone = [GamePlayer(env(i), KeyedPolicy(keys), games=[g])
             for i, (g, keys) in enumerate(((3, [0, 1]), (5, [7, 8])))]
    try:
        assert mixed.env.num_envs == 4 and mixed.games.tolist() == [3, 3, 5, 5]
        got, taken = mixed.play(100)
        assert taken >= 100
        for g, player, limit in zip((3, 5), alone, limits):
            theirs = [episode for _, episode in player.play(50)[0]]
            ours = [episode for game, episode in got if game == g]
            common = min(len(ours), len(theirs))
            assert common >= 2, (len(ours), len(theirs))
            for a, b in zip(ours[:common], theirs[:common]):
                assert a.truncated and b.truncated and len(a.actions) == limit
                np.testing.assert_array_equal(a.actions, b.actions)
                np.testing.assert_array_equal(a.rewards, b.rewards)
                np.testing.assert_array_equal(a.observations, b.observations)
        assert {game for game, _ in got} == {3, 5}
    finally:
        for player in (mixed, *alone):
            player.close()


def test_a_mixed_batch_needs_one_action_set():
    pong = VectorEnv("Pong-v5", 1, 0, options={"stack_num": 1})
    breakout = VectorEnv("Breakout-v5", 1, 0, options={"stack_num": 1})
    try:
        with pytest.raises(ValueError, match="game Breakout-v5 has Discrete.*one action set"):
            MixedGameEnv([pong, breakout])
        with pytest.raises(ValueError, match="needs at least one"):
            MixedGameEnv([])
        for games in ([], [0, 1], [-1]):
            with pytest.raises(ValueError, match="must give one game index >= 0 for each "
                                                 "of the env's 1 games"):
                GamePlayer(pong, KeyedPolicy([0]), games=games)
    finally:
        pong.close()
        breakout.close()


@pytest.mark.parametrize("kwargs, message", [
    ({"episodes_per_policy": {"best": 1}}, "names policy 'best', which is neither"),
    ({"episodes_per_policy": {"noisy:1.5": 1}}, r"needs eps in \(0, 1\]"),
    ({"episodes_per_policy": {"cem:0": 1}}, "needs a whole number of rounds"),
    ({"episodes_per_policy": {"cem:2": 5}, "num_envs": 2},
     r"2 rounds of 2 environments play 4 episodes"),
    ({"episodes_per_policy": {"random": -1}}, r"episodes_per_policy\['random'\]=-1"),
    ({"episodes_per_policy": {"bad tag": 1}}, "policy tag 'bad tag'"),
    ({"policies": {"spare": print}}, r"policies\['spare'\] is given but"),
    ({"options": {"stack_num": 1}}, "has Discrete.*one action set"),
    ({"options": {}}, r"observations of shape \(4, 84, 84\).*one uint8 frame"),
    ({"max_steps_per_episode": 0}, "max_steps_per_episode=0 must be an int >= 1"),
    ({"options": {**MGDT_OPTIONS, "max_episode_steps": 9}}, "both set the episode limit"),
    ({"games": ["Pong-v5", "Pong-v5"]}, "each once"),
    ({"games": ["NoSuchGame-v5"]}, "not an envpool task"),
])
def test_record_games_refuses_bad_input_before_the_first_step(kwargs, message):
    args = {"games": GAMES, "episodes_per_policy": {"random": 1}, "seed": 0,
            "max_steps_per_episode": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        record_games(**args)


# ---- the dataset on disk -------------------------------------------------------------


def stored_bytes(folder) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def test_written_games_load_back_equal_and_minari_opens_them(recorded, tmp_path):
    folder = write_multigame(tmp_path / "mg", recorded, metadata={"seed": 3})
    back = load_multigame(folder)
    assert list(back) == GAMES
    for game in GAMES:
        assert [tag for _, tag in back[game]] == [tag for _, tag in recorded[game]]
        for (a, _), (b, _) in zip(back[game], recorded[game]):
            for key in ("observations", "actions", "rewards"):
                np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
                assert getattr(a, key).dtype == getattr(b, key).dtype
            assert (a.terminated, a.truncated) == (b.terminated, b.truncated)
    metadata = json.loads((folder / MINARI_METADATA_FILE).read_text())
    assert metadata["games"] == GAMES and metadata["num_actions"] == 18
    dataset = minari.MinariDataset(folder)
    assert dataset.total_episodes == 8
    assert dataset.observation_space.shape == (1, 84, 84) and dataset.action_space.n == 18
    tags = list(dataset.storage.get_episode_metadata([0, 2, 4]))
    assert [(t["game"], t["policy"]) for t in tags] == [
        ("Pong-v5", "random"), ("Pong-v5", "noisy:0.3"), ("Breakout-v5", "random")]
    np.testing.assert_array_equal(dataset[0].observations, recorded["Pong-v5"][0][0].observations)
    # Bytes per stored step: frames are gzip-compressed (replay.multigame docstring).
    steps = sum(e.length for items in recorded.values() for e, _ in items)
    per_step = stored_bytes(folder) / steps
    assert per_step < 7056 / 5, f"{per_step:.0f} bytes per step on disk"


def frames_episode(rng, steps, terminated=True, shape=(1, 84, 84)) -> Episode:
    return Episode(observations=rng.integers(0, 256, (steps + 1, *shape), dtype=np.uint8),
                   actions=rng.integers(0, 18, steps), rewards=rng.normal(size=steps).astype(
                       np.float32), terminated=terminated, truncated=not terminated)


@pytest.mark.parametrize("change, message", [
    (lambda d: {"Pong-v5": []}, "game Pong-v5 has no episodes"),
    (lambda d: {}, "at least one game"),
    (lambda d: {"Pong v5": d["Pong-v5"]}, "game 'Pong v5' must be an envpool task id"),
    (lambda d: {"Pong-v5": [(d["Pong-v5"][0][0], "two words")]}, "policy tag 'two words'"),
    (lambda d: {"Pong-v5": [d["Pong-v5"][0][0]]}, "must be an \\(Episode, policy tag\\) pair"),
    (lambda d: {"Pong-v5": [(frames_episode(np.random.default_rng(0), 3, shape=(4, 84, 84)),
                             "random")]}, r"one uint8 frame per step"),
    (lambda d: {"Pong-v5": [(Episode(np.zeros((3, 1, 84, 84), np.float32), np.zeros(2, np.int64),
                                     np.zeros(2, np.float32), True, False), "random")]},
     "observations are float32"),
    (lambda d: {"Pong-v5": [(Episode(np.zeros((3, 1, 84, 84), np.uint8), np.array([0, 18]),
                                     np.zeros(2, np.float32), True, False), "random")]},
     r"action 18 at episode 0, step 1 is not an index of Discrete\(18\)"),
])
def test_write_refuses_malformed_input_and_leaves_nothing(change, message, tmp_path):
    rng = np.random.default_rng(0)
    good = {"Pong-v5": [(frames_episode(rng, 4), "random")]}
    with pytest.raises(DatasetError, match=message) as error:
        write_multigame(tmp_path / "out", change(good))
    assert error.value.path.endswith("out")
    assert list(tmp_path.iterdir()) == []
    write_multigame(tmp_path / "out", good)
    with pytest.raises(DatasetError, match="not empty; refusing to overwrite"):
        write_multigame(tmp_path / "out", good)


def test_load_refuses_a_dataset_without_its_tags(tmp_path):
    rng = np.random.default_rng(1)
    folder = write_multigame(tmp_path / "mg", {"Pong-v5": [(frames_episode(rng, 3), "random")],
                                               "Breakout-v5": [(frames_episode(rng, 2), "x")]})
    with h5py.File(folder / MINARI_DATA_FILE, "a") as file:
        del file["episode_1"].attrs["policy"]
    with pytest.raises(DatasetError, match="episode_1 has no attribute 'policy'"):
        load_multigame(folder)
    with h5py.File(folder / MINARI_DATA_FILE, "a") as file:
        file["episode_1"].attrs["policy"] = "x"
        file["episode_1"].attrs["game"] = "Seaquest-v5"
    with pytest.raises(DatasetError, match="episode_1 is of game 'Seaquest-v5'"):
        load_multigame(folder)
    metadata = json.loads((folder / MINARI_METADATA_FILE).read_text())
    del metadata["games"]
    (folder / MINARI_METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(DatasetError, match="'games' must list the dataset's games"):
        load_multigame(folder)


# ---- frame windows -------------------------------------------------------------------


def labelled_games(rng) -> dict[str, list[TaggedEpisode]]:
    """Three games of unequal sizes whose tiny frames (1, 3, 1) hold (game, episode,
    step), so a window shows where each of its frames came from."""
    made = {}
    for g, (game, lengths) in enumerate((("Pong-v5", [7, 2, 30]), ("Alien-v5", [3]),
                                         ("Breakout-v5", [12, 1, 5, 9]))):
        items = []
        for e, n in enumerate(lengths):
            frames = np.zeros((n + 1, 1, 3, 1), np.uint8)
            frames[:, 0, :, 0] = np.stack([np.full(n + 1, g), np.full(n + 1, e),
                                           np.arange(n + 1)], axis=1)
            rewards = rng.choice([-3.0, -1.0, 0.0, 0.5, 2.0], n).astype(np.float32)
            items.append(TaggedEpisode(Episode(frames, rng.integers(0, 18, n), rewards,
                                               terminated=e % 2 == 0,
                                               truncated=e % 2 == 1), "random"))
        made[game] = items
    return made


def test_windows_line_up_with_their_episodes():
    data = labelled_games(np.random.default_rng(0))
    steps = concat_games(data)
    assert steps.games == ("Alien-v5", "Breakout-v5", "Pong-v5")
    assert steps.steps_per_game == {"Alien-v5": 3, "Breakout-v5": 27, "Pong-v5": 39}
    T = 5
    ends = np.arange(len(steps))
    batch = gather_frame_windows(steps, ends, T)
    assert set(batch) == set(FRAME_WINDOW_KEYS)
    assert batch["observations"].shape == (len(ends), T, 1, 3, 1)
    row = 0
    for game in steps.games:  # the flat steps go game by sorted game, episode by episode
        for episode, _ in data[game]:
            clipped = np.clip(episode.rewards, -1, 1)
            for t in range(episode.length):
                j = np.arange(t - T + 1, t + 1)
                real = j >= 0
                np.testing.assert_array_equal(batch["mask"][row], real.astype(np.float32))
                got = {key: batch[key][row] for key in batch}
                np.testing.assert_array_equal(got["observations"][real],
                                              episode.observations[j[real]])
                np.testing.assert_array_equal(got["actions"][real], episode.actions[j[real]])
                np.testing.assert_allclose(got["rewards"][real], clipped[j[real]])
                np.testing.assert_allclose(got["returns_to_go"][real],
                                           [clipped[k:].sum() for k in j[real]], rtol=1e-6)
                expected_terminal = (j[real] == episode.length - 1) & episode.terminated
                np.testing.assert_array_equal(got["terminals"][real], expected_terminal)
                for key in ("observations", "actions", "rewards", "returns_to_go",
                            "terminals"):
                    assert not got[key][~real].any(), key
                assert got["game"] == steps.games.index(game)
                row += 1
    assert row == len(steps)
    for key, dtype in (("observations", np.uint8), ("actions", np.int64), ("game", np.int64),
                       ("returns_to_go", np.float32), ("mask", np.float32)):
        assert batch[key].dtype == dtype


def test_sampled_windows_never_cross_episodes_or_games():
    steps = concat_games(labelled_games(np.random.default_rng(1)))
    for balance in (False, True):
        batch = FrameSampler(steps, 6, 256, seed=2, balance_games=balance).sample()
        for frames, mask, game in zip(batch["observations"], batch["mask"], batch["game"]):
            labels = frames[mask == 1][:, 0, :, 0]  # (real steps, 3): game, episode, step
            # labels[:, 0] is the game's position in the data, game its sorted index.
            assert len(set(labels[:, 0].tolist())) == 1 and len(set(labels[:, 1])) == 1
            np.testing.assert_array_equal(np.diff(labels[:, 2]), 1)
            assert mask[0] == 1 or labels[0, 2] == 0  # padded only before a first step
            assert mask[mask == 1].size == min(6, labels[-1, 2] + 1)
            order = ["Pong-v5", "Alien-v5", "Breakout-v5"]
            assert steps.games[game] == order[labels[0, 0]]


def test_balanced_sampling_draws_each_game_about_equally():
    steps = concat_games(labelled_games(np.random.default_rng(2)))  # 3, 27 and 39 steps
    draws = 30_000
    uniform = FrameSampler(steps, 2, draws, seed=0).sample()["game"]
    balanced = FrameSampler(steps, 2, draws, seed=0, balance_games=True).sample()["game"]
    share = np.bincount(balanced, minlength=3) / draws
    np.testing.assert_allclose(share, 1 / 3, atol=0.03)
    np.testing.assert_allclose(np.bincount(uniform, minlength=3) / draws,
                               np.array([3, 27, 39]) / 69, atol=0.03)


def test_a_given_game_list_keeps_indices_for_games_without_data():
    data = labelled_games(np.random.default_rng(3))
    games = ["Zaxxon-v5", "Pong-v5", "Breakout-v5", "Alien-v5"]
    steps = concat_games(data, games=games)
    assert steps.steps_per_game["Zaxxon-v5"] == 0
    batch = FrameSampler(steps, 3, 4000, seed=1, balance_games=True).sample()
    assert set(batch["game"].tolist()) == {1, 2, 3}
    with pytest.raises(ValueError, match="game 'Pong-v5' of the data is not in games"):
        concat_games(data, games=["Alien-v5", "Breakout-v5"])
    bad = {"Pong-v5": [Episode(np.zeros((3, 1, 2, 2), np.float32), np.zeros(2, np.int64),
                               np.zeros(2, np.float32), True, False)]}
    with pytest.raises(ValueError, match="game Pong-v5 episode 0: observations must be uint8"):
        concat_games(bad)
    bad = {"Pong-v5": [Episode(np.zeros((3, 1, 2, 2), np.uint8), np.array([0, 18]),
                               np.zeros(2, np.float32), True, False)]}
    with pytest.raises(ValueError, match=r"outside \[0, num_actions=18\)"):
        concat_games(bad)


def test_the_frame_window_format_is_registered_with_its_shapes(recorded):
    fmt = item_format("frame_window")
    assert isinstance(fmt, FrameWindows) and fmt.key == "frame_window"
    steps = concat_games(recorded)
    assert isinstance(steps, GameSteps) and steps.games == ("Breakout-v5", "Pong-v5")
    batch = fmt.offline_sampler(steps, context_len=4, batch_size=3, seed=0).sample()
    shapes = fmt.stored_shapes(frame_spec(4))
    assert set(shapes) == set(batch) == set(FRAME_WINDOW_KEYS)
    for key, (shape, dtype) in shapes.items():
        assert batch[key].shape == (3, *shape) and batch[key].dtype == dtype, key
    with pytest.raises(TypeError, match="concat_games"):
        fmt.offline_sampler(object(), 4, 3)


def frame_spec(context_len: int, **overrides):
    from replay.tables import ReplaySpec

    fields = {"observation_shape": (1, 84, 84), "action_shape": (), "context_len": context_len,
              "capacity_items": 1000, "samples_per_insert": 1.0, "tolerance_steps": 10_000,
              "item_format": "frame_window", "observation_dtype": "uint8",
              "action_dtype": "int32"}
    return ReplaySpec(**(fields | overrides))


def numbered_episode(first: int, length: int, terminated: bool) -> Episode:
    """Frames whose pixels are first + t (naming a window by its last step), actions
    t % 18, rewards in {-2, 0, 1} (clipped to [-1, 1] in windows)."""
    t = np.arange(length + 1)
    frames = np.broadcast_to((first + t).astype(np.uint8)[:, None, None, None],
                             (length + 1, 1, 84, 84)).copy()
    return Episode(observations=frames, actions=(t[:length] % 18).astype(np.int64),
                   rewards=np.array([(-2.0, 0.0, 1.0)[i % 3] for i in range(length)],
                                    np.float32),
                   terminated=terminated, truncated=not terminated)


def test_reverb_frame_windows_equal_the_in_memory_windows():
    """Episodes of two games written through the format's Reverb writer come back from
    its batches exactly as `gather_frame_windows` cuts them: padding, clipped rewards,
    returns-to-go, terminals and the game index."""
    from replay.tables import start_server, table_counts

    T = 4
    episodes = {"Breakout-v5": [numbered_episode(0, 3, True), numbered_episode(3, 9, False)],
                "Pong-v5": [numbered_episode(100, 6, True)]}
    steps = concat_games(episodes, games=("Breakout-v5", "Pong-v5"))
    spec = frame_spec(T)
    fmt = item_format("frame_window")
    server = start_server(spec)
    address = f"localhost:{server.port}"
    try:
        with fmt.writer(address, spec) as writer:
            for g, game in enumerate(steps.games):
                for episode in episodes[game]:
                    assert writer.write(episode, game=g) == len(episode.actions)
        assert table_counts(address)["size"] == len(steps) == 18
        with FrameWindowWriter(address, spec, num_games=2) as writer:
            for game in (2, -1, True):
                with pytest.raises(ValueError, match=r"game=.* must be an int index in \[0, 2\)"):
                    writer.write(episodes["Pong-v5"][0], game=game)
            with pytest.raises(ValueError, match="frames of shape"):
                writer.write(Episode(observations=np.zeros((3, 1, 42, 42), np.uint8),
                                     actions=np.zeros(2, np.int64),
                                     rewards=np.zeros(2, np.float32), terminated=True,
                                     truncated=False), game=0)
        assert table_counts(address)["size"] == 18  # nothing of the refused episodes
        seen = set()
        batches = fmt.batches(address, spec, batch_size=16, rate_limiter_timeout_ms=30_000)
        for _, batch in zip(range(20), batches):
            for b in range(16):
                pixel = batch["observations"][b, -1, 0, 0, 0]
                index = np.flatnonzero(steps.observations[:, 0, 0, 0] == pixel)
                assert len(index) == 1
                expected = gather_frame_windows(steps, index, T)
                for key in FRAME_WINDOW_KEYS:
                    np.testing.assert_array_equal(batch[key][b], expected[key][0], err_msg=key)
                seen.add(int(index[0]))
        assert len(seen) > 12  # most of the 18 windows were drawn
    finally:
        server.stop()


def test_recorded_windows_feed_the_mgdt_and_its_policy_records_a_game(recorded):
    """The sampler's batch is what the mgdt objective reads, and an MGDT policy plays a
    game through record_games as a given ("online-best") policy."""
    torch = pytest.importorskip("torch")
    from learner.objectives.mgdt import mgdt_loss
    from models import ModelConfig, build_model
    from models.mgdt import MultiGamePolicy, encode_reward

    cfg = ModelConfig(state_dim=84 * 84, act_dim=18, context_len=3, embed_dim=16, n_layer=1,
                      n_head=1, ffn_dim=32, dropout=0.0, kind="multi_game_dt",
                      action_kind="discrete", frame_shape=(1, 84, 84))
    torch.manual_seed(0)
    model = build_model(cfg, head="categorical").eval()
    batch = {k: torch.as_tensor(v) for k, v in FrameSampler(
        concat_games(recorded), 3, 4, seed=0, balance_games=True).sample().items()}
    buckets = model.buckets.encode(batch["returns_to_go"])
    classes = encode_reward(batch["rewards"], batch["terminals"])
    out = model(batch["observations"], buckets, batch["actions"], classes, batch["mask"])
    loss = mgdt_loss(out, batch["actions"], buckets, classes, batch["mask"]).loss
    assert torch.isfinite(loss)
    policy = MultiGamePolicy(model, 2, num_return_samples=4)
    played = record_games(["Breakout-v5"], {"online-best": 2}, seed=1, max_steps_per_episode=8,
                          num_envs=2, policies={"online-best": policy})["Breakout-v5"]
    assert [(e.length, tag) for e, tag in played] == [(8, "online-best")] * 2


def test_a_mixed_game_batch_trains_the_mgdt_learner(recorded):
    """One batch holding windows of both games, padded and unpadded, goes through the
    learner's offline and online updates as it comes from the sampler: every metric
    finite, the weights changed, no per-game handling anywhere."""
    torch = pytest.importorskip("torch")
    from learner.config import ObjectiveConfig, OptimConfig
    from learner.learner import Learner
    from models import ModelConfig

    cfg = ModelConfig(state_dim=84 * 84, act_dim=18, context_len=4, embed_dim=16, n_layer=1,
                      n_head=1, ffn_dim=32, dropout=0.0, kind="multi_game_dt",
                      action_kind="discrete", frame_shape=(1, 84, 84))
    steps = concat_games(recorded)
    # Per game: an episode's first step (3 padded positions), its second, and a later one.
    ends = np.concatenate([start + np.array([0, 1, 20, 30]) for start in steps.game_ranges[:, 0]])
    batch = {k: torch.as_tensor(v) for k, v in gather_frame_windows(steps, ends, 4).items()}
    assert batch["game"].tolist() == [0] * 4 + [1] * 4
    assert batch["mask"].sum(1).tolist() == [1, 2, 4, 4] * 2
    torch.manual_seed(0)
    learner = Learner(cfg, ObjectiveConfig(kind="mgdt"), OptimConfig(lr=1e-3, warmup_steps=0,
                                                                     batch_size=8))
    before = [p.detach().clone() for p in learner.model.parameters()]
    for rl in (False, True):
        metrics = learner.update(batch, rl=rl)
        assert "loss/nonfinite" not in metrics
        assert all(torch.isfinite(v) for v in metrics.values())
    assert learner.step == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.model.parameters()))
