"""Batches of windows from the experience table, for the learner.

`reverb.TrajectoryDataset` samples in C++ worker threads and batches in tf.data, so
the learner's Python loop only receives finished numpy batches. Each batch is a
dict of WINDOW_COLUMNS arrays with leading shape (batch_size, K), unpacked from the
table's stored columns (`replay.windows.StoredSteps`). `item_batches` samples any
item format's stored columns as they are.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from replay._reverb import reverb, tf
from replay.tables import EXPERIENCE_TABLE, ReplaySpec, stored_steps

STREAM_ERRORS = (tf.errors.OpError, RuntimeError)
"""What `window_batches` raises when the server stops answering or a sample times out
(the rate limiter held it past its timeout); callers catch these without importing TF."""


def window_batches(address: str, spec: ReplaySpec, batch_size: int,
                   **options) -> Iterator[dict[str, np.ndarray]]:
    """Yield batches of `batch_size` episode windows (WINDOW_COLUMNS) sampled from the
    experience table at `address`, unpacked from its stored columns; `options` as
    `item_batches`."""
    stored = stored_steps(spec)
    for data in item_batches(address, stored.shapes(spec.context_len), batch_size, **options):
        yield stored.unpack(data)


def item_batches(
    address: str,
    shapes: dict[str, tuple[tuple[int, ...], type]],
    batch_size: int,
    *,
    table: str = EXPERIENCE_TABLE,
    max_in_flight_samples_per_worker: int | None = None,
    num_workers: int = 1,
    prefetch: int = 2,
    rate_limiter_timeout_ms: int = -1,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield batches of `batch_size` items sampled from `table` at `address`, as stored:
    column -> array of shape (batch_size, *shapes[column][0]).

    max_in_flight_samples_per_worker: samples each worker requests ahead
        (default 2 * batch_size, Reverb's rule of thumb). These, and the `prefetch`
        batches, are taken from the table (and counted by its rate limiter) before
        the learner uses them.
    num_workers: sampler threads; keep 1 unless one cannot keep up.
    rate_limiter_timeout_ms: -1 waits for the rate limiter forever; >= 0 ends the
        iteration the first time a sample waits that long (a partial batch is
        dropped), so a caller can check for a stop request and start again.
    """
    if batch_size < 1:
        raise ValueError(f"{batch_size=} must be >= 1")
    if max_in_flight_samples_per_worker is None:
        max_in_flight_samples_per_worker = 2 * batch_size
    dataset = reverb.TrajectoryDataset(
        server_address=address,
        table=table,
        dtypes={name: tf.as_dtype(dtype) for name, (_, dtype) in shapes.items()},
        shapes={name: tf.TensorShape(shape) for name, (shape, _) in shapes.items()},
        max_in_flight_samples_per_worker=max_in_flight_samples_per_worker,
        num_workers_per_iterator=num_workers,
        rate_limiter_timeout_ms=rate_limiter_timeout_ms,
    )
    dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(prefetch)
    for sample in dataset.as_numpy_iterator():
        yield sample.data
