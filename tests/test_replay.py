"""The Reverb replay layer against real in-process servers on localhost.

Every wait polls server state with a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import ClassVar

import numpy as np
import portpicker
import pytest
from common import wait_until

from replay import _reverb
from replay._reverb import reverb
from replay.params import (
    ParamsError,
    ParamsPuller,
    decode_params,
    encode_params,
    publish_params,
)
from replay.stream import window_batches
from replay.tables import (
    EXPERIENCE_TABLE,
    PARAMS_TABLE,
    ReplaySpec,
    ReplayUnavailable,
    make_tables,
    start_server,
    stored_steps,
    table_counts,
    wait_for_server,
)
from replay.windows import (
    WINDOW_COLUMNS,
    FlatSteps,
    flatten_episode,
    gather_windows,
    window_shapes,
)
from replay.writer import EpisodeWriter

OBS, ACT = (3,), (2,)


def run_bounded(fn: Callable, *args, timeout_s: float = 60.0):
    """fn(*args) in a daemon thread: a rate limiter that wrongly blocks fails the test
    instead of hanging the suite."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = fn(*args)
        except (RuntimeError, ValueError, reverb.errors.ReverbError) as error:  # re-raised below
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        pytest.fail(f"{getattr(fn, '__qualname__', fn)} still blocked after {timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def make_spec(**overrides) -> ReplaySpec:
    """A spec whose limiter never blocks these tests, unless overridden."""
    fields = {"observation_shape": OBS, "action_shape": ACT, "context_len": 5,
              "capacity_items": 1000, "samples_per_insert": 1.0, "tolerance_steps": 10_000}
    return ReplaySpec(**(fields | overrides))


@contextlib.contextmanager
def serve(spec: ReplaySpec) -> Iterator[tuple[reverb.Server, str]]:
    """A server for `spec` on a free port, and its address."""
    server = start_server(spec)
    try:
        yield server, f"localhost:{server.port}"
    finally:
        server.stop()


def raw_episode(episode: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(observations (T+1, 3), actions (T, 2), rewards (T,)) whose values name their step.

    observations[t, 0] = 100 * episode + t identifies a window by its last step; rewards
    are multiples of 1/4, so every return-to-go is exact in float32.
    """
    t = np.arange(length + 1, dtype=np.float32)
    observations = np.stack([100 * episode + t, -t, np.full_like(t, episode)], axis=1)
    actions = np.stack([t[:length] / 100, -t[:length] / 100], axis=1)
    rewards = (episode + t[:length] + 1) / 4
    return observations, actions, rewards


def tagged_episode(episode: int, length: int, terminated: bool) -> FlatSteps:
    return flatten_episode(*raw_episode(episode, length), terminated)


def reference_window(episode: int, length: int, terminated: bool, end: int, K: int):
    """The window ending at step `end`, built one position at a time from the raw episode."""
    observations, actions, rewards = raw_episode(episode, length)
    window = {name: [] for name in WINDOW_COLUMNS}
    for i in range(end - K + 1, end + 1):
        if i < 0:  # left padding: all zeros, mask 0
            for name in WINDOW_COLUMNS:
                window[name].append(np.zeros(OBS if "observations" in name else
                                             ACT if name == "actions" else ()))
            continue
        window["observations"].append(observations[i])
        window["actions"].append(actions[i])
        window["rewards"].append(rewards[i])
        window["returns_to_go"].append(sum(float(r) for r in rewards[i:]))  # hindsight
        window["timesteps"].append(i)
        window["mask"].append(1.0)
        window["next_observations"].append(observations[i + 1])
        window["terminated"].append(1.0 if terminated and i == length - 1 else 0.0)
    shapes = window_shapes(K, OBS, ACT)
    return {name: np.asarray(window[name], shapes[name][1]) for name in WINDOW_COLUMNS}


def sample_all(address: str, spec: ReplaySpec, expected_items: int,
               table: str = EXPERIENCE_TABLE) -> dict:
    """Item key -> window dict (unpacked from the stored columns), sampling uniformly
    until `expected_items` keys were seen."""
    stored = stored_steps(spec)
    client = reverb.Client(address)
    seen: dict[int, dict[str, np.ndarray]] = {}
    for _ in range(50):
        for sample in client.sample(table, num_samples=100, emit_timesteps=False,
                                    unpack_as_table_signature=True):
            seen[sample.info.key] = stored.unpack(sample.data)
        if len(seen) >= expected_items:
            break
    assert len(seen) == expected_items
    return seen


# ---- tables and server ---------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"samples_per_insert": 0.0}, "samples_per_insert"),
        ({"tolerance_steps": 0.5}, "tolerance_steps"),
        ({"capacity_items": 0}, "capacity_items"),
        ({"capacity_items": 10, "preload_items": 11}, "capacity_items"),
        ({"context_len": 0}, "context_len"),
        ({"preload_items": -1}, "preload_items"),
        ({"min_size_to_sample": 0}, "min_size_to_sample"),
        ({"capacity_items": 10, "min_size_to_sample": 11}, "min_size_to_sample"),
        # A limiter window of 2 * 5 * 0.1 = 1 sample; Reverb needs at least 2.
        ({"samples_per_insert": 0.1, "tolerance_steps": 5}, "tolerance_steps"),
    ],
)
def test_make_tables_rejects_bad_specs(overrides, field):
    with pytest.raises(ValueError, match=field):
        make_tables(make_spec(**overrides))


def test_make_tables_builds_both_tables():
    tables = make_tables(make_spec(preload_items=7, samples_per_insert=4.0, tolerance_steps=5))
    assert [t.name for t in tables] == [EXPERIENCE_TABLE, PARAMS_TABLE]
    limiter = tables[0].info.rate_limiter_info
    assert (limiter.min_diff, limiter.max_diff) == (7 * 4 - 20, 7 * 4 + 20)


def test_replay_needs_python_3_11(monkeypatch):
    monkeypatch.setattr(sys, "version_info", (3, 12, 0, "final", 0))
    with pytest.raises(RuntimeError, match="needs Python 3.11.*Python 3.12"):
        importlib.reload(_reverb)


def test_wait_for_server_times_out_naming_the_address():
    address = f"localhost:{portpicker.pick_unused_port()}"
    messages = []
    start = time.monotonic()
    with pytest.raises(ReplayUnavailable, match=f"replay server at {address} did not answer "
                                                "within 2 s"):
        wait_for_server(address, timeout_s=2, log=messages.append)
    # It waited its 2 s, and gave up: no more than a generous margin for a loaded machine.
    assert 2 <= time.monotonic() - start < 2 + 60
    assert messages and address in messages[0]


def test_wait_for_server_returns_once_up():
    with serve(make_spec()) as (_, address):
        wait_for_server(address, timeout_s=5)
        assert table_counts(address) == {"size": 0, "inserts": 0, "samples": 0}


def test_fifo_eviction_keeps_the_newest_items():
    spec = make_spec(capacity_items=10, context_len=2)
    with serve(spec) as (_, address):
        with EpisodeWriter(reverb.Client(address), spec) as writer:
            assert run_bounded(writer.write, tagged_episode(0, 15, terminated=False)) == 15
        assert table_counts(address) == {"size": 10, "inserts": 15, "samples": 0}
        windows = sample_all(address, spec, 10).values()
        assert sorted(int(w["timesteps"][-1]) for w in windows) == list(range(5, 15))


# ---- writing and reading windows --------------------------------------------------------


class TestWindows:
    K = 5
    # (id, length, terminated): odd lengths, shorter and longer than K.
    EPISODES: ClassVar = [(0, 1, True), (1, 3, False), (2, 7, True), (3, 12, False)]

    @pytest.fixture(scope="class")
    @classmethod
    def written(cls):
        """A server holding the windows of EPISODES, written through one EpisodeWriter."""
        spec = make_spec(context_len=cls.K)
        episodes = {i: tagged_episode(i, n, term) for i, n, term in cls.EPISODES}
        with serve(spec) as (_, address):
            writer = EpisodeWriter(address, spec)
            counts = [run_bounded(writer.write, steps) for steps in episodes.values()]
            writer.close()
            assert counts == [n for _, n, _ in cls.EPISODES]
            yield address, spec, episodes

    def test_windows_equal_the_slow_reference_and_gather_windows(self, written):
        address, spec, episodes = written
        total = sum(len(s) for s in episodes.values())
        windows = sample_all(address, spec, total)
        found = set()
        for window in windows.values():
            assert window["mask"][-1] == 1.0  # every item ends at a real step
            episode, end = divmod(int(window["observations"][-1, 0]), 100)
            found.add((episode, end))
            steps = episodes[episode]
            _, length, terminated = self.EPISODES[episode]
            reference = reference_window(episode, length, terminated, end, self.K)
            gathered = gather_windows(steps, np.array([end]), self.K)
            for name in WINDOW_COLUMNS:
                assert window[name].dtype == reference[name].dtype, name
                np.testing.assert_array_equal(window[name], reference[name], err_msg=name)
                np.testing.assert_array_equal(window[name], gathered[name][0], err_msg=name)
        assert found == {(i, t) for i, n, _ in self.EPISODES for t in range(n)}

    def test_window_batches_shapes_and_dtypes(self, written):
        address, spec, _ = written
        batches = window_batches(address, spec, batch_size=4)
        batch = next(batches)
        batches.close()
        shapes = window_shapes(self.K, OBS, ACT)
        assert set(batch) == set(WINDOW_COLUMNS)
        for name, (shape, dtype) in shapes.items():
            assert batch[name].shape == (4, *shape), name
            assert batch[name].dtype == dtype, name

    def test_counts_report_inserts_and_samples(self, written):
        address, _, episodes = written
        counts = table_counts(reverb.Client(address))
        total = sum(len(s) for s in episodes.values())
        assert counts["size"] == counts["inserts"] == total
        assert counts["samples"] > 0  # the other tests sampled


def test_writer_call_order_and_input_checks():
    spec = make_spec()
    with serve(spec) as (_, address):
        writer = EpisodeWriter(address, spec)
        assert writer.write(tagged_episode(0, 0, terminated=False)) == 0  # nothing to write
        two = tagged_episode(0, 2, False)
        two.episode_start = np.array([0, 1])
        with pytest.raises(ValueError, match="one episode"):
            writer.write(two)
        wrong = tagged_episode(0, 2, False)
        wrong.actions = np.zeros((2, 3), np.float32)
        with pytest.raises(ValueError, match="steps.actions has shape"):
            writer.write(wrong)
        writer.close()
        writer.close()  # idempotent
        with pytest.raises(RuntimeError, match="after close"):
            writer.write(tagged_episode(0, 2, False))
        assert table_counts(address)["inserts"] == 0


# ---- rate limiter -------------------------------------------------------------------------


class TestRateLimiter:
    SPI, TOLERANCE, PRELOAD = 4.0, 5, 10
    T = SPI * TOLERANCE  # samples the learner may take ahead of the actors

    @pytest.fixture
    def preloaded(self):
        spec = make_spec(context_len=2, samples_per_insert=self.SPI,
                         tolerance_steps=self.TOLERANCE, preload_items=self.PRELOAD)
        with serve(spec) as (_, address):
            with EpisodeWriter(address, spec) as writer:
                run_bounded(writer.write, tagged_episode(0, self.PRELOAD, terminated=False))
            yield address, spec

    def count_samples(self, address, spec, timeout_ms: int = 300) -> int:
        return sum(len(b["mask"]) for b in window_batches(
            address, spec, batch_size=1, rate_limiter_timeout_ms=timeout_ms))

    def test_learner_takes_at_most_tolerance_samples_before_online_steps(self, preloaded):
        address, spec = preloaded
        assert self.count_samples(address, spec) == self.T
        assert table_counts(address)["samples"] == self.T

    def test_actors_run_at_most_tolerance_steps_ahead(self, preloaded):
        address, spec = preloaded
        writer = EpisodeWriter(address, spec, max_pending_items=1)
        thread = threading.Thread(target=writer.write, args=(tagged_episode(1, 12, False),),
                                  daemon=True)
        thread.start()
        wait_until(lambda: table_counts(address)["inserts"] >= self.PRELOAD + self.TOLERANCE,
                   what="the first tolerance_steps online inserts")
        thread.join(0.3)  # the rest are held by the rate limiter
        assert thread.is_alive()
        assert table_counts(address)["inserts"] == self.PRELOAD + self.TOLERANCE
        # Sampling releases them: the learner may take spi per step plus T.
        assert self.count_samples(address, spec, timeout_ms=1000) == 12 * self.SPI + self.T
        thread.join(5)
        assert not thread.is_alive()
        writer.close()

    def test_ratio_holds_with_concurrent_actor_and_learner(self, preloaded):
        address, spec = preloaded
        lengths = [1, 9, 30, 17, 50, 3, 40, 25]  # 175 online steps
        online = sum(lengths)
        writer_done = threading.Event()
        sampled = []

        def actor():
            with EpisodeWriter(address, spec) as writer:
                for i, n in enumerate(lengths):
                    writer.write(tagged_episode(i + 1, n, terminated=bool(i % 2)))
            writer_done.set()

        def learner():
            # Samples as fast as it can; a dataset ends after 0.5 s without a sample, so
            # restart it until the actor is done, then drain what is left.
            while True:
                done = writer_done.is_set()
                sampled.append(self.count_samples(address, spec, timeout_ms=500))
                if done:
                    return

        threads = [threading.Thread(target=actor, daemon=True),
                   threading.Thread(target=learner, daemon=True)]
        for thread in threads:
            thread.start()
        low, high = -self.T, self.T
        snapshots = 0
        deadline = time.monotonic() + 120  # a hang guard: a loaded machine is slow, not stuck
        while threads[1].is_alive():
            assert time.monotonic() < deadline, "actor and learner did not finish in 120 s"
            counts = table_counts(address)
            error = (counts["inserts"] - self.PRELOAD) * self.SPI - counts["samples"]
            # The limiter allows one more sample while error - 1 >= -T and one more
            # insert while error + spi <= T.
            assert low <= error <= high, counts
            snapshots += 1
            time.sleep(0.002)  # a polling interval, not a wait for an outcome
        for thread in threads:
            thread.join(5)
        counts = table_counts(address)
        assert counts["inserts"] == self.PRELOAD + online
        samples = counts["samples"]
        assert sum(sampled) == samples
        assert abs(samples / online - self.SPI) <= self.T / online + 1e-9
        assert samples == online * self.SPI + self.T  # drained to the limit at the end
        assert snapshots > 0


# ---- params --------------------------------------------------------------------------------


def params_arrays(scale: float = 1.0) -> dict[str, np.ndarray]:
    return {
        "w": (scale * np.arange(12, dtype=np.float32)).reshape(3, 4),
        "half": np.ones(2, np.float16),
        "count": np.array(3, np.int64),
        "index": np.arange(4, dtype=np.int32),
        "flag": np.array([True, False]),
        "raw": np.zeros(0, np.uint8),
    }


def expected_of(arrays: dict[str, np.ndarray]) -> dict:
    return {name: (value.shape, value.dtype) for name, value in arrays.items()}


def test_encode_decode_round_trip_and_header_checks():
    arrays = params_arrays()
    flat = encode_params(arrays, 42)
    step, decoded = decode_params(flat, expected_of(arrays))
    assert step == 42 and list(decoded) == sorted(arrays)
    for name, value in arrays.items():
        np.testing.assert_array_equal(decoded[name], value)
    assert decode_params(flat, None)[0] == 42
    bad = list(flat)
    bad[2] = bad[2].astype(np.float32)  # 'count' no longer matches its header entry
    with pytest.raises(ParamsError, match="'count'.*header"):
        decode_params(bad, None)
    with pytest.raises(ParamsError, match="payload has"):
        decode_params(flat[:-1], None)
    with pytest.raises(ParamsError, match="not UTF-8 JSON"):
        decode_params([np.frombuffer(b"{nope", np.uint8), *flat[1:]], None)
    with pytest.raises(ParamsError, match="'w' has dtype float64"):
        encode_params({"w": np.zeros(2, np.float64)}, 1)
    with pytest.raises(ParamsError, match="step"):
        encode_params(arrays, -1)


class TestParams:
    @pytest.fixture
    def server(self):
        with serve(make_spec()) as server:
            yield server

    @pytest.fixture
    def puller(self, server):
        _, address = server
        puller = ParamsPuller(address, expected_of(params_arrays()), interval_s=0.02)
        puller.start()
        yield puller
        puller.stop()

    def publish_and_wait(self, server, puller: ParamsPuller, arrays, step: int) -> None:
        """Publish, then wait until the puller has fetched (and judged) that payload."""
        _, address = server
        received = puller.received
        publish_params(reverb.Client(address), arrays, step)
        wait_until(lambda: puller.received > received, what=f"the payload of step {step}")

    def test_publish_then_poll(self, server, puller):
        assert puller.poll() is None  # nothing published yet
        arrays = params_arrays()
        self.publish_and_wait(server, puller, arrays, 5)
        step, pulled = puller.poll()
        assert step == 5 and set(pulled) == set(arrays)
        for name, value in arrays.items():
            assert pulled[name].dtype == value.dtype
            np.testing.assert_array_equal(pulled[name], value)
        assert puller.poll() is None  # nothing newer

        self.publish_and_wait(server, puller, params_arrays(2.0), 9)
        step, pulled = puller.poll()
        assert step == 9
        np.testing.assert_array_equal(pulled["w"], params_arrays(2.0)["w"])

        for old in (9, 4):  # equal and older steps are not returned
            self.publish_and_wait(server, puller, params_arrays(3.0), old)
            assert puller.poll() is None
        assert puller.rejected == 0

    @pytest.mark.parametrize(
        "change, entry",
        [
            (lambda a: a.update(w=np.zeros((4, 3), np.float32)), "'w'"),
            (lambda a: a.update(extra=np.zeros(1, np.float32)), "'extra'"),
            (lambda a: a.update(index=np.arange(4, dtype=np.int64)), "'index'"),
            (lambda a: a.pop("flag"), "'flag'"),
        ],
        ids=["shape", "extra-name", "dtype", "missing-name"],
    )
    def test_bad_payloads_are_rejected(self, server, puller, change, entry):
        self.publish_and_wait(server, puller, params_arrays(), 1)
        assert puller.poll()[0] == 1
        bad = params_arrays()
        change(bad)
        self.publish_and_wait(server, puller, bad, 2)
        assert puller.rejected == 1
        assert entry in puller.last_error
        assert puller.poll() is None  # keeps step 1, already returned
        self.publish_and_wait(server, puller, params_arrays(), 3)
        assert puller.poll()[0] == 3 and puller.rejected == 1

    def test_stop_ends_the_thread_even_without_a_server(self):
        puller = ParamsPuller(f"localhost:{portpicker.pick_unused_port()}",
                              expected_of(params_arrays()), interval_s=0.05)
        puller.start()
        wait_until(lambda: puller.last_error is not None, what="a failed check")
        # The thread is not stuck in a call to the missing server: it ends when asked.
        assert puller.stop(timeout_s=60)
        assert "params check failed" in puller.last_error and puller.poll() is None
