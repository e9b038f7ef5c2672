"""Learner weights out to actors and the evaluator, through the one-item params table.

The learner inserts its weights as plain numpy arrays; actors sample the table in a
background thread and take a payload only when its learner step is newer than the
one they hold (DESIGN.md, "Processes during fine-tuning"). No pickle: a payload is
the flat list

    [header, step, *arrays]

where `header` is a uint8 array of UTF-8 JSON {"names", "shapes", "dtypes"} (names
sorted, one entry per array, in order) and `step` an int64 scalar. The header makes
a payload self-describing, so a reader checks it against the arrays it received and
against the arrays it expects before anything reaches a model.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import DTypeLike

from replay._reverb import reverb
from replay.tables import PARAMS_TABLE

ALLOWED_DTYPES = tuple(
    np.dtype(d) for d in ("float32", "float16", "int64", "int32", "bool", "uint8")
)
"""Array dtypes a payload may carry; cast bfloat16 (which numpy lacks) before publishing."""

Expected = Mapping[str, tuple[Sequence[int], DTypeLike]]
"""name -> (shape, dtype) of the arrays a reader expects."""


class ParamsError(ValueError):
    """Arrays or a params payload that fail validation."""


def encode_params(arrays: Mapping[str, np.ndarray], step: int) -> list[np.ndarray]:
    """The flat [header, step, *arrays] list of a payload, arrays in sorted name order."""
    if int(step) != step or step < 0:
        raise ParamsError(f"step={step!r} must be a non-negative integer")
    names = sorted(arrays)
    values = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise ParamsError(f"params name {name!r} must be a non-empty string")
        value = arrays[name]
        if not isinstance(value, np.ndarray):
            raise ParamsError(
                f"params entry {name!r} is a {type(value).__name__}; publish numpy arrays"
            )
        if value.dtype not in ALLOWED_DTYPES:
            raise ParamsError(
                f"params entry {name!r} has dtype {value.dtype}; allowed: "
                f"{', '.join(str(d) for d in ALLOWED_DTYPES)}"
            )
        values.append(value)
    header = {
        "names": names,
        "shapes": [list(v.shape) for v in values],
        "dtypes": [v.dtype.name for v in values],
    }
    header_bytes = np.frombuffer(json.dumps(header).encode("utf-8"), np.uint8)
    return [header_bytes, np.asarray(step, np.int64), *values]


def publish_params(
    client: reverb.Client, arrays: Mapping[str, np.ndarray], step: int, table: str = PARAMS_TABLE
) -> None:
    """Insert `arrays` at learner `step` into the params table, replacing what it held."""
    client.insert(encode_params(arrays, step), priorities={table: 1.0})


def _normalize_expected(expected: Expected) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    return {name: (tuple(int(d) for d in shape), np.dtype(dtype))
            for name, (shape, dtype) in expected.items()}


def decode_params(
    flat: Sequence[np.ndarray], expected: Expected | None
) -> tuple[int, dict[str, np.ndarray]]:
    """(step, arrays) of a payload, after checking its header, arrays and `expected`.

    expected: name -> (shape, dtype) that the payload must match exactly (same names,
        shapes and dtypes); None checks the payload against its own header only.
    Raises ParamsError naming the first bad entry.
    """
    if len(flat) < 2:
        raise ParamsError(f"params payload has {len(flat)} arrays; needs a header and a step")
    header_array, step_array, values = flat[0], flat[1], flat[2:]
    header = _parse_header(header_array)
    names, shapes, dtypes = header["names"], header["shapes"], header["dtypes"]
    if len(values) != len(names):
        raise ParamsError(f"params header names {len(names)} arrays; payload has {len(values)}")
    if step_array.shape != () or step_array.dtype != np.int64:
        raise ParamsError(
            f"params step has shape {step_array.shape} and dtype {step_array.dtype}; "
            "expected an int64 scalar"
        )
    arrays = {}
    for name, shape, dtype, value in zip(names, shapes, dtypes, values):
        if value.shape != tuple(shape) or value.dtype != np.dtype(dtype):
            raise ParamsError(
                f"params entry {name!r}: array is {value.dtype}{list(value.shape)} but the "
                f"header says {np.dtype(dtype)}{list(shape)}"
            )
        arrays[name] = value
    if expected is not None:
        _check_expected(arrays, _normalize_expected(expected))
    return int(step_array), arrays


def _parse_header(header_array: np.ndarray) -> dict:
    if header_array.dtype != np.uint8 or header_array.ndim != 1:
        raise ParamsError(
            f"params header is {header_array.dtype}{list(header_array.shape)}; expected 1-D uint8"
        )
    try:
        header = json.loads(header_array.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ParamsError(f"params header is not UTF-8 JSON: {error}") from None
    fields = ("names", "shapes", "dtypes")
    if not isinstance(header, dict) or not all(isinstance(header.get(f), list) for f in fields):
        raise ParamsError(f"params header must be an object with lists {fields}")
    names, shapes, dtypes = (header[f] for f in fields)
    if not len(names) == len(shapes) == len(dtypes):
        raise ParamsError(
            f"params header lists differ in length: {len(names)} names, {len(shapes)} shapes, "
            f"{len(dtypes)} dtypes"
        )
    if not all(isinstance(n, str) for n in names) or names != sorted(set(names)):
        raise ParamsError("params header names must be unique strings in sorted order")
    for name, shape, dtype in zip(names, shapes, dtypes):
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ParamsError(f"params entry {name!r}: bad shape {shape!r} in header")
        try:
            ok = np.dtype(dtype) in ALLOWED_DTYPES
        except TypeError:
            ok = False
        if not ok:
            raise ParamsError(f"params entry {name!r}: dtype {dtype!r} in header is not allowed")
    return header


def _check_expected(
    arrays: Mapping[str, np.ndarray], expected: Mapping[str, tuple[tuple[int, ...], np.dtype]]
) -> None:
    """Raise ParamsError at the first (sorted) name that is extra, missing or different."""
    for name in sorted(set(arrays) | set(expected)):
        if name not in expected:
            raise ParamsError(f"params entry {name!r} is not expected")
        if name not in arrays:
            raise ParamsError(f"params entry {name!r} is missing")
        shape, dtype = expected[name]
        value = arrays[name]
        if value.shape != shape or value.dtype != dtype:
            raise ParamsError(
                f"params entry {name!r} is {value.dtype}{list(value.shape)}; expected "
                f"{dtype}{list(shape)}"
            )


class ParamsPuller:
    """Background thread sampling the params table every `interval_s`; keeps the newest
    valid payload.

    Each check asks the server for the table's insert count (cheap) and samples the
    item only when something was inserted since the last sample, so a large payload
    travels once per publish, not once per interval. Payloads that fail validation
    are counted in `rejected` (once each), described in `last_error`, and ignored:
    the puller keeps its current payload.

        puller = ParamsPuller(address, {"w": ((4, 4), np.float32)})
        puller.start()
        ...
        newest = puller.poll()  # (step, arrays) when newer than the last poll's, else None
        ...
        puller.stop()
    """

    def __init__(
        self,
        address: str,
        expected: Expected,
        interval_s: float = 1.0,
        table: str = PARAMS_TABLE,
    ):
        if not interval_s > 0:
            raise ValueError(f"{interval_s=} must be > 0")
        self.address = address
        self.expected = _normalize_expected(expected)
        self.interval_s = interval_s
        self.table = table
        self.received = 0
        """Distinct payloads fetched from the table, accepted or not."""
        self.rejected = 0
        """Payloads rejected by validation (wrong names, shapes or dtypes)."""
        self.last_error: str | None = None
        """Why the latest rejected payload, or the latest failed check, failed."""
        self._lock = threading.Lock()
        self._newest: tuple[int, dict[str, np.ndarray]] | None = None
        self._last_returned_step: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the background thread (once)."""
        if self._thread is not None:
            raise RuntimeError("ParamsPuller.start called twice")
        self._thread = threading.Thread(target=self._run, name="params-puller", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> bool:
        """Ask the thread to finish and wait up to timeout_s for it (it is a daemon).

        True when the thread has ended (or never started)."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def poll(self) -> tuple[int, dict[str, np.ndarray]] | None:
        """The newest payload if its step is greater than the last one returned, else None."""
        with self._lock:
            newest = self._newest
            if newest is None:
                return None
            if self._last_returned_step is not None and newest[0] <= self._last_returned_step:
                return None
            self._last_returned_step = newest[0]
            return newest

    def _run(self) -> None:
        # The client belongs to this thread's process; never shared with the caller.
        client = reverb.Client(self.address)
        seen_inserts = 0
        seen_key = None
        while not self._stop.is_set():
            try:
                seen_inserts, seen_key = self._check(client, seen_inserts, seen_key)
            # Server gone or table missing: note it and try again next interval.
            except (reverb.errors.ReverbError, RuntimeError, KeyError, ValueError) as error:
                self.last_error = f"params check failed: {type(error).__name__}: {error}"
            self._stop.wait(self.interval_s)

    def _check(self, client: reverb.Client, seen_inserts: int, seen_key: int | None):
        """One look at the table; returns the updated (insert count, item key) seen."""
        # A 1 s deadline (Reverb's shortest), so stop() is noticed promptly even when the
        # server is gone.
        info = client.server_info(timeout=1)[self.table]
        inserts = info.rate_limiter_info.insert_stats.completed
        if info.current_size == 0 or inserts == seen_inserts:
            return seen_inserts, seen_key
        # The table is non-empty and items are only ever replaced, so this does not block.
        # One sample of an inserted item: a list holding one timestep, the flat payload.
        [[timestep]] = list(client.sample(self.table, num_samples=1, emit_timesteps=True))
        if timestep.info.key == seen_key:
            return inserts, seen_key
        try:
            step, arrays = decode_params(timestep.data, self.expected)
        except ParamsError as error:
            self.last_error = str(error)
            self.rejected += 1
        else:
            with self._lock:
                if self._newest is None or step > self._newest[0]:
                    self._newest = (step, arrays)
        # Counted last, so a reader that sees the count also sees the payload's effect.
        self.received += 1
        return inserts, timestep.info.key
