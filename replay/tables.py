"""The Reverb tables of a fine-tuning run, the server that holds them, and its counters.

Two tables live on one server (DESIGN.md, "Processes during fine-tuning"):

- `experience`: K-step windows, one item per environment step, sampled uniformly
  (ODT's length-proportional trajectory sampling), evicted oldest first. A rate
  limiter holds `samples_per_insert` learner samples per environment step.
- `params`: one item, the learner's newest weights (see `replay.params`).

The rate limiter tracks `error = inserts * spi - samples` and blocks whichever side
would push it out of `[min_diff, max_diff]`. Offline windows preloaded before online
collection are inserts too, so the window is centred on `P * spi` (P preloaded
items): from the first online step the learner may run at most `T = tolerance_steps
* spi` samples ahead of the actors, and the actors at most `tolerance_steps` steps
ahead of the learner. Preloaded windows do not entitle the learner to extra samples.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from replay._reverb import reverb, tf
from replay.formats import ITEM_FORMATS, item_format
from replay.windows import StoredSteps

EXPERIENCE_TABLE = "experience"
PARAMS_TABLE = "params"

ClientOrAddress = reverb.Client | str
"""A live client, or the "host:port" address to make one from in the calling process."""


class ReplayUnavailable(ConnectionError):
    """The replay server did not answer in time."""


@dataclass(frozen=True)
class ReplaySpec:
    """What the tables, writers and samplers of one run agree on.

    Plain values only, so it can be handed to a spawned process.
    """

    observation_shape: tuple[int, ...]
    action_shape: tuple[int, ...]
    context_len: int
    """K: steps per window."""
    capacity_items: int
    """Most windows held; inserting beyond it evicts the oldest (FIFO)."""
    samples_per_insert: float
    """Learner windows sampled per environment step (= updates_per_env_step * batch_size)."""
    tolerance_steps: float
    """Slack of the ratio, in environment steps (>= 1)."""
    preload_items: int = 0
    """Windows inserted before online collection; they do not count toward the ratio."""
    min_size_to_sample: int = 1
    """The learner waits until the table holds this many windows."""
    item_format: str = "episode_window"
    """What one item is (`replay.formats`): its writer, stored columns and sampler."""
    observation_dtype: str = "float32"
    """'float32' (vectors) or 'uint8' (image frames, stored as they are)."""
    action_dtype: str = "float32"
    """'float32' (Box actions in [-1, 1]) or 'int32' (discrete action indices)."""

    @property
    def tolerance_samples(self) -> float:
        """T: how many samples the learner may take ahead of the actors."""
        return self.tolerance_steps * self.samples_per_insert

    @property
    def rate_limiter_range(self) -> tuple[float, float]:
        """(min_diff, max_diff) of `inserts * spi - samples`, centred on the preload."""
        centre = self.preload_items * self.samples_per_insert
        return centre - self.tolerance_samples, centre + self.tolerance_samples

    def validate(self) -> None:
        """Raise ValueError naming every field that cannot make a working table."""
        problems = []
        if not self.samples_per_insert > 0:
            problems.append(f"{self.samples_per_insert=} must be > 0")
        if not self.tolerance_steps >= 1:
            problems.append(f"{self.tolerance_steps=} must be >= 1")
        if self.context_len < 1:
            problems.append(f"{self.context_len=} must be >= 1")
        if self.preload_items < 0:
            problems.append(f"{self.preload_items=} must be >= 0")
        if self.capacity_items < max(self.preload_items, 1):
            problems.append(
                f"{self.capacity_items=} must be >= max(preload_items, 1) "
                f"(preload_items={self.preload_items})"
            )
        if self.min_size_to_sample < 1:
            problems.append(f"{self.min_size_to_sample=} must be >= 1")
        elif self.min_size_to_sample > self.capacity_items:
            problems.append(
                f"{self.min_size_to_sample=} must be <= capacity_items={self.capacity_items}, "
                "or the learner never starts"
            )
        for field, allowed in (("observation_dtype", ("float32", "uint8")),
                               ("action_dtype", ("float32", "int32"))):
            if getattr(self, field) not in allowed:
                problems.append(f"{field}={getattr(self, field)!r} must be one of {allowed}")
        if self.item_format not in ITEM_FORMATS:
            problems.append(f"item_format={self.item_format!r} must be one of "
                            f"{', '.join(sorted(ITEM_FORMATS))}")
        for field in ("observation_shape", "action_shape"):
            shape = getattr(self, field)
            if not all(isinstance(d, int) and d >= 0 for d in shape):
                problems.append(f"{field}={shape!r} must be a tuple of non-negative ints")
        if not problems:
            # Reverb's own rule: a narrower window can block inserts or samples for good.
            min_diff, max_diff = self.rate_limiter_range
            needed = 2 * max(1.0, self.samples_per_insert)
            if max_diff - min_diff < needed:
                problems.append(
                    f"tolerance_steps={self.tolerance_steps} with "
                    f"samples_per_insert={self.samples_per_insert} gives a rate limiter "
                    f"window of {max_diff - min_diff:g} samples; Reverb needs >= {needed:g}"
                )
        if problems:
            raise ValueError("invalid ReplaySpec: " + "; ".join(problems))


def stored_steps(spec: ReplaySpec) -> StoredSteps:
    """How the experience table stores a step of `spec`'s windows."""
    return StoredSteps.for_spec(spec)


def experience_signature(spec: ReplaySpec) -> dict[str, tf.TensorSpec]:
    """Stored column -> TensorSpec of one item of `spec.item_format`, as writers and
    samplers see it."""
    shapes = item_format(spec.item_format).stored_shapes(spec)
    return {
        name: tf.TensorSpec(shape, tf.as_dtype(dtype), name=name)
        for name, (shape, dtype) in shapes.items()
    }


def make_tables(spec: ReplaySpec) -> list[reverb.Table]:
    """The experience table and the one-item params table, built from `spec`."""
    spec.validate()
    min_diff, max_diff = spec.rate_limiter_range
    experience = reverb.Table(
        name=EXPERIENCE_TABLE,
        sampler=reverb.selectors.Uniform(),
        remover=reverb.selectors.Fifo(),
        max_size=spec.capacity_items,
        rate_limiter=reverb.rate_limiters.RateLimiter(
            samples_per_insert=spec.samples_per_insert,
            min_size_to_sample=spec.min_size_to_sample,
            min_diff=min_diff,
            max_diff=max_diff,
        ),
        signature=experience_signature(spec),
    )
    params = reverb.Table(
        name=PARAMS_TABLE,
        sampler=reverb.selectors.Fifo(),
        remover=reverb.selectors.Fifo(),
        max_size=1,
        max_times_sampled=0,  # sampled by every actor, forever, until replaced
        rate_limiter=reverb.rate_limiters.MinSize(1),
    )
    return [experience, params]


def start_server(spec: ReplaySpec, port: int | None = None,
                 checkpoint_dir: str | None = None) -> reverb.Server:
    """A Reverb server holding `make_tables(spec)`; port None picks a free one.

    The server listens on every interface without authentication: run it on a
    private network only. A fixed `port` that is taken raises ValueError naming it.
    gRPC binds with SO_REUSEPORT, so a second server on a port another gRPC server
    holds would start and silently share its connections; hence the check that
    nothing answers there first.

    `checkpoint_dir`: where `checkpoint_replay` writes the tables, and where the
    server restores the latest complete checkpoint from when it starts. A restored
    table keeps the configuration and rate-limiter counters it was saved with, not
    the ones `spec` describes (see `check_restored`).
    """
    tables = make_tables(spec)
    if port is not None and _answers(port):
        raise ValueError(f"the replay server cannot listen on port {port}: another process "
                         "already listens there")
    checkpointer = None
    if checkpoint_dir is not None:
        checkpointer = reverb.checkpointers.DefaultCheckpointer(path=str(checkpoint_dir))
    try:
        return reverb.Server(tables, port=port, checkpointer=checkpointer)
    except ValueError as error:
        if port is None:
            raise
        raise ValueError(
            f"the replay server could not listen on port {port} (in use by another "
            f"process?): {error}"
        ) from error


def has_checkpoint(checkpoint_dir: str | None) -> bool:
    """Whether `checkpoint_dir` holds a complete Reverb checkpoint (one with DONE)."""
    if checkpoint_dir is None:
        return False
    return any((d / "DONE").is_file() for d in Path(checkpoint_dir).glob("*") if d.is_dir())


def checkpoint_replay(client_or_address: ClientOrAddress) -> str:
    """Write the server's tables to its checkpoint folder; the path written.

    Inserts and samples wait while it writes. A checkpoint is complete once Reverb
    has written its DONE file, so a crash mid-write leaves the previous one in use.
    """
    return as_client(client_or_address).checkpoint()


def check_restored(client_or_address: ClientOrAddress, spec: ReplaySpec) -> dict[str, int]:
    """Counts of a table restored from a checkpoint, after checking it fits `spec`.

    Reverb rebuilds a restored table from the checkpoint: its capacity, rate limiter
    window and the limiter's insert and sample counters, whatever the tables passed
    to the server say. Those counters are what keeps the ratio of learner samples to
    environment steps, so they must be kept, and the table must be the one this run
    expects: anything else would hold back the actors or the learner for good (the
    hangs reported after restores) or count environment steps wrongly. Raises
    ValueError naming the differences.
    """
    check_server_spec(client_or_address, spec)
    counts = table_counts(client_or_address)
    if counts["inserts"] < spec.preload_items:
        raise ValueError(
            f"the restored replay table has {counts['inserts']} inserts, fewer than the "
            f"{spec.preload_items} preloaded windows its rate limiter is centred on"
        )
    return counts


def _answers(port: int) -> bool:
    """Whether something accepts TCP connections on this host's `port`."""
    try:
        with socket.create_connection(("localhost", port), timeout=1.0):
            return True
    except OSError:
        return False


def as_client(client_or_address: ClientOrAddress) -> reverb.Client:
    """The client itself, or a new client for an address ("host:port")."""
    if isinstance(client_or_address, str):
        return reverb.Client(client_or_address)
    return client_or_address


def wait_for_server(
    address: str, timeout_s: float = 30.0, log: Callable[[str], None] | None = None
) -> None:
    """Return once the server at `address` answers; raise ReplayUnavailable after timeout_s.

    Each attempt uses a fresh client: a gRPC channel that failed to connect backs off
    before reconnecting, which would delay noticing a server that just came up. An
    attempt waits for the channel up to its own deadline (whole seconds, as Reverb
    takes them), doubling from 1 s to 5 s; the total may overrun timeout_s by < 1 s.
    """
    deadline = time.monotonic() + timeout_s
    attempt_s = 1
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        try:
            reverb.Client(address).server_info(timeout=max(1, min(attempt_s, math.ceil(remaining))))
            return
        except (reverb.errors.ReverbError, RuntimeError) as error:
            last_error = error
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if log is not None:
            log(f"replay server at {address} not answering (attempt {attempt}: {last_error}); "
                f"retrying for {remaining:.0f} s more")
        # A refused connection can fail faster than the deadline; do not spin.
        time.sleep(min(0.1 * attempt, 1.0, remaining))
        attempt_s = min(2 * attempt_s, 5)
    raise ReplayUnavailable(
        f"replay server at {address} did not answer within {timeout_s:g} s"
    ) from last_error


def table_counts(
    client_or_address: ClientOrAddress, table: str = EXPERIENCE_TABLE, *, timeout_s: int = 10
) -> dict[str, int]:
    """{'size', 'inserts', 'samples'} of `table`: current items and completed calls.

    The counts come from the table's rate limiter, so they include preloaded items
    and every item ever inserted (evicted ones too). Raises ReplayUnavailable when
    the server does not answer within timeout_s.
    """
    table_info = _table_info(client_or_address, table, timeout_s)
    limiter = table_info.rate_limiter_info
    return {
        "size": int(table_info.current_size),
        "inserts": int(limiter.insert_stats.completed),
        "samples": int(limiter.sample_stats.completed),
    }


def _table_info(client_or_address: ClientOrAddress, table: str, timeout_s: float):
    """The server's TableInfo for `table`; ReplayUnavailable when it does not answer."""
    client = as_client(client_or_address)
    try:
        info = client.server_info(timeout=max(1, math.ceil(timeout_s)))
    except reverb.errors.DeadlineExceededError as error:
        raise ReplayUnavailable(f"replay server did not answer within {timeout_s:g} s") from error
    if table not in info:
        raise ValueError(
            f"the replay server has no {table!r} table (tables: {sorted(info)}); "
            "is this an onramp replay server?"
        )
    return info[table]


def _experience_info(client_or_address: ClientOrAddress, timeout_s: int):
    return _table_info(client_or_address, EXPERIENCE_TABLE, timeout_s)


def preload_items_from_server(client_or_address: ClientOrAddress, *, timeout_s: int = 10) -> int:
    """P, the number of windows the replay server preloaded, read from its rate limiter.

    A role on another host needs P (environment steps are `inserts - P`) but cannot
    see the replay host's dataset. The experience table's limiter window is centred
    on `P * spi` (`ReplaySpec.rate_limiter_range`), so the server itself holds the
    answer: P = round(((min_diff + max_diff) / 2) / spi).
    """
    limiter = _experience_info(client_or_address, timeout_s).rate_limiter_info
    centre = (limiter.min_diff + limiter.max_diff) / 2
    return round(centre / limiter.samples_per_insert)


def check_server_spec(
    client_or_address: ClientOrAddress, spec: ReplaySpec, *, timeout_s: int = 10
) -> None:
    """Raise ValueError unless the server's experience table is the one `spec` makes.

    Every host builds its ReplaySpec from its own flags; one started with another
    preset or override would write windows the table refuses, or count environment
    steps wrongly. This compares what the table was built with: the window signature
    (context length, observation and action shapes), capacity, and rate limiter.
    """
    table = _experience_info(client_or_address, timeout_s)
    limiter = table.rate_limiter_info
    min_diff, max_diff = spec.rate_limiter_range
    ours = {
        "window columns": _describe_signature(experience_signature(spec)),
        "capacity_items": spec.capacity_items,
        "samples_per_insert": spec.samples_per_insert,
        "rate limiter window": (min_diff, max_diff),
    }
    theirs = {
        "window columns": _describe_signature(table.signature),
        "capacity_items": table.max_size,
        "samples_per_insert": limiter.samples_per_insert,
        "rate limiter window": (limiter.min_diff, limiter.max_diff),
    }
    differ = [
        f"{name}: server {theirs[name]!r}, here {ours[name]!r}"
        for name in ours
        if not _same(ours[name], theirs[name])
    ]
    if differ:
        raise ValueError(
            "the replay server was started with another configuration (give every role "
            "the same --preset and overrides): " + "; ".join(differ)
        )


def _describe_signature(signature) -> str:
    """'name dtype[shape], ...' in name order: short enough for an error message."""
    if not isinstance(signature, dict):
        return repr(signature)
    return ", ".join(f"{name} {s.dtype.name}{list(s.shape)}"
                     for name, s in sorted(signature.items()))


def _same(a, b) -> bool:
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)
    return a == b
