"""Trace records for the simulator: JSON Lines, one typed record a line.

``{"type": "arrival", "at": 12.5, "request": {...}, "true_peak_mb": 41000, "true_seconds": 310.0}`` is a request
arriving; ``{"type": "outside", "at": 60, "device": 1, "mb": 8000, "until": 900}`` is memory taken on a device by a
process vramgate does not manage. The true figures of an arrival describe the request as given (with its pinned
options); when absent, the simulator draws them from the estimate with seeded noise.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from vramgate.messages._base import MB, Seconds
from vramgate.messages.requests import GenerationRequest


class TraceRecord(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=True):
    """Base of the trace records (tagged by ``type``)."""

    at: Seconds


class Arrival(TraceRecord, frozen=True, tag="arrival"):
    """A request arrives at ``at``. ``true_peak_mb``/``true_seconds``: what it really needs, as given."""

    request: GenerationRequest
    true_peak_mb: Annotated[int, msgspec.Meta(gt=0, le=1 << 40)] | None = None
    true_seconds: Annotated[float, msgspec.Meta(gt=0.0)] | None = None


class Outside(TraceRecord, frozen=True, tag="outside"):
    """A process outside vramgate holds ``mb`` MiB on device ``device`` from ``at`` until ``until``."""

    device: Annotated[int, msgspec.Meta(ge=0, le=1023)]
    mb: MB
    until: Seconds

    def __post_init__(self) -> None:
        if self.until < self.at:
            raise ValueError("`until` is before `at`")


#: One line of a trace.
TraceLine = Arrival | Outside
