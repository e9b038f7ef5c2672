"""The learner role's batch source (`launch.roles._batches_until`): a stop is seen while
the replay stream waits, and what ends the stream reaches the learner. The stream is a
fake collaborator here; tests/test_finetune.py and test_reliability.py run the real one."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from launch import roles


class FakeFormat:
    """An item format whose stream yields `batches`, then raises `error` or, without
    one, waits until `release` is set, as a stream held by the rate limiter does."""

    def __init__(self, batches, error=None):
        self._batches, self._error = batches, error
        self.release = threading.Event()

    def batches(self, address, spec, batch_size):
        yield from self._batches
        if self._error is not None:
            raise self._error
        self.release.wait()


@pytest.fixture
def stream(monkeypatch):
    """make(batches, error) -> (fake format, stop event, the learner's batches); every
    fake stream still waiting is released at teardown, so no reader thread outlives
    its test."""
    fakes = []

    def make(batches, error=None):
        fake = FakeFormat(batches, error)
        fakes.append(fake)
        monkeypatch.setattr(roles, "item_format", lambda key: fake)
        stop = threading.Event()
        spec = SimpleNamespace(item_format="fake")
        return fake, stop, roles._batches_until("localhost:1", spec, 2, stop)

    yield make
    for fake in fakes:
        fake.release.set()


def test_a_stop_ends_the_batches_while_the_stream_waits(stream):
    _, stop, batches = stream([{"x": 1}, {"x": 2}])
    assert [next(batches), next(batches)] == [{"x": 1}, {"x": 2}]
    # The stream now waits for ever; the stop must end the batches all the same.
    threading.Timer(0.3, stop.set).start()
    assert next(batches, None) is None


def test_an_error_in_the_stream_reaches_the_learner(stream):
    _, _, batches = stream([{"x": 1}], error=ValueError("bad window"))
    assert next(batches) == {"x": 1}
    with pytest.raises(ValueError, match="bad window"):
        next(batches)


def test_a_stream_error_with_the_server_gone_ends_the_batches(stream, capsys):
    _, _, batches = stream([{"x": 1}], error=RuntimeError("connection refused"))
    assert list(batches) == [{"x": 1}]
    assert "replay server at localhost:1 is gone (connection refused)" in capsys.readouterr().out
