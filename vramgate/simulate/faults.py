"""Seeded fault injection for the simulator: the reliability campaign.

A fault spec is ``all``, ``none`` or comma-separated ``kind=rate`` pairs (``crash=0.02,cancel=0.05,lost=0.5``):

* per request (probabilities): ``crash`` (the run crashes at a random point), ``oom`` (the run allocates an
  unforeseen extra 5-50 % of its peak at a random point), ``cancel`` (the client cancels while queued or running);
* per sample refresh (probabilities): ``stale`` (the monitor's sample is not refreshed), ``monitor`` (the sample
  fails);
* per hour (rates): ``outside`` (an outside consumer grabs 5-30 % of a device for 30-600 s; per device),
  ``lost`` (a device falls off the bus for ``lost_s`` seconds; per device), ``core`` (the admission core crashes
  and is rebuilt).

Every draw comes from a generator seeded by the simulation's seed, so the same seed gives the same faults.
"""

from __future__ import annotations

import random
from typing import Annotated

import msgspec

from vramgate.errors import DecodeError
from vramgate.simulate._model import JobFaults
from vramgate.simulate.trace import Trace

Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Rate = Annotated[float, msgspec.Meta(ge=0.0, le=3600.0)]


class FaultSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Fault rates (see the module documentation). The default injects nothing."""

    crash: Probability = 0.0
    oom: Probability = 0.0
    cancel: Probability = 0.0
    stale: Probability = 0.0
    monitor: Probability = 0.0
    outside: Rate = 0.0
    lost: Rate = 0.0
    core: Rate = 0.0
    lost_s: Annotated[float, msgspec.Meta(gt=0.0, le=86400.0)] = 120.0
    cancel_mean_s: Annotated[float, msgspec.Meta(gt=0.0)] = 300.0

    @property
    def stale_sample(self) -> float:
        return self.stale

    @property
    def failed_sample(self) -> float:
        return self.monitor

    @property
    def any(self) -> bool:
        return any(getattr(self, name) > 0 for name in _RATES)


_RATES = ("crash", "oom", "cancel", "stale", "monitor", "outside", "lost", "core")

#: What ``all`` means: every kind of fault, often enough to matter in a few thousand requests.
ALL_FAULTS = FaultSpec(crash=0.02, oom=0.02, cancel=0.05, stale=0.05, monitor=0.02, outside=2.0, lost=0.2, core=1.0)


def parse_faults(text: str | None) -> FaultSpec:
    """Parse ``all``, ``none`` or ``kind=value,...`` (``all,lost=0`` starts from ``all``)."""
    if text is None:
        return FaultSpec()
    values: dict[str, object] = {}
    for raw in text.split(","):
        part = raw.strip()
        if not part or part == "none":
            continue
        if part == "all":
            values.update(msgspec.structs.asdict(ALL_FAULTS))
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep:
            raise DecodeError(f"expected kind=value, 'all' or 'none', got {part!r}", path=f"$.faults.{name}")
        try:
            values[name] = float(value)
        except ValueError:
            raise DecodeError(f"not a number: {value.strip()!r}", path=f"$.faults.{name}") from None
    try:
        return msgspec.convert(values, FaultSpec)
    except msgspec.ValidationError as exc:
        from vramgate.messages.codec import decode_error

        err = decode_error(exc)
        raise DecodeError(err.reason, path=err.path.replace("$", "$.faults", 1)) from None


class FaultPlan:
    """The faults of one simulation, drawn from the seed: per request, and device/core events over time."""

    def __init__(self, spec: FaultSpec, *, seed: int, devices: int, trace: Trace) -> None:
        self.spec = spec
        self.seed = seed
        self.devices = devices
        self._rng = random.Random(f"jobs:{seed}")
        arrivals = trace.arrivals
        self.start = arrivals[0].at if arrivals else 0.0
        self.end = arrivals[-1].at if arrivals else 0.0

    def job(self, index: int) -> JobFaults:
        """The faults of the next request (call in trace order)."""
        spec = self.spec
        faults = JobFaults()
        if not (spec.crash or spec.oom or spec.cancel):
            return faults
        rng = self._rng
        draw = rng.random()
        if draw < spec.crash:
            faults.crash_at = rng.uniform(0.05, 0.95)
        draw = rng.random()
        if draw < spec.oom:
            faults.spike_at = rng.uniform(0.1, 0.9)
            faults.spike_fraction = rng.uniform(0.05, 0.5)
        draw = rng.random()
        if draw < spec.cancel:
            faults.cancel_after_s = rng.expovariate(1.0 / spec.cancel_mean_s)
        return faults

    def device_events(self) -> list[tuple[float, str, object]]:
        """(time, kind, payload) of device losses, outside grabs and core crashes between the first and last
        arrival; kinds are ``lost`` (payload ``(device, seconds)``), ``outside`` and ``core``."""
        spec = self.spec
        rng = random.Random(f"devices:{self.seed}")
        events: list[tuple[float, str, object]] = []
        span = self.end - self.start
        if span <= 0:
            return events
        count = 0
        for device in range(self.devices):
            for at in _poisson(rng, spec.outside / 3600.0, self.start, self.end):
                share = rng.uniform(0.05, 0.3)
                until = at + rng.uniform(30.0, 600.0)
                count += 1
                events.append((at, "outside", (f"fault-{count}", device, share, until)))
            for at in _poisson(rng, spec.lost / 3600.0, self.start, self.end):
                events.append((at, "lost", (device, spec.lost_s)))
        for at in _poisson(rng, spec.core / 3600.0, self.start, self.end):
            events.append((at, "core", None))
        events.sort(key=lambda e: e[0])
        return events


def _poisson(rng: random.Random, rate_per_s: float, start: float, end: float) -> list[float]:
    times: list[float] = []
    if rate_per_s <= 0:
        return times
    at = start + rng.expovariate(rate_per_s)
    while at < end:
        times.append(at)
        at += rng.expovariate(rate_per_s)
    return times
