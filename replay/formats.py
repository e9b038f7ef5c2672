"""Item formats: what one replay item is, with the code that writes, stores and samples it.

A format owns four things that must agree: how actors and the preload write steps
(`writer`), how the experience table stores an item (`stored_shapes`, from which
`replay.tables` builds the Reverb signature), how the learner receives batches of items
online (`batches`), and how pretraining samples the same items from an offline dataset
in memory (`offline_sampler`). A run names its format in `replay.item_format`, and
every role builds it with `item_format(key)`; nothing else names a format class.

    ITEM_FORMATS["cross_episode"] = "replay.cross_episode:CrossEpisodeWindows"

adds a format: the module defines a subclass of `ItemFormat`. A format's module loads
when a run asks for it; its `offline_sampler` and `stored_shapes` should need numpy
only, so that pretraining runs where Reverb is not installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator

ITEM_FORMATS: dict[str, str] = {
    "episode_window": "replay.episode_window:EpisodeWindows",
    "history_window": "replay.history_window:HistoryWindows",
    "frame_window": "replay.frame_window:FrameWindows",
}
"""Registry key (`replay.item_format`) -> "module:Class" of the format."""


class ItemFormat:
    """The interface of an item format; `spec` is the run's `replay.tables.ReplaySpec`."""

    key: str

    def stored_shapes(self, spec) -> dict[str, tuple[tuple[int, ...], type]]:
        """Stored column -> (shape, numpy dtype) of one item in the experience table."""
        raise NotImplementedError

    def writer(self, client_or_address, spec):
        """A writer of whole episodes (`write(FlatSteps)`, `close()`, a context manager)
        into the experience table."""
        raise NotImplementedError

    def batches(self, address: str, spec, batch_size: int, **options) -> Iterator[dict]:
        """Batches of items sampled from the experience table, as the learner trains on
        them (column -> array with leading shape (batch_size, ...))."""
        raise NotImplementedError

    def offline_sampler(self, steps, context_len: int, batch_size: int, seed: int = 0):
        """An object whose `sample()` gives a batch of the same items from `steps`
        (`replay.windows.FlatSteps`) in memory."""
        raise NotImplementedError


def item_format(key: str) -> ItemFormat:
    """The format registered as `key`; ValueError names an unknown key."""
    if key not in ITEM_FORMATS:
        raise ValueError(f"replay.item_format={key!r} is not a registered item format; "
                         f"registered: {', '.join(sorted(ITEM_FORMATS))}")
    module, name = ITEM_FORMATS[key].split(":")
    return getattr(importlib.import_module(module), name)()

