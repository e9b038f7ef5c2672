"""Item formats as plug-ins (replay.formats): the registry, and the one format there is,
whose offline sampler and online tables give the learner the same batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from replay.episode_window import EpisodeWindows
from replay.formats import ITEM_FORMATS, ItemFormat, item_format
from replay.tables import EXPERIENCE_TABLE, ReplaySpec, make_tables, start_server
from replay.windows import WINDOW_COLUMNS, flatten_episode


def spec(**overrides) -> ReplaySpec:
    fields = {"observation_shape": (3,), "action_shape": (2,), "context_len": 4,
              "capacity_items": 100, "samples_per_insert": 1.0, "tolerance_steps": 10_000}
    return ReplaySpec(**(fields | overrides))


def episode(length: int, seed: int):
    rng = np.random.default_rng(seed)
    return flatten_episode(rng.normal(size=(length + 1, 3)).astype(np.float32),
                           rng.uniform(-1, 1, size=(length, 2)).astype(np.float32),
                           rng.normal(size=length).astype(np.float32), terminated=True)


def test_an_unknown_format_is_refused_naming_the_key_and_the_registered_ones():
    with pytest.raises(ValueError, match="replay.item_format='nope'.*episode_window"):
        item_format("nope")
    with pytest.raises(ValueError, match="item_format='nope'"):
        make_tables(spec(item_format="nope"))


def test_the_episode_window_is_the_default_and_gives_the_learner_window_columns():
    fmt = item_format(spec().item_format)
    assert isinstance(fmt, EpisodeWindows) and fmt.key == "episode_window"
    sampler = fmt.offline_sampler(episode(7, 0), context_len=4, batch_size=5, seed=1)
    batch = sampler.sample()
    assert set(batch) == set(WINDOW_COLUMNS)
    assert batch["observations"].shape == (5, 4, 3) and batch["actions"].shape == (5, 4, 2)


def test_online_batches_match_the_offline_sampler_in_columns_shapes_and_dtypes():
    """An episode written with the format's writer comes back from its `batches` with the
    columns, shapes and dtypes its offline sampler gives pretraining."""
    run_spec = spec()
    fmt = item_format(run_spec.item_format)
    steps = episode(6, 2)
    server = start_server(run_spec)
    try:
        address = f"localhost:{server.port}"
        with fmt.writer(address, run_spec) as writer:
            assert writer.write(steps) == 6
        online = next(iter(fmt.batches(address, run_spec, 3)))
    finally:
        server.stop()
    offline = fmt.offline_sampler(steps, run_spec.context_len, 3).sample()
    assert {k: (v.shape, v.dtype) for k, v in online.items()} == \
        {k: (v.shape, v.dtype) for k, v in offline.items()}
    # Each sampled window is one of the episode's windows, bit for bit.
    windows = {tuple(w) for w in fmt.offline_sampler(steps, 4, 600).sample()["observations"]
               .reshape(600, -1).tolist()}
    for row in online["observations"].reshape(3, -1).tolist():
        assert tuple(row) in windows


class _Halves(ItemFormat):
    """A format for this test: each step stored as one float32 column of half the size."""

    key = "halves"

    def stored_shapes(self, spec):
        return {"half": ((spec.context_len, 2), np.float32)}


def test_a_registered_format_decides_the_table_signature(monkeypatch):
    """Adding a format is one registry line; the tables follow its stored columns."""
    monkeypatch.setitem(ITEM_FORMATS, "halves", f"{__name__}:_Halves")
    table = make_tables(spec(item_format="halves"))[0]
    signature = table.info.signature
    assert list(signature) == ["half"]
    assert tuple(signature["half"].shape) == (4, 2)
    assert table.name == EXPERIENCE_TABLE


def test_frames_and_action_indices_reach_the_learner_batch_in_their_own_dtypes():
    """An Atari-shaped episode (uint8 frames, discrete actions) written to a real server
    comes back in the learner's batch, on its device, as uint8 frames and int32 indices,
    equal to the windows the offline sampler builds."""
    from learner.device import to_device

    frame_spec = spec(observation_shape=(4, 84, 84), action_shape=(), context_len=3,
                      observation_dtype="uint8", action_dtype="int32")
    rng = np.random.default_rng(3)
    steps = flatten_episode(rng.integers(0, 256, size=(6, 4, 84, 84), dtype=np.uint8),
                            rng.integers(0, 6, size=5), np.ones(5, np.float32), terminated=True)
    assert steps.observations.dtype == np.uint8 and steps.actions.dtype == np.int32
    fmt = item_format(frame_spec.item_format)
    server = start_server(frame_spec)
    try:
        address = f"localhost:{server.port}"
        with fmt.writer(address, frame_spec) as writer:
            writer.write(steps)
        batch = next(iter(fmt.batches(address, frame_spec, 4)))
    finally:
        server.stop()
    assert batch["observations"].dtype == np.uint8
    assert batch["next_observations"].dtype == np.uint8
    assert batch["actions"].dtype == np.int32 and batch["actions"].shape == (4, 3)
    on_device = to_device(batch, "cpu")
    assert on_device["observations"].dtype == torch.uint8
    offline = fmt.offline_sampler(steps, 3, 50).sample()
    windows = {w.tobytes() for w in offline["observations"]}
    assert all(w.tobytes() in windows for w in batch["observations"])
