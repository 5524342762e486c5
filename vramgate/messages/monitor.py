"""Messages of the monitor actor: subscribing to samples, and asking for the latest sample, history and trends."""

from __future__ import annotations

from typing import Annotated

import msgspec

from vramgate.messages._base import MB, Message, Seconds
from vramgate.messages.resources import ResourceSample

#: An actor name as the runtime registers it.
ActorName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
#: A look-back window in seconds (at most a day).
Window = Annotated[float, msgspec.Meta(gt=0.0, le=86400.0)]


class Subscribe(Message, frozen=True):
    """Send every future ``ResourceSample`` to the actor named ``subscriber``."""

    subscriber: ActorName


class Unsubscribe(Message, frozen=True):
    """Stop sending samples to ``subscriber`` (no effect when it was not subscribed)."""

    subscriber: ActorName


class GetLatestSample(Message, frozen=True):
    """Ask for the most recent sample; the reply is a :class:`LatestSample`."""


class LatestSample(Message, frozen=True):
    """The most recent sample, or ``None`` before the first one."""

    sample: ResourceSample | None = None


class HistoryPoint(Message, frozen=True):
    """One device's memory at one sample."""

    at: Seconds
    free_mb: MB
    used_mb: MB


class GetHistory(Message, frozen=True):
    """Ask for device ``device``'s history over the last ``window_s`` seconds; the reply is a :class:`History`."""

    device: int
    window_s: Window = 60.0


class History(Message, frozen=True):
    """A device's recorded memory, oldest first."""

    device: int
    window_s: Seconds
    points: tuple[HistoryPoint, ...] = ()


class GetTrend(Message, frozen=True):
    """Ask for device ``device``'s free-memory trend over ``window_s``; the reply is a :class:`FreeMemoryTrend`."""

    device: int
    window_s: Window = 60.0


class FreeMemoryTrend(Message, frozen=True):
    """Free memory of one device over a window: minimum, mean and latest (``None`` with no samples)."""

    device: int
    window_s: Seconds
    samples: int = 0
    min_free_mb: MB | None = None
    mean_free_mb: float | None = None
    last_free_mb: MB | None = None


class GetMonitorStatistics(Message, frozen=True):
    """Ask for the monitor's counters; the reply is a :class:`MonitorStatistics`."""


class MonitorStatistics(Message, frozen=True):
    """The monitor's counters."""

    samples: int
    interval_s: Seconds
    subscribers: tuple[str, ...] = ()
    probe_timeouts: int = 0
    hung_probes: tuple[str, ...] = ()
    last_sample_cost_s: Seconds = 0.0
    #: samples not delivered because a subscriber's mailbox was full or it had stopped
    dropped: int = 0


class SampleTick(Message, frozen=True):
    """The monitor's own timer message: time to take a sample."""


class SampleNow(Message, frozen=True):
    """Take and publish a sample at once (after a cleanup, say); an ask gets the :class:`LatestSample`."""
