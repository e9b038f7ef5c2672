"""Finished episodes into the experience table, as overlapping K-step windows.

Actors and the offline preload both write through `EpisodeWriter`, so online and
offline windows are built the same way (DESIGN.md, "Experience format"). Each
episode is packed into the table's stored columns (`replay.windows.StoredSteps`)
and appended step by step to a Reverb `StructuredWriter` after K-1 all-zero padding
steps (mask 0); the writer's one pattern, "the last K steps of every column, from
step index K-1 of the episode on", makes one item per real step in C++. The items
share the appended chunks, so a step is stored once however many windows contain it,
and a sampled window equals `replay.windows.gather_windows(steps, [t], K)` exactly
once unpacked. `WindowWriter` is that mechanism for any columns; the frame-window
format's writer (`replay.frame_window.FrameWindowWriter`) is its other subclass.

The StructuredWriter rather than a TrajectoryWriter with one `create_item` per step:
building each item's K-step column references in Python cost about as much again
as the append itself (bench/actor.py measures the writes per step).
"""

from __future__ import annotations

from typing import Self

import numpy as np

from replay._reverb import reverb
from replay.tables import (
    EXPERIENCE_TABLE,
    ClientOrAddress,
    ReplaySpec,
    as_client,
    stored_steps,
)
from replay.windows import FlatSteps, window_shapes

structured_writer = reverb.structured_writer

# FlatSteps attribute -> window column. 'mask' is not in FlatSteps: 1 on real steps.
_STEP_COLUMNS = (
    "observations",
    "actions",
    "rewards",
    "returns_to_go",
    "timesteps",
    "next_observations",
    "terminated",
)


class WindowWriter:
    """Appends an episode's steps to a Reverb `StructuredWriter` after K-1 all-zero
    padding steps, making one item per real step: the last K steps of every column,
    and of each column in `last_step_columns` the newest step's value alone. Items
    share the appended chunks, so a step is stored once however many windows hold it.

    The Reverb writer is created on the first write, in the calling process and
    thread. A write blocks while the table's rate limiter holds the actors back: every
    `max_pending_items` items it waits until at most that many are unconfirmed (so
    never more than twice that are pending; Reverb warns above 50), and it returns
    once the whole episode is confirmed. Call `close` when done; writing after `close`
    raises RuntimeError. Subclasses and wrappers turn their episode type into columns
    and call `write_columns`.
    """

    def __init__(
        self,
        client_or_address: ClientOrAddress,
        context_len: int,
        step_shapes: dict[str, tuple[tuple[int, ...], np.dtype]],
        *,
        last_step_columns: tuple[str, ...] = (),
        table: str = EXPERIENCE_TABLE,
        max_pending_items: int = 24,
    ):
        if max_pending_items < 1:
            raise ValueError(f"{max_pending_items=} must be >= 1")
        unknown = [name for name in last_step_columns if name not in step_shapes]
        if unknown:
            raise ValueError(f"last_step_columns {unknown} are not columns of {list(step_shapes)}")
        self._client_or_address = client_or_address
        self._context_len = context_len
        self._table = table
        self._max_pending_items = max_pending_items
        self._order = list(step_shapes)
        """The stored columns, in the order each step appends them."""
        self._last_step = set(last_step_columns)
        # One padding step: every column zero (mask 0).
        self._padding = [np.zeros(shape, dtype) for shape, dtype in step_shapes.values()]
        self._writer: structured_writer.StructuredWriter | None = None
        self._closed = False
        self.items_written = 0
        """Items (windows) created by this writer so far."""

    def write_columns(self, columns: dict[str, np.ndarray], length: int) -> int:
        """Append one episode of `length` steps (`columns`: name -> (length, ...) array
        in the stored dtype, every stored column) and end it; return `length`."""
        if self._closed:
            raise RuntimeError(f"{type(self).__name__}.write called after close()")
        if length == 0:
            return 0
        writer = self._ensure_writer()
        stored = [columns[name] for name in self._order]
        try:
            for _ in range(self._context_len - 1):
                writer.append(self._padding)
            for t in range(length):
                writer.append([column[t] for column in stored])
                if (t + 1) % self._max_pending_items == 0:
                    # The back-pressure point: blocks while the rate limiter holds items.
                    # Each flush waits for the server: every 24 items rather than 8, so
                    # fewer round trips (DESIGN.md, "Performance").
                    writer.flush(block_until_num_items=self._max_pending_items)
            writer.end_episode()
        except BaseException:
            # The Reverb writer now holds part of an episode; start the next one afresh.
            self._discard_writer()
            raise
        self.items_written += length
        return length

    def close(self, timeout_ms: int = 10_000) -> None:
        """Send what is pending (waiting at most timeout_ms) and release the writer.

        Idempotent. Raises reverb.errors.DeadlineExceededError if the pending items
        were not confirmed in time; the writer is released all the same.
        """
        self._closed = True
        if self._writer is None:
            return
        try:
            self._writer.flush(timeout_ms=timeout_ms)
        finally:
            self._discard_writer()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _ensure_writer(self) -> structured_writer.StructuredWriter:
        if self._writer is None:
            client = as_client(self._client_or_address)
            self._writer = client.structured_writer([self._config()])
        return self._writer

    def _config(self):
        """One item per step from the episode's K-th appended step on (the first real
        step, after K-1 padding steps): the last K steps of every column."""
        K = self._context_len
        order, last = self._order, self._last_step
        pattern = structured_writer.pattern_from_transform(
            [None] * len(order),
            lambda ref: {name: ref[i][-1] if name in last else ref[i][-K:]
                         for i, name in enumerate(order)})
        return structured_writer.create_config(
            pattern, self._table, conditions=[structured_writer.Condition.step_index() >= K - 1]
        )

    def _discard_writer(self) -> None:
        # A StructuredWriter has no close(); dropping it ends its stream. Items of a
        # partial episode that were not sent yet are lost with it.
        self._writer = None


class EpisodeWriter(WindowWriter):
    """Writes one finished episode (`replay.windows.FlatSteps`) as K-step windows, one
    item per real step, left-padded, packed into the table's stored columns
    (`replay.windows.StoredSteps`). Blocking, confirmation and `close` as `WindowWriter`.

        writer = EpisodeWriter("replay-host:8000", spec)
        writer.write(flatten_episode(observations, actions, rewards, terminated))
        writer.close()
    """

    def __init__(
        self,
        client_or_address: ClientOrAddress,
        spec: ReplaySpec,
        table: str = EXPERIENCE_TABLE,
        max_pending_items: int = 24,
    ):
        self._spec = spec
        self._shapes = window_shapes(spec.context_len, spec.observation_shape, spec.action_shape,
                                     spec.observation_dtype, spec.action_dtype)
        self._stored = stored_steps(spec)
        step_shapes = {name: (shape[1:], dtype)
                       for name, (shape, dtype) in self._stored.shapes(1).items()}
        super().__init__(client_or_address, spec.context_len, step_shapes, table=table,
                         max_pending_items=max_pending_items)

    def write(self, steps: FlatSteps) -> int:
        """Write one episode (from `flatten_episode`) as len(steps) windows; return that count."""
        if self._closed:
            raise RuntimeError("EpisodeWriter.write called after close()")
        columns = self._step_columns(steps)
        length = len(steps)
        if length == 0:
            return 0
        columns["mask"] = np.ones(length, np.float32)
        return self.write_columns(self._stored.pack(columns), length)

    def _step_columns(self, steps: FlatSteps) -> dict[str, np.ndarray]:
        """FlatSteps columns as the table's dtypes, after checking they are one episode."""
        length = len(steps)
        if length and np.any(steps.episode_start != steps.episode_start[0]):
            raise ValueError("EpisodeWriter.write takes one episode; got steps of several")
        columns = {}
        for name in _STEP_COLUMNS:
            shape, dtype = self._shapes[name]
            value = np.asarray(getattr(steps, name))
            if value.shape != (length, *shape[1:]):
                raise ValueError(
                    f"steps.{name} has shape {value.shape}; expected {(length, *shape[1:])} "
                    f"for {length} steps"
                )
            columns[name] = value.astype(dtype, copy=False)
        return columns
