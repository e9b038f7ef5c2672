"""The episode-window item format: one K-step window of one episode per environment step.

The format the Decision Transformer objectives train on (`replay.windows` builds the
windows; DESIGN.md, "Experience format"). Its writer and online batches use Reverb and
are imported when asked for; its offline sampler is numpy only.
"""

from __future__ import annotations

from replay.formats import ItemFormat
from replay.offline import OfflineSampler
from replay.windows import StoredSteps


class EpisodeWindows(ItemFormat):
    """One item per environment step t: the K steps of its episode ending at t,
    left-padded before the episode start (`replay.windows`). Stored as two columns per
    step (`replay.windows.StoredSteps`); the learner receives WINDOW_COLUMNS."""

    key = "episode_window"

    def stored_shapes(self, spec):
        return StoredSteps.for_spec(spec).shapes(spec.context_len)

    def writer(self, client_or_address, spec):
        from replay.writer import EpisodeWriter

        return EpisodeWriter(client_or_address, spec)

    def batches(self, address, spec, batch_size, **options):
        from replay.stream import window_batches

        return window_batches(address, spec, batch_size, **options)

    def offline_sampler(self, steps, context_len, batch_size, seed=0):
        return OfflineSampler(steps, context_len, batch_size, seed=seed)
